"""Read a cine (2D + time) exported as one DICOM series of single-frame images at one position.

A cardiac cine MR is often stored as one instance per frame, every instance with the same
Image Position and Orientation (Patient): the frames differ only by time. ITK's series reader
sorts instances along the slice normal, which says nothing here, so the frames are ordered
from their headers (``ORDER_KEYS``) and each instance is read on its own with ITK's DICOM
reader (rescale applied exactly as ``volumes.read_volume`` applies it to a series).

Which folders are a cine: one image series (as ``dicom_phases`` groups a folder) whose
instances all lie at one position. Several positions that repeat over time (a multi-slice
cine) are 3D + time: ``dicom_phases`` reads them, and ``segment --time`` asks for ``--phase``.
"""

from __future__ import annotations

import os
from dataclasses import dataclass
from pathlib import Path

import numpy as np
import SimpleITK as sitk

# The series grouping and the position rounding are dicom_phases' own: a folder is judged a
# cine or phases on the same grouping, never on two that could disagree.
from .dicom_phases import _number, _position, _series
from .volumes import VolumeError

# Frame order, the first key that tells the frames apart. TriggerTime (0018,1060) is the time
# after the R wave each cardiac cine frame was acquired at, the frame-identifying tag Slicer's
# MultiVolumeImporter tries first (fedorov/MultiVolumeImporter, MultiVolumeImporterPlugin.py);
# TemporalPositionIdentifier (0020,0100) is the standard's temporal order of dynamic images
# (MR Image module, PS3.3 C.8.3.1); InstanceNumber is only the scanner's numbering, the last
# resort. A key with one value for all frames says nothing and the next is tried; a key some
# frames lack, or that two frames share (magnitude and phase images of a flow series at each
# trigger time, say), is refused: any other key would interleave them.
ORDER_KEYS = ("TriggerTime", "TemporalPositionIdentifier", "InstanceNumber")
_UNEVEN = 0.1  # trigger time steps further than this fraction from their mean are "uneven"


@dataclass
class Cine:
    """The frames of a one-position DICOM series, in time order."""

    pixels: np.ndarray  # (frames, rows, columns), rescaled as ITK's DICOM reader does
    spacing_mm: tuple[float, float] | None  # (column, row) from Pixel Spacing, None if absent
    frame_time_ms: float | None  # None where the headers do not say
    timing: str | None  # what the frame time came from, for the user
    order: str  # the ORDER_KEYS entry the frames were ordered by
    files: list[str]  # the instances in frame order


def holds_dicom_cine(path: str | os.PathLike) -> bool:
    """True when folder ``path`` holds one DICOM image series whose instances (more than one)
    all lie at one Image Position (Patient). Headers only."""
    return _cine_datasets(Path(path)) is not None


def read_dicom_cine(path: str | os.PathLike) -> Cine:
    """The frames of a one-position series (see the module); VolumeError (one line) else."""
    p = Path(path)
    datasets = _cine_datasets(p)
    if datasets is None:
        raise VolumeError(f"{p}: not one DICOM series of images at one position (a cine)")
    orientations = {tuple(round(float(v), 4) for v in ds.ImageOrientationPatient)
                    for ds in datasets}
    if len(orientations) != 1:
        raise VolumeError(f"{p}: its instances share one position but have {len(orientations)} "
                          "orientations (ImageOrientationPatient); a cine has one")
    spacing = _one_value(p, datasets, "PixelSpacing")
    if spacing is not None and (not isinstance(spacing, tuple) or len(spacing) != 2):
        raise VolumeError(f"{p}: Pixel Spacing {spacing} is not two numbers (row, column)")
    for keyword in ("Rows", "Columns", "SamplesPerPixel"):
        _one_value(p, datasets, keyword)
    if int(datasets[0].get("SamplesPerPixel", 1)) != 1:
        raise VolumeError(f"{p}: colour instances; a DICOM cine series is read as grey frames")
    datasets, key, values = _order(p, datasets)
    frame_time, timing = _frame_time(datasets, key, values)
    pixels = np.stack([_read_instance(ds.filename) for ds in datasets])
    column_row = (float(spacing[1]), float(spacing[0])) if spacing else None  # (row, column)
    return Cine(pixels, column_row, frame_time, timing, key, [ds.filename for ds in datasets])


