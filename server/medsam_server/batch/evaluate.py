"""Dice and normalised surface Dice of label volumes, with MedSAM's conventions.

The numbers are those of DeepMind's ``surface-distance`` package (surfel-area weighted
surface Dice, which MedSAM's ``SurfaceDice.py`` ports), computed with that package on
the voxel grid with its physical spacing, so they compare with the MedSAM/MedSAM2
papers. Per label, as MedSAM's ``compute_metrics``: both masks empty -> DSC = NSD = 1;
reference empty and prediction not -> 0 and 0.

Label volumes are read with ``io.volumes.read_volume`` (NIfTI, NRRD, ``.seg.nrrd``
labelmaps, MHA); a prediction and its reference must share one grid: nothing is resampled,
except a DICOM SEG (``.dcm``, read through highdicom), which has no grid of its own and is
placed on the other side's grid.
"""

from __future__ import annotations

import csv
import math
import os
import secrets
import warnings
from collections.abc import Iterable, Sequence
from dataclasses import dataclass
from pathlib import Path

import numpy as np

from ..io.sequences import SUFFIX as SEQUENCE_SUFFIX
from ..io.sequences import read_label_sequence
from ..io.volumes import Volume, read_volume

DEFAULT_TOLERANCE_MM = 2.0
METRICS_COLUMNS = ("case", "label", "dsc", "nsd")
# Longest first, so "a.seg.nrrd" is case "a", not "a.seg".
IMAGE_SUFFIXES = (".seg.nrrd", ".seq.nrrd", ".nii.gz", ".nii", ".nrrd", ".mha", ".mhd", ".dcm")
# Grid comparison: NIfTI keeps geometry in float32, so equal grids differ by ~1e-6.
_SPACING_RTOL = 1e-5
_ORIGIN_ATOL_MM = 1e-3
_DIRECTION_ATOL = 1e-5


class EvaluationError(ValueError):
    """Inputs that cannot be compared (grids, labels, folders); the message names them."""


@dataclass(frozen=True)
class LabelMetrics:
    case: str
    label: int
    dsc: float
    nsd: float


def mask_metrics(reference: np.ndarray, prediction: np.ndarray,
                 spacing_mm: Sequence[float], tolerance_mm: float) -> tuple[float, float]:
    """(DSC, NSD) of two boolean masks of one grid; ``spacing_mm`` per array axis."""
    ref_any, pred_any = bool(reference.any()), bool(prediction.any())
    if not ref_any:  # MedSAM's convention for an absent structure
        return (1.0, 1.0) if not pred_any else (0.0, 0.0)
    if not pred_any:
        # What the package's formulas give (no overlap, no surface within tolerance);
        # surface-distance 0.1 itself cannot run this case on numpy 2 (it uses np.Inf).
        return 0.0, 0.0
    from surface_distance import metrics as sd

    with warnings.catch_warnings():
        # surface-distance 0.1 imports scipy.ndimage.filters/morphology (deprecated names)
        warnings.filterwarnings("ignore", category=DeprecationWarning,
                                message=r".*scipy\.ndimage\.")
        distances = sd.compute_surface_distances(reference, prediction, list(spacing_mm))
        nsd = sd.compute_surface_dice_at_tolerance(distances, tolerance_mm)
    dsc = sd.compute_dice_coefficient(reference, prediction)
    return float(dsc), float(nsd)


def volume_metrics(case: str, prediction: Volume, reference: Volume,
                   labels: Sequence[int] | None = None,
                   tolerance_mm: float = DEFAULT_TOLERANCE_MM, *,
                   frames: bool = False) -> list[LabelMetrics]:
    """Metrics per label of one case; default labels: every label either volume holds.

    ``frames``: the volumes are frames along k (2D + time): DSC over all frames, NSD from
    each frame's own contours (``frames_nsd``), as time is no distance.
    """
    check_same_grid(prediction, reference)
    pred = label_array(prediction, "prediction")
    ref = label_array(reference, "reference")
    if labels is None:
        labels = sorted((set(np.unique(pred).tolist()) | set(np.unique(ref).tolist())) - {0})
    # find_objects gives each label's bounding box in one pass; the package crops to the
    # union's box itself, so cropping first changes no number, only the time spent
    pred_boxes = _bounding_boxes(pred, labels)
    ref_boxes = _bounding_boxes(ref, labels)
    spacing = tuple(reversed(reference.spacing))  # arrays are (k, j, i); spacing is (x, y, z)
    rows = []
    for label in labels:
        box = _union_box(pred_boxes.get(label), ref_boxes.get(label))
        if box is None:
            dsc, nsd = mask_metrics(np.zeros(1, bool), np.zeros(1, bool), spacing, tolerance_mm)
        elif frames:
            dsc, nsd = frames_metrics(ref[box] == label, pred[box] == label, spacing[1:],
                                      tolerance_mm)
        else:
            dsc, nsd = mask_metrics(ref[box] == label, pred[box] == label, spacing, tolerance_mm)
        rows.append(LabelMetrics(case, int(label), dsc, nsd))
    return rows


