"""Read 3D + time from DICOM: a folder of one series per phase, or one series whose instances
carry several temporal positions.

- **Series per phase** (4D CT breathing phases, cardiac CT reconstructed at several % of the
  R-R interval): every image series found under the folder (its subfolders too) is a phase.
  They are ordered by the first of ``ORDER_KEYS`` that tells them apart; see ``_order``.
- **One series, several temporal positions** (dynamic/cardiac MR and CT exports): instances
  that share the slice positions are split by Temporal Position Identifier (0020,0100), or
  else by Trigger Time (0018,1060), each group holding the same set of Image Position
  (Patient) values: the splitting tags cornerstone3D's ``splitImageIdsBy4DTags`` tries first
  for the same purpose (cornerstonejs/cornerstone3D, packages/core/src/utilities).

Each phase is read with ITK's series reader (as ``volumes.read_volume`` reads one series, so
rescale and geometry are the same), its instances must fill its slices evenly
(``dicom_series.place_on_slices``), and every phase must share phase 0's grid. Anything
else is a one-line ``VolumeError`` that names the phases concerned.
"""

from __future__ import annotations

import os
import re
from dataclasses import dataclass
from pathlib import Path

import numpy as np
import SimpleITK as sitk

from .dicom_series import place_on_slices
from .phases import Phases
from .volumes import Volume, VolumeError

# Phase order, first key that tells every phase apart. TemporalPositionIdentifier is the
# standard's own (MR Image module, PS3.3 C.8.3.1) and what dynamic exports carry; TriggerTime
# is what ECG-gated cardiac CT/MR phases carry (ms after the R wave); respiratory 4D CT
# exports often state the phase only in the series description, e.g. TCIA's 4D-Lung
# collection ("..., Gated, 50.0%"), which public scripts sorting that collection parse
# with a "number%" pattern; SeriesNumber is the scanner's own numbering, the last resort.
ORDER_KEYS = ("TemporalPositionIdentifier", "TriggerTime", "SeriesDescription %",
              "SeriesNumber")
_PERCENT = re.compile(r"(\d+(?:\.\d+)?)\s*%")
_MM = 0.01  # grids closer than this (mm) are one grid: DS values are rounded text


@dataclass
class _Phase:
    """One phase's instances (headers only) and what identifies it."""

    datasets: list
    label: str  # "series 1.2.3…4567 'Gated, 20.0%'" or "temporal position 3"

    def key(self, name: str) -> float | None:
        """The phase's value for an ``ORDER_KEYS`` entry: None where absent or not one value."""
        if name == "SeriesDescription %":
            found = {tuple(_PERCENT.findall(str(ds.get("SeriesDescription", ""))))
                     for ds in self.datasets}
            matches = found.pop() if len(found) == 1 else ()
            return float(matches[0]) if len(matches) == 1 else None
        values = {_number(ds.get(name)) for ds in self.datasets}
        return values.pop() if len(values) == 1 else None


def _number(value: object) -> float | None:
    try:
        return None if value is None or str(value).strip() == "" else float(value)
    except (TypeError, ValueError):
        return None


def holds_dicom_phases(path: str | os.PathLike) -> bool:
    """True when folder ``path`` holds more than one 3D volume's worth of DICOM images
    (several image series, or slice positions that repeat): phases, to be read (or refused)
    as such rather than as one series. Headers only; a folder without DICOM images is left
    to the other readers to judge."""
    p = Path(path)
    if not p.is_dir():
        return False
    try:
        series = _series(p)
    except VolumeError:
        return False
    return len(series) > 1 or any(
        len({_position(ds) for ds in datasets}) < len(datasets) for datasets in series.values())


def read_dicom_phases(path: str | os.PathLike) -> Phases:
    """Phases from DICOM (see the module); VolumeError (one line) for anything else."""
    p = Path(path)
    phases = _phases(p)
    if len(phases) < 2:
        raise VolumeError(f"{p}: one DICOM series with no temporal positions (one 3D volume); "
                          "3D + time needs a series per phase or one with several temporal "
                          "positions")
    volumes = [_read_phase(phase, f"phase {i} ({phase.label})") for i, phase in
               enumerate(phases)]
    _check_one_grid(p, phases, volumes)
    array = np.stack([v.array for v in volumes])
    grid = Volume(array[0], volumes[0].spacing, volumes[0].origin, volumes[0].direction, str(p))
    return Phases.on_grid(array, grid, [phase.label for phase in phases])