def _cine_datasets(p: Path) -> list | None:
    """The instances of ``p`` when it is one series at one position, else None."""
    if not p.is_dir():
        return None
    try:
        series = _series(p)
    except VolumeError:
        return None  # no DICOM images (or a multi-frame file): the other readers judge
    if len(series) != 1:
        return None
    datasets = next(iter(series.values()))
    if len(datasets) < 2 or len({_position(ds) for ds in datasets}) != 1:
        return None
    return datasets


def _one_value(p: Path, datasets: list, keyword: str) -> object:
    """The value every instance has for ``keyword`` (None where all lack it), or refuse."""
    values = {_hashable(ds.get(keyword)) for ds in datasets}
    if len(values) != 1:
        raise VolumeError(f"{p}: the frames differ in {keyword} ({len(values)} values); a cine "
                          "has one")
    return values.pop()


def _hashable(value: object) -> object:
    """A header value comparable across instances: numbers (DS text such as "0.3125" and
    "0.31250" is one value) to 1e-6, multi-valued ones as tuples."""
    if value is None or isinstance(value, str) and not value.strip():
        return None
    if isinstance(value, (list, tuple)) or type(value).__name__ == "MultiValue":
        return tuple(_hashable(v) for v in value)  # type: ignore[union-attr]
    number = _number(value)
    return round(number, 6) if number is not None else str(value)


def _order(p: Path, datasets: list) -> tuple[list, str, list[float]]:
    """``datasets`` in time order, the key used, and its sorted values (see ``ORDER_KEYS``)."""
    for key in ORDER_KEYS:
        values = [_number(ds.get(key)) for ds in datasets]
        if all(v is None for v in values):
            continue
        if None in values:
            lacking = datasets[values.index(None)]
            raise VolumeError(f"{p}: cannot order the frames: {_name(lacking)} has no {key}, "
                              "other instances do")
        if len(set(values)) == 1:
            continue
        for i, value in enumerate(values):
            first = values.index(value)
            if first != i:
                raise VolumeError(f"{p}: cannot order the frames: {_name(datasets[first])} and "
                                  f"{_name(datasets[i])} both have {key} {value:g}")
        order = np.argsort(values, kind="stable")
        return [datasets[i] for i in order], key, sorted(values)  # type: ignore[type-var]
    raise VolumeError(f"{p}: cannot order the {len(datasets)} frames: none of "
                      f"{', '.join(ORDER_KEYS)} tells them apart")


def _frame_time(datasets: list, key: str,
                values: list[float]) -> tuple[float | None, str | None]:
    """The frame time in ms and what it came from: the trigger times' mean step when they
    ordered the frames, else Frame Time, else Nominal Interval / Cardiac Number of Images
    (the R-R interval over the frames acquired in it), each only where all frames agree."""
    if key == "TriggerTime":
        steps = np.diff(values)
        mean = float(steps.mean())
        uneven = bool(np.any(np.abs(steps - mean) > _UNEVEN * mean))
        return mean, "TriggerTime steps" + (" (uneven; their mean)" if uneven else "")
    frame_time = _agreed(datasets, "FrameTime")
    if frame_time:
        return frame_time, "FrameTime"
    interval, images = _agreed(datasets, "NominalInterval"), _agreed(datasets,
                                                                      "CardiacNumberOfImages")
    if interval and images:
        return interval / images, "NominalInterval / CardiacNumberOfImages"
    return None, None


def _agreed(datasets: list, keyword: str) -> float | None:
    """A positive number every instance states alike, else None."""
    values = {_number(ds.get(keyword)) for ds in datasets}
    value = values.pop() if len(values) == 1 else None
    return value if value is not None and value > 0 else None


def _read_instance(filename: str) -> np.ndarray:
    """One instance's pixels (rows, columns), read as ITK reads a series (rescale applied)."""
    try:
        image = sitk.ReadImage(filename)
    except RuntimeError as exc:
        reason = [ln for ln in str(exc).splitlines() if ln.strip()][-1:] or ["unknown error"]
        raise VolumeError(f"{filename}: cannot read its pixels: {reason[0].strip()}") from None
    if image.GetNumberOfComponentsPerPixel() != 1:
        raise VolumeError(f"{filename}: not a grey-level image")
    array = sitk.GetArrayFromImage(image)
    if array.ndim == 3 and array.shape[0] == 1:
        array = array[0]
    if array.ndim != 2:
        raise VolumeError(f"{filename}: expected one 2D image, got an array of {array.shape}")
    return array


def _name(ds: object) -> str:
    return Path(ds.filename).name  # type: ignore[attr-defined]