def frames_metrics(reference: np.ndarray, prediction: np.ndarray,
                   spacing_mm: Sequence[float], tolerance_mm: float) -> tuple[float, float]:
    """(DSC, NSD) of two boolean (frames, rows, columns) masks; ``spacing_mm``: (row, column).

    DSC pools every frame's pixels. NSD pools every frame's 2D contours: the contour length
    within tolerance of the other mask's contour in the same frame, over all contour length
    (a frame with one mask empty adds its contour to the total only), so it is the
    surfel-weighted NSD of the package with time kept out of the distances.
    """
    ref_any, pred_any = bool(reference.any()), bool(prediction.any())
    if not ref_any or not pred_any:  # MedSAM's conventions, as mask_metrics
        return (1.0, 1.0) if not ref_any and not pred_any else (0.0, 0.0)
    from surface_distance import metrics as sd

    dsc = 2.0 * np.count_nonzero(reference & prediction) / (
        np.count_nonzero(reference) + np.count_nonzero(prediction))
    within = total = 0.0
    with warnings.catch_warnings():
        warnings.filterwarnings("ignore", category=DeprecationWarning,
                                message=r".*scipy\.ndimage\.")
        for ref, pred in zip(reference, prediction, strict=True):
            if not ref.any() and not pred.any():
                continue
            if not ref.any() or not pred.any():  # no contour to be near: none of it within
                alone = ref | pred
                d = sd.compute_surface_distances(alone, alone, list(spacing_mm))
                total += float(d["surfel_areas_gt"].sum())
                continue
            d = sd.compute_surface_distances(ref, pred, list(spacing_mm))
            within += float(
                d["surfel_areas_gt"][d["distances_gt_to_pred"] <= tolerance_mm].sum()
                + d["surfel_areas_pred"][d["distances_pred_to_gt"] <= tolerance_mm].sum())
            total += float(d["surfel_areas_gt"].sum() + d["surfel_areas_pred"].sum())
    return float(dsc), within / total


def label_array(volume: Volume, role: str) -> np.ndarray:
    """The volume's voxels as non-negative integer labels, or an error naming the file."""
    arr = volume.array
    if np.issubdtype(arr.dtype, np.floating):
        if not np.array_equal(arr, np.round(arr)):
            raise EvaluationError(f"{role} {volume.source}: holds non-integer values; "
                                  "expected a label volume")
        arr = arr.astype(np.int64)
    elif arr.dtype == np.bool_:
        arr = arr.view(np.uint8)
    elif not np.issubdtype(arr.dtype, np.integer):
        raise EvaluationError(f"{role} {volume.source}: voxel type {arr.dtype} is not a label "
                              "type")
    if arr.size and arr.min() < 0:
        raise EvaluationError(f"{role} {volume.source}: holds negative labels "
                              f"({int(arr.min())})")
    return arr


def check_same_grid(prediction: Volume, reference: Volume) -> None:
    """Refuse two volumes on different voxel grids, naming both grids."""
    same = (prediction.size == reference.size
            and np.allclose(prediction.spacing, reference.spacing, rtol=_SPACING_RTOL, atol=0)
            and np.allclose(prediction.origin, reference.origin, rtol=0, atol=_ORIGIN_ATOL_MM)
            and np.allclose(prediction.direction, reference.direction, rtol=0,
                            atol=_DIRECTION_ATOL))
    if not same:
        raise EvaluationError(
            f"{prediction.source} is on grid {describe_grid(prediction)} but "
            f"{reference.source} is on grid {describe_grid(reference)}; resample one onto "
            "the other's grid first (nothing is resampled here)")