def _phases(p: Path) -> list[_Phase]:
    """The phases under folder ``p``, in order."""
    series = _series(p)
    split = {uid: _split_temporal(uid, datasets) for uid, datasets in series.items()}
    several = [uid for uid, parts in split.items() if len(parts) > 1]
    if several and len(series) > 1:
        raise VolumeError(f"{p}: holds {len(series)} series and series {_short(several[0])} has "
                          "temporal positions of its own: give one layout (a series per phase, "
                          "or one series with temporal positions)")
    if several:
        return split[several[0]]
    return _order(p, [_Phase(datasets, _series_label(uid, datasets))
                      for uid, datasets in series.items()])


def _series(p: Path) -> dict[str, list]:
    """Image instances under ``p`` by Series Instance UID (by folder where it is blank)."""
    series: dict[str, list] = {}
    for ds in _image_instances(p):
        uid = str(ds.get("SeriesInstanceUID", "")) or f"(no UID) {Path(ds.filename).parent}"
        series.setdefault(uid, []).append(ds)
    return series


def _image_instances(p: Path) -> list:
    """Headers of every single-frame image instance under ``p`` (non-DICOM files and DICOM
    objects without an image plane, such as DICOMDIR, SEG or RTSTRUCT, are not phases)."""
    import pydicom
    from pydicom.errors import InvalidDicomError

    if not p.is_dir():
        raise VolumeError(f"{p}: not a folder (DICOM phases are a folder of series)")
    found = []
    for root, dirs, files in os.walk(p):
        dirs.sort()
        for name in sorted(files):
            try:
                ds = pydicom.dcmread(os.path.join(root, name), stop_before_pixels=True)
            except (InvalidDicomError, OSError, EOFError):
                continue  # not a DICOM file
            if "ImagePositionPatient" not in ds or "ImageOrientationPatient" not in ds:
                continue
            if int(ds.get("NumberOfFrames", 1) or 1) > 1:
                raise VolumeError(f"{ds.filename}: a multi-frame image; DICOM phases are read "
                                  "from single-frame series")
            found.append(ds)
    if not found:
        raise VolumeError(f"{p}: holds no DICOM image series")
    return found


def _split_temporal(uid: str, datasets: list) -> list[_Phase]:
    """One series → its temporal positions (one phase when its slice positions don't repeat)."""
    positions = [_position(ds) for ds in datasets]
    if len(set(positions)) == len(positions):  # one volume (per-slice trigger times or not)
        return [_Phase(datasets, _series_label(uid, datasets))]
    for tag, what in (("TemporalPositionIdentifier", "temporal position"),
                      ("TriggerTime", "trigger time")):
        values = [_number(ds.get(tag)) for ds in datasets]
        if None in values or len(set(values)) < 2:
            continue
        groups: dict[float, list] = {}
        for value, ds in zip(values, datasets, strict=True):
            groups.setdefault(value, []).append(ds)
        sets = [sorted(_position(ds) for ds in group) for group in groups.values()]
        if any(len(set(s)) < len(s) or s != sets[0] for s in sets):
            raise VolumeError(f"series {_short(uid)}: its {tag} groups do not each hold the "
                              "same slice positions once")
        stated = _number(datasets[0].get("NumberOfTemporalPositions"))
        if stated is not None and stated != len(groups):
            raise VolumeError(f"series {_short(uid)}: states {stated:g} temporal positions "
                              f"(NumberOfTemporalPositions), holds {len(groups)}")
        unit = " ms" if tag == "TriggerTime" else ""
        return [_Phase(groups[v], f"{what} {v:g}{unit}") for v in sorted(groups)]
    raise VolumeError(f"series {_short(uid)}: slice positions repeat and neither "
                      "TemporalPositionIdentifier nor TriggerTime tells the repeats apart")


