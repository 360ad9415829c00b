"""Read scalar 3D volumes and write label masks on exactly the same voxel grid.

Geometry follows SimpleITK/ITK conventions throughout: physical space is LPS,
``spacing``/``origin`` are (x, y, z) and ``direction`` is the row-major 3x3
matrix whose columns are the i, j, k axis directions. Arrays are numpy order
(k, j, i), as ``SimpleITK.GetArrayFromImage`` returns them.
"""

from __future__ import annotations

import logging
import os
import re
import secrets
from dataclasses import dataclass
from pathlib import Path

import nrrd
import numpy as np
import SimpleITK as sitk

log = logging.getLogger(__name__)

Segment = tuple[int, str, tuple[float, float, float]]

DEFAULT_SEGMENTS: list[Segment] = [(1, "Segment_1", (0.5, 0.68, 0.5))]

# Longest suffix first so "x.seg.nrrd" is not taken for a plain ".nrrd".
_MASK_SUFFIXES = (".seg.nrrd", ".nii.gz", ".nii", ".nrrd")

# Files ITK reads with its NIfTI reader (NIfTI-1/2, Analyze pairs).
_NIFTI_SUFFIXES = (".nii", ".nii.gz", ".hdr", ".img", ".img.gz")

# DICOM tags appear as "gggg|eeee" metadata keys when ITK reads a DICOM file.
_DICOM_TAG = re.compile(r"^[0-9a-fA-F]{4}\|[0-9a-fA-F]{4}$")


class VolumeError(ValueError):
    """A volume or mask cannot be read or written; the message says why and names the file."""


@dataclass
class Volume:
    """A scalar 3D image: voxels in (k, j, i) order plus its LPS geometry."""

    array: np.ndarray
    spacing: tuple[float, float, float]
    origin: tuple[float, float, float]
    direction: tuple[float, float, float, float, float, float, float, float, float]
    source: str

    @property
    def size(self) -> tuple[int, int, int]:
        """Grid size in (x, y, z) = (i, j, k) order, as SimpleITK reports it."""
        k, j, i = self.array.shape
        return (i, j, k)

    def image_like(self, array: np.ndarray | None = None) -> sitk.Image:
        """Wrap ``array`` (default: this volume's voxels) in a SimpleITK image on this grid.

        Used to write masks and to resample other images onto the volume's grid.
        """
        data = self.array if array is None else array
        if data.shape != self.array.shape:
            raise VolumeError(
                f"{self.source}: array shape {data.shape} does not match the volume's "
                f"{self.array.shape} (k, j, i)"
            )
        image = sitk.GetImageFromArray(data)
        image.SetSpacing(self.spacing)
        image.SetOrigin(self.origin)
        image.SetDirection(self.direction)
        return image


def read_volume(path: str | os.PathLike) -> Volume:
    """Read a scalar 3D image: NIfTI, NRRD, MHA/MHD, or a folder holding a DICOM series.

    Raises VolumeError with a one-line message for anything that is not a finite scalar 3D
    image (missing or unreadable file, 2D, 4D, multi-component, NaN/inf voxels, no DICOM).
    """
    p = Path(path)
    if not p.exists():
        raise VolumeError(f"{p}: no such file or folder")
    image = _read_dicom_folder(p) if p.is_dir() else _read_file(p)

    spacing = tuple(float(v) for v in image.GetSpacing())
    origin = tuple(float(v) for v in image.GetOrigin())
    direction = tuple(float(v) for v in image.GetDirection())
    array = sitk.GetArrayFromImage(image)
    del image  # keep one copy of the voxels, not two

    if np.issubdtype(array.dtype, np.floating):
        _check_finite(p, array)
    return Volume(array, spacing, origin, direction, str(p))  # type: ignore[arg-type]


def _check_finite(p: Path, array: np.ndarray) -> None:
    n_bad = array.size - int(np.count_nonzero(np.isfinite(array)))
    if n_bad:
        raise VolumeError(
            f"{p}: {n_bad} of {array.size} voxels are NaN or infinite; "
            "replace them (e.g. with the background value) and try again"
        )


def _check_nifti_finite(p: Path) -> None:
    """ITK's NIfTI reader turns NaN and ±inf into 0: check the file's own float voxels."""
    import nibabel as nib
    from nibabel.filebasedimages import ImageFileError

    try:
        image = nib.load(str(p))
        if image.get_data_dtype().kind not in "fc":
            return  # integer voxels cannot be NaN
        data = np.asanyarray(image.dataobj)
    except (ImageFileError, OSError, ValueError, EOFError) as exc:
        raise VolumeError(f"{p}: cannot check its voxels for NaN: {exc}") from None
    _check_finite(p, data)


