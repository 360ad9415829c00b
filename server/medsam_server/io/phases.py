"""Read 3D + time inputs (4D NIfTI/NRRD/MHA: phases of one grid) and write their labels.

SimpleITK reads a 4D file as (phases, k, j, i); every phase shares the file's 3D grid (the
first three axes' spacing, origin and direction). DICOM phases (a folder of series) are read
by ``dicom_phases.read_dicom_phases`` into the same ``Phases``. Labels go out as a ``.seq.nrrd`` volume
sequence (one item per phase, as 3D Slicer loads one) or a 4D ``.nii.gz``/``.nrrd``/``.mha``
on the input's own 4D geometry.
"""

from __future__ import annotations

import os
from dataclasses import dataclass
from pathlib import Path

import numpy as np
import SimpleITK as sitk

from .sequences import SUFFIX as SEQUENCE_SUFFIX
from .sequences import write_volume_sequence
from .volumes import Volume, VolumeError, check_output_path


@dataclass
class Phases:
    """Phases of one 3D grid; ``grid.array`` is the first phase."""

    array: np.ndarray  # (phases, k, j, i)
    grid: Volume
    image4d: sitk.Image  # header only (1 voxel): the 4D geometry written back
    names: tuple[str, ...] = ()  # what each phase is, where the input says (DICOM)

    @property
    def count(self) -> int:
        return int(self.array.shape[0])

    @classmethod
    def on_grid(cls, array: np.ndarray, grid: Volume, names: list[str]) -> Phases:
        """Phases read as 3D volumes on one ``grid``; the 4D header adds a unit phase axis
        at 0, as ``sitk.JoinSeries`` of those volumes would."""
        header = sitk.Image([1, 1, 1, 1], sitk.sitkUInt8)
        header.SetSpacing((*grid.spacing, 1.0))
        header.SetOrigin((*grid.origin, 0.0))
        d = np.eye(4)
        d[:3, :3] = np.asarray(grid.direction, dtype=float).reshape(3, 3)
        header.SetDirection(tuple(d.ravel()))
        return cls(array, grid, header, tuple(names))


def read_phases(path: str | os.PathLike) -> Phases:
    """A 4D scalar file; VolumeError (one line) for anything else (3D, 5D, one phase, NaN)."""
    p = Path(path)
    if not p.is_file():
        raise VolumeError(f"{p}: no such file (3D + time takes a 4D NIfTI, NRRD or MHA file)")
    reader = sitk.ImageFileReader()
    reader.SetFileName(str(p))
    try:
        reader.ReadImageInformation()
    except RuntimeError as exc:
        raise VolumeError(f"{p}: cannot read it as an image: {str(exc).splitlines()[-1]}"
                          ) from None
    dim, size = reader.GetDimension(), reader.GetSize()
    if dim != 4:
        raise VolumeError(f"{p}: a {dim}D image; 3D + time needs a 4D file (phases last)")
    if reader.GetNumberOfComponents() != 1:
        raise VolumeError(f"{p}: has {reader.GetNumberOfComponents()} components per voxel, "
                          "need a scalar image")
    if size[3] < 2:
        raise VolumeError(f"{p}: holds one phase; 3D + time needs at least two")
    try:
        image = reader.Execute()
    except RuntimeError as exc:
        raise VolumeError(f"{p}: cannot read the voxel data: {str(exc).splitlines()[-1]}"
                          ) from None
    array = sitk.GetArrayFromImage(image)  # (phases, k, j, i)
    if np.issubdtype(array.dtype, np.floating) and not np.isfinite(array).all():
        raise VolumeError(f"{p}: has NaN or infinite voxels")
    spacing = image.GetSpacing()[:3]
    direction = np.asarray(image.GetDirection()).reshape(4, 4)
    if np.abs(direction[:3, 3]).max() > 1e-6 or np.abs(direction[3, :3]).max() > 1e-6:
        raise VolumeError(f"{p}: its fourth axis is not separate from space (an oblique 4D "
                          "direction): not phases of one grid")
    grid = Volume(array[0], tuple(float(v) for v in spacing),  # type: ignore[arg-type]
                  tuple(float(v) for v in image.GetOrigin()[:3]),
                  tuple(float(v) for v in direction[:3, :3].ravel()), str(p))
    header = sitk.Image([1, 1, 1, 1], sitk.sitkUInt8)
    header.SetSpacing(image.GetSpacing())
    header.SetOrigin(image.GetOrigin())
    header.SetDirection(image.GetDirection())
    return Phases(array, grid, header)


def check_phases_output(path: str | os.PathLike) -> Path:
    """An output path for 4D labels: ``.seq.nrrd`` or a 4D-capable file type."""
    out = Path(path)
    if out.name.lower().endswith(SEQUENCE_SUFFIX):
        if not out.parent.is_dir():
            raise VolumeError(f"{out}: output folder {out.parent} does not exist")
        return out
    if out.name.lower().endswith(".seg.nrrd"):
        raise VolumeError(f"{out}: 3D + time labels are a .seq.nrrd, .nii.gz, .nrrd or .mha")
    check_output_path(out)
    return out


def write_phase_labels(path: str | os.PathLike, labels: np.ndarray, phases: Phases) -> Path:
    """``labels`` (phases, k, j, i) uint8 on the phases' grid → ``path`` (see the module)."""
    out = Path(path)
    if labels.shape != phases.array.shape:
        raise VolumeError(f"{out}: labels {labels.shape} do not match the phases "
                          f"{phases.array.shape}")
    if out.name.lower().endswith(SEQUENCE_SUFFIX):
        return write_volume_sequence(out, labels, phases.grid)
    # GetImageFromArray would read a 4D array's last axis as vector components
    image = sitk.JoinSeries([sitk.GetImageFromArray(phase) for phase in labels.astype(np.uint8)])
    image.SetSpacing(phases.image4d.GetSpacing())
    image.SetOrigin(phases.image4d.GetOrigin())
    image.SetDirection(phases.image4d.GetDirection())
    tmp = out.parent / f".partial-{os.getpid()}-{out.name}"
    try:
        sitk.WriteImage(image, str(tmp), useCompression=True)
        os.replace(tmp, out)
    except (OSError, RuntimeError) as exc:
        raise VolumeError(f"{out}: cannot write the labels: {exc}") from None
    finally:
        tmp.unlink(missing_ok=True)
    return out