def describe_grid(volume: Volume) -> str:
    def fmt(values: Iterable[float]) -> str:
        return "(" + ", ".join(f"{v:.6g}" for v in values) + ")"

    return (f"size {'x'.join(str(n) for n in volume.size)} spacing {fmt(volume.spacing)} "
            f"origin {fmt(volume.origin)} direction {fmt(volume.direction)}")


def _bounding_boxes(arr: np.ndarray, labels: Sequence[int]) -> dict[int, tuple[slice, ...]]:
    wanted = [int(v) for v in labels]
    if not wanted:
        return {}
    from scipy import ndimage

    top = max(wanted)
    boxes = ndimage.find_objects(arr, max_label=top)  # labels above ``top`` are ignored
    return {label: boxes[label - 1] for label in wanted if boxes[label - 1] is not None}


def _union_box(a: tuple[slice, ...] | None,
               b: tuple[slice, ...] | None) -> tuple[slice, ...] | None:
    if a is None or b is None:
        return a if b is None else b
    return tuple(slice(min(x.start, y.start), max(x.stop, y.stop)) for x, y in zip(a, b,
                                                                                 strict=True))


# ---- cases: two files or two folders ------------------------------------------------------


def case_name(path: Path) -> str | None:
    """The case a label file holds (its name less the image suffix), None if not an image."""
    lower = path.name.lower()
    for suffix in IMAGE_SUFFIXES:
        if lower.endswith(suffix) and len(lower) > len(suffix):
            return path.name[: -len(suffix)]
    return None


def match_cases(prediction: str | os.PathLike,
                reference: str | os.PathLike) -> list[tuple[str, Path, Path]]:
    """(case, prediction file, reference file): two files, or two folders matched by name.

    In folders a case is the file name less its image suffix (``a.seg.nrrd`` matches
    ``a.nii.gz``); every case must be in both folders.
    """
    pred, ref = Path(prediction), Path(reference)
    for p, role in ((pred, "PRED"), (ref, "REF")):
        if not p.exists():
            raise EvaluationError(f"{role} {p}: no such file or folder")
    if pred.is_dir() != ref.is_dir():
        raise EvaluationError(f"give two label files or two folders, not {pred} and {ref}")
    if not pred.is_dir():
        return [(case_name(ref) or ref.name, pred, ref)]
    preds, refs = _cases_in(pred, "PRED"), _cases_in(ref, "REF")
    if not refs:
        raise EvaluationError(f"REF {ref}: folder holds no label files ({_suffix_list()})")
    no_pred = sorted(set(refs) - set(preds))
    no_ref = sorted(set(preds) - set(refs))
    if no_pred or no_ref:
        parts = []
        if no_pred:
            parts.append(f"{len(no_pred)} case(s) of {ref} have no prediction in {pred}: "
                         f"{_few(no_pred)}")
        if no_ref:
            parts.append(f"{len(no_ref)} case(s) of {pred} have no reference in {ref}: "
                         f"{_few(no_ref)}")
        raise EvaluationError("; ".join(parts))
    return [(case, preds[case], refs[case]) for case in sorted(refs)]


def _cases_in(folder: Path, role: str) -> dict[str, Path]:
    cases: dict[str, Path] = {}
    for path in sorted(folder.iterdir()):
        name = case_name(path) if path.is_file() and not path.name.startswith(".") else None
        if name is None:
            continue  # results.csv, notes, temporary files of a running batch
        if name in cases:
            raise EvaluationError(f"{role} {folder}: case {name!r} is in two files, "
                                  f"{cases[name].name} and {path.name}")
        cases[name] = path
    return cases


def _few(names: list[str], limit: int = 5) -> str:
    shown = ", ".join(names[:limit])
    return shown + (f" and {len(names) - limit} more" if len(names) > limit else "")


def _suffix_list() -> str:
    return ", ".join(IMAGE_SUFFIXES)