def _read_file(p: Path) -> sitk.Image:
    reader = sitk.ImageFileReader()
    reader.SetFileName(str(p))
    try:
        # Header first: reject 2D/4D/vector images without loading their voxels.
        reader.ReadImageInformation()
    except RuntimeError as exc:
        raise VolumeError(
            f"{p}: cannot read it as an image (expected NIfTI, NRRD, MHA/MHD or a DICOM "
            f"series folder): {_itk_reason(exc)}"
        ) from None

    dim = reader.GetDimension()
    size = reader.GetSize()
    if dim == 4 and size[3] == 1:
        # A 4D file with a single time point is a 3D volume; a 0 extract size drops the axis.
        reader.SetExtractSize([size[0], size[1], size[2], 0])
    elif dim != 3:
        raise VolumeError(f"{p}: {_describe_dim(dim, size)}, need a 3D volume")
    elif size[2] == 1 and any(_DICOM_TAG.match(k) for k in reader.GetMetaDataKeys()):
        # One slice of a series reads as a 1-slice "volume": almost surely the wrong input.
        raise VolumeError(f"{p}: is a single DICOM slice, pass the folder holding the whole series")
    _check_scalar(p, reader.GetNumberOfComponents())
    if p.name.lower().endswith(_NIFTI_SUFFIXES):
        _check_nifti_finite(p)  # before ITK's copy exists: one volume in memory at a time

    try:
        return reader.Execute()
    except RuntimeError as exc:
        raise VolumeError(f"{p}: cannot read the voxel data: {_itk_reason(exc)}") from None


def _read_dicom_folder(p: Path) -> sitk.Image:
    if not any(child.is_file() for child in p.iterdir()):
        raise VolumeError(f"{p}: folder has no files, expected the files of one DICOM series")
    series_ids = sitk.ImageSeriesReader.GetGDCMSeriesIDs(str(p))
    if not series_ids:
        raise VolumeError(
            f"{p}: folder holds no DICOM series (pass an image file or a DICOM folder)"
        )

    files_by_series = {
        sid: sitk.ImageSeriesReader.GetGDCMSeriesFileNames(str(p), sid) for sid in series_ids
    }
    chosen = max(series_ids, key=lambda sid: len(files_by_series[sid]))
    if len(series_ids) > 1:
        listing = ", ".join(
            f"{sid or '<no UID>'} ({len(files_by_series[sid])} files)" for sid in series_ids
        )
        log.warning(
            "%s holds %d DICOM series: %s; reading the largest, %s",
            p,
            len(series_ids),
            listing,
            chosen or "<no UID>",
        )
    files = files_by_series[chosen]

    reader = sitk.ImageSeriesReader()
    reader.SetFileNames(files)
    try:
        image = reader.Execute()
    except RuntimeError as exc:
        raise VolumeError(f"{p}: cannot read the DICOM series: {_itk_reason(exc)}") from None
    if image.GetDimension() != 3:
        raise VolumeError(
            f"{p}: {_describe_dim(image.GetDimension(), image.GetSize())}, need a 3D volume"
        )
    _check_scalar(p, image.GetNumberOfComponentsPerPixel())
    return image


def _check_scalar(p: Path, components: int) -> None:
    if components != 1:
        raise VolumeError(
            f"{p}: has {components} values per voxel (vector/RGB image), need a scalar "
            "grey-level volume"
        )


def _describe_dim(dim: int, size: tuple[int, ...]) -> str:
    return f"is a {dim}D image of size {'x'.join(str(s) for s in size)}"


def _itk_reason(exc: RuntimeError) -> str:
    # ITK messages span several lines of source locations; the last non-empty line says why.
    lines = [ln.strip() for ln in str(exc).splitlines() if ln.strip()]
    reason = lines[-1] if lines else "unknown error"
    return reason.removeprefix("sitk::ERROR:").strip()


def check_output_path(path: str | os.PathLike) -> str:
    """Check a mask output path before any work is done; returns its type suffix."""
    out = Path(path)
    suffix = next((s for s in _MASK_SUFFIXES if out.name.lower().endswith(s)), None)
    if suffix is None:
        raise VolumeError(f"{out}: unknown output type, name it .nii.gz, .nii, .nrrd or .seg.nrrd")
    if not out.parent.is_dir():
        raise VolumeError(f"{out}: output folder {out.parent} does not exist")
    if out.is_dir():
        raise VolumeError(f"{out}: is a folder, give a file name")
    return suffix