def _order(p: Path, phases: list[_Phase]) -> list[_Phase]:
    """Order series by the first ``ORDER_KEYS`` entry that tells every phase apart. A key
    with one value for all says nothing and the next is tried; a key some phases lack, or
    that two phases share, is refused rather than guessed around."""
    if len(phases) < 2:
        return phases
    for name in ORDER_KEYS:
        values = [phase.key(name) for phase in phases]
        if all(v is None for v in values):
            continue
        if None in values:
            lacking = phases[values.index(None)]
            raise VolumeError(f"{p}: cannot order the phases: {lacking.label} has no single "
                              f"{name}, other series do")
        if len(set(values)) == 1:
            continue
        for i, value in enumerate(values):
            if values.index(value) != i:
                raise VolumeError(f"{p}: cannot order the phases: "
                                  f"{phases[values.index(value)].label} and {phases[i].label} "
                                  f"both have {name} {value:g}")
        return [phases[i] for i in np.argsort(values, kind="stable")]
    raise VolumeError(f"{p}: cannot order the {len(phases)} series as phases: none of "
                      f"{', '.join(ORDER_KEYS)} tells them apart")


def _read_phase(phase: _Phase, where: str) -> Volume:
    """One phase's voxels via ITK, instances sorted along the slice normal, slices checked."""
    orientations = {tuple(round(float(v), 4) for v in ds.ImageOrientationPatient)
                    for ds in phase.datasets}
    if len(orientations) != 1:
        raise VolumeError(f"{where}: its instances have {len(orientations)} orientations")
    row_col = np.array(orientations.pop(), dtype=float).reshape(2, 3)
    normal = np.cross(row_col[0], row_col[1])
    datasets = sorted(phase.datasets, key=lambda ds: float(np.dot(_position(ds), normal)))
    reader = sitk.ImageSeriesReader()
    reader.SetFileNames([ds.filename for ds in datasets])
    warnings = sitk.ProcessObject.GetGlobalWarningDisplay()
    # ITK only prints a multi-line warning for uneven slices; place_on_slices refuses them
    sitk.ProcessObject.SetGlobalWarningDisplay(False)
    try:
        image = reader.Execute()
    except RuntimeError as exc:
        reason = [ln for ln in str(exc).splitlines() if ln.strip()][-1:] or ["unknown error"]
        raise VolumeError(f"{where}: cannot read its DICOM files: {reason[0].strip()}") from None
    finally:
        sitk.ProcessObject.SetGlobalWarningDisplay(warnings)
    if image.GetNumberOfComponentsPerPixel() != 1:
        raise VolumeError(f"{where}: not a scalar grey-level image")
    volume = Volume(sitk.GetArrayFromImage(image), tuple(image.GetSpacing()),  # type: ignore[arg-type]
                    tuple(image.GetOrigin()), tuple(image.GetDirection()), where)  # type: ignore[arg-type]
    place_on_slices(datasets, volume, where)
    return volume


def _check_one_grid(p: Path, phases: list[_Phase], volumes: list[Volume]) -> None:
    """Every phase on phase 0's grid, or one line naming each phase that differs and how."""
    first = volumes[0]
    differ = []
    for i, volume in enumerate(volumes[1:], start=1):
        name = f"phase {i} ({phases[i].label})"
        (k, j, ii), (k0, j0, i0) = volume.array.shape, first.array.shape
        if k != k0:
            differ.append(f"{name} has {k} slices, phase 0 has {k0}")
        elif (j, ii) != (j0, i0):
            differ.append(f"{name} has {ii}x{j} pixels, phase 0 has {i0}x{j0}")
        elif not np.allclose(volume.spacing, first.spacing, atol=_MM, rtol=0):
            differ.append(f"{name} has spacing {_mm(volume.spacing)} mm, phase 0 has "
                          f"{_mm(first.spacing)}")
        elif not np.allclose(volume.origin, first.origin, atol=_MM, rtol=0):
            differ.append(f"{name} starts at {_mm(volume.origin)} mm, phase 0 at "
                          f"{_mm(first.origin)}")
        elif not np.allclose(volume.direction, first.direction, atol=1e-4, rtol=0):
            differ.append(f"{name} has another orientation than phase 0")
    if differ:
        raise VolumeError(f"{p}: the phases are not on one grid: {'; '.join(differ)}")


def _position(ds: object) -> tuple[float, float, float]:
    return tuple(round(float(v), 3) for v in ds.ImagePositionPatient)  # type: ignore[attr-defined,return-value]


def _series_label(uid: str, datasets: list) -> str:
    description = str(datasets[0].get("SeriesDescription", "")).strip()
    return f"series {_short(uid)}" + (f" '{description}'" if description else "")


def _short(uid: str) -> str:
    return uid if len(uid) <= 24 else f"{uid[:10]}…{uid[-8:]}"


def _mm(values: tuple[float, ...]) -> str:
    return "(" + ", ".join(f"{v:.2f}" for v in values) + ")"