def evaluate_cases(cases: list[tuple[str, Path, Path]], labels: Sequence[int] | None = None,
                   tolerance_mm: float = DEFAULT_TOLERANCE_MM, *,
                   frames: bool = False) -> list[LabelMetrics]:
    """``frames``: 2D + time label files (``volume_metrics``'s per-frame NSD)."""
    rows: list[LabelMetrics] = []
    for case, pred_path, ref_path in cases:
        prediction, reference = read_pair(pred_path, ref_path)
        rows += volume_metrics(case, prediction, reference, labels, tolerance_mm,
                               frames=frames)
    return rows


def read_pair(pred_path: Path, ref_path: Path) -> tuple[Volume, Volume]:
    """Both label volumes; a DICOM SEG (``.dcm``) on one side is read onto the other side's
    grid (a SEG holds only the frames it segments, so it has no grid of its own)."""
    from ..io.dicom_seg import read_seg

    pred_seg, ref_seg = (str(p).lower().endswith(".dcm") for p in (pred_path, ref_path))
    if pred_seg and ref_seg:
        raise EvaluationError(f"{pred_path} and {ref_path} are both DICOM SEG: one side must "
                              "be a label volume on the CT's grid")
    if pred_seg:
        reference = _read_labels(ref_path)
        return read_seg(pred_path, reference), reference
    prediction = _read_labels(pred_path)
    return prediction, (read_seg(ref_path, prediction) if ref_seg else _read_labels(ref_path))


def _read_labels(path: Path) -> Volume:
    """A label volume, or a label sequence of frames (``.seq.nrrd``) on its frames' grid."""
    if str(path).lower().endswith(SEQUENCE_SUFFIX):
        return read_label_sequence(path)
    return read_volume(path)


def check_tolerance(tolerance_mm: float) -> float:
    if not (math.isfinite(tolerance_mm) and tolerance_mm >= 0):
        raise EvaluationError(f"--tolerance-mm must be a finite number >= 0, got {tolerance_mm}")
    return float(tolerance_mm)


def check_labels(labels: Sequence[int] | None) -> list[int] | None:
    if labels is None:
        return None
    bad = [v for v in labels if v < 1]
    if bad:
        raise EvaluationError(f"--labels must be positive label values, got {bad}")
    return sorted(set(int(v) for v in labels))


# ---- CSV and summary ------------------------------------------------------------------------


def write_metrics_csv(path: str | os.PathLike, rows: Iterable[LabelMetrics]) -> Path:
    """``case,label,dsc,nsd`` (full float precision), written under a temporary name first."""
    return write_csv_atomic(path, METRICS_COLUMNS,
                            ([r.case, r.label, repr(r.dsc), repr(r.nsd)] for r in rows))


def write_csv_atomic(path: str | os.PathLike, columns: Sequence[str],
                     rows: Iterable[Sequence[object]]) -> Path:
    out = Path(path)
    tmp = out.parent / f".{secrets.token_hex(6)}-{out.name}"
    try:
        with open(tmp, "w", newline="") as f:
            writer = csv.writer(f)
            writer.writerow(columns)
            writer.writerows(rows)
        os.replace(tmp, out)
    finally:
        tmp.unlink(missing_ok=True)
    return out


def read_metrics_csv(path: str | os.PathLike) -> list[LabelMetrics]:
    with open(path, newline="") as f:
        return [LabelMetrics(r["case"], int(r["label"]), float(r["dsc"]), float(r["nsd"]))
                for r in csv.DictReader(f)]


def summary(rows: Sequence[LabelMetrics]) -> str:
    """Mean and median of DSC and NSD per label (over cases), then over all rows."""
    lines = [f"{'label':>7} {'n':>6} {'DSC mean':>9} {'DSC median':>11} {'NSD mean':>9} "
             f"{'NSD median':>11}"]
    groups: dict[str, list[LabelMetrics]] = {}
    for r in sorted(rows, key=lambda r: r.label):
        groups.setdefault(str(r.label), []).append(r)
    if len(groups) > 1:
        groups["all"] = list(rows)
    for name, group in groups.items():
        dsc = np.array([r.dsc for r in group])
        nsd = np.array([r.nsd for r in group])
        lines.append(f"{name:>7} {len(group):>6} {dsc.mean():>9.4f} {np.median(dsc):>11.4f} "
                     f"{nsd.mean():>9.4f} {np.median(nsd):>11.4f}")
    return "\n".join(lines)