def write_mask(
    path: str | os.PathLike,
    mask: np.ndarray,
    like: Volume,
    *,
    segments: list[Segment] | None = None,
) -> Path:
    """Write a label mask on ``like``'s grid as .nii.gz/.nii, .nrrd or Slicer .seg.nrrd.

    ``mask`` is (k, j, i) with ``like.array``'s shape and labels 0..255 (0 = background).
    ``segments`` ``(label, name, (r, g, b) in 0..1)`` name and colour the labels in a
    .seg.nrrd; they are ignored for other formats. Default: label 1 named "Segment_1".
    The file appears only when complete (written under a temporary name, then renamed).
    Returns the path written.
    """
    out = Path(path)
    suffix = check_output_path(out)

    labels = _as_label_array(out, mask, like)
    seg_list = _check_segments(
        out,
        labels,
        DEFAULT_SEGMENTS if segments is None else segments,
        strict=suffix == ".seg.nrrd",
    )

    # Same folder so the final rename is atomic; keeps the suffix, which picks the writer.
    tmp = out.parent / f".{secrets.token_hex(6)}-{out.name}"
    try:
        if suffix == ".seg.nrrd":
            _write_seg_nrrd(tmp, labels, like, seg_list)
        else:
            sitk.WriteImage(like.image_like(labels), str(tmp), useCompression=True)
        os.replace(tmp, out)
    except (RuntimeError, OSError) as exc:
        reason = _itk_reason(exc) if isinstance(exc, RuntimeError) else str(exc)
        raise VolumeError(f"{out}: cannot write the mask: {reason}") from None
    finally:
        tmp.unlink(missing_ok=True)
    return out


def _as_label_array(out: Path, mask: np.ndarray, like: Volume) -> np.ndarray:
    mask = np.asarray(mask)
    if mask.shape != like.array.shape:
        raise VolumeError(
            f"{out}: mask shape {mask.shape} does not match the volume {like.source} "
            f"{like.array.shape} (k, j, i)"
        )
    if mask.dtype == np.uint8:
        return mask
    if mask.dtype != np.bool_ and not np.issubdtype(mask.dtype, np.integer):
        raise VolumeError(f"{out}: mask must hold integer labels, got dtype {mask.dtype}")
    if mask.size and (mask.min() < 0 or mask.max() > 255):
        raise VolumeError(f"{out}: mask labels must be 0..255, got {mask.min()}..{mask.max()}")
    return mask.astype(np.uint8)


def _check_segments(
    out: Path, labels: np.ndarray, segments: list[Segment], *, strict: bool
) -> list[Segment]:
    seen: set[int] = set()
    checked: list[Segment] = []
    for label, name, rgb in segments:
        label = int(label)
        if not 1 <= label <= 255 or label in seen:
            raise VolumeError(f"{out}: segment label {label} must be unique and in 1..255")
        if len(rgb) != 3 or not all(0.0 <= float(c) <= 1.0 for c in rgb):
            raise VolumeError(f"{out}: segment {name!r} colour {rgb} must be 3 values in 0..1")
        seen.add(label)
        checked.append((label, str(name), (float(rgb[0]), float(rgb[1]), float(rgb[2]))))
    if strict:
        # Slicer shows only the labels listed in the header; anything else would vanish.
        unnamed = sorted(set(np.unique(labels).tolist()) - seen - {0})
        if unnamed:
            raise VolumeError(f"{out}: mask labels {unnamed} have no segment name/colour")
    return checked


def _write_seg_nrrd(tmp: Path, labels: np.ndarray, like: Volume, segments: list[Segment]) -> None:
    d = np.asarray(like.direction, dtype=float).reshape(3, 3)
    header: dict[str, object] = {
        "dimension": 3,
        "space": "left-posterior-superior",
        # NRRD lists one vector per data axis (i, j, k): direction column times spacing.
        "space directions": (d * np.asarray(like.spacing, dtype=float)).T,
        "kinds": ["domain", "domain", "domain"],
        "encoding": "gzip",
        "space origin": np.asarray(like.origin, dtype=float),
    }
    for n, (label, name, rgb) in enumerate(segments):
        key = f"Segment{n}_"
        header[key + "Color"] = " ".join(f"{c:.6g}" for c in rgb)
        header[key + "ColorAutoGenerated"] = "0"
        header[key + "Extent"] = _extent(labels, label)
        header[key + "ID"] = f"Segment_{label}"
        header[key + "LabelValue"] = str(label)
        header[key + "Layer"] = "0"
        header[key + "Name"] = name
        header[key + "NameAutoGenerated"] = "0"
        header[key + "Tags"] = "|"
    header["Segmentation_ContainedRepresentationNames"] = "Binary labelmap|"
    header["Segmentation_MasterRepresentation"] = "Binary labelmap"
    header["Segmentation_ReferenceImageExtentOffset"] = "0 0 0"
    # index_order="C": the (k, j, i) array is written with i fastest, as NRRD wants.
    nrrd.write(str(tmp), np.ascontiguousarray(labels), header, index_order="C", compression_level=6)


def _extent(labels: np.ndarray, label: int) -> str:
    """Bounding box "i0 i1 j0 j1 k0 k1" (inclusive) of ``label``; Slicer's empty extent if absent."""
    hit = labels == label
    if not hit.any():
        return "0 -1 0 -1 0 -1"
    bounds = []
    for axis in (2, 1, 0):  # i, j, k
        other = tuple(a for a in range(3) if a != axis)
        idx = np.flatnonzero(hit.any(axis=other))
        bounds += [int(idx[0]), int(idx[-1])]
    return " ".join(str(b) for b in bounds)
