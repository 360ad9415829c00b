"""``medsam-server batch``: what a case is, from a manifest row to a label volume.

Each case runs what ``segment`` runs (``pipeline.segment_objects`` on a ``Session`` of
one ``Engine``, loaded once per process or Ray actor). ``prepare_case`` (read, check,
derive the objects, preprocess) runs in the driving process; ``segment_case`` runs where
the engine is, here or on a Ray actor, so both runners segment a case the same way.
Running a batch (``OUTDIR``, resuming, Ctrl-C) is ``run.py``.
"""

from __future__ import annotations

import csv
import re
import time
import zlib
from collections.abc import Callable, Sequence
from dataclasses import asdict, dataclass
from pathlib import Path

import numpy as np

from ..engine import (
    AXES,
    DEFAULT_COLORS,
    ObjectSpec,
    Prompt,
    PromptError,
    check_slice_prompt,
    window_to_uint8,
)
from ..io.dicom_series import NOT_A_SERIES
from ..io.frames import check_frame_prompt, frames_u8, read_frames
from ..io.prompts_file import load_prompts_file
from ..io.volumes import Volume, VolumeError, read_volume
from .evaluate import check_same_grid, label_array

# A case name is also a file name.
_SAFE_CASE = re.compile(r"^[A-Za-z0-9][A-Za-z0-9._-]*$")
FORMATS = ("seg.nrrd", "nii.gz", "seq.nrrd", "dicom-seg", "rtstruct")
DICOM_FORMATS = {"dicom-seg": "seg.dcm", "rtstruct": "rtstruct.dcm"}  # format -> file suffix
SETTINGS_FILE = "batch.json"


class BatchError(ValueError):
    """A batch that cannot start (manifest, options, output folder); nothing is written."""


class Interrupted(Exception):
    """Ctrl-C was pressed: raised between two slices, the case in hand is dropped."""


@dataclass(frozen=True)
class Case:
    name: str
    image: Path
    prompts: Path | None = None
    reference: Path | None = None


@dataclass(frozen=True)
class BatchSettings:
    """What shapes the outputs; recorded in ``batch.json`` (device and threads do not)."""

    checkpoint_sha256: str
    format: str = "seg.nrrd"
    axis: str = "k"
    modality: str = "ct"
    window: tuple[float, float] | None = None
    recipe: str = "box"
    lcc: bool = True
    stop_after_empty: int = 0
    boxes_from_reference: bool = False
    box_jitter: int = 0
    seed: int = 0
    labels: tuple[int, ...] | None = None
    tolerance_mm: float = 2.0
    # as asked (auto/fp32/bf16): fp32 and bf16 masks differ on a few edge voxels
    precision: str = "auto"
    # --label-table: reference label -> structure name (names the objects of reference boxes)
    label_names: tuple[tuple[int, str], ...] | None = None
    direction: str = "both"  # --direction: both ways from the key slice, or one
    time: bool = False  # --time: every case is 2D + time, its frames along k

    def as_json(self) -> dict:
        data = asdict(self)
        for key, default in (("direction", "both"), ("time", False)):
            if data[key] == default:  # added later: a folder recorded before them resumes
                del data[key]
        for key in ("window", "labels", "label_names"):
            data[key] = None if data[key] is None else [
                list(v) if isinstance(v, tuple) else v for v in data[key]]
        return data


@dataclass
class PreparedCase:
    """What a worker needs for one case (picklable: it travels to Ray actors)."""

    name: str
    volume_u8: np.ndarray  # (k, j, i), or (frames, rows, columns, 3) RGB with --time
    specs: list[ObjectSpec]
    frame_time_ms: float | None = None  # --time: what a .seq.nrrd names its frames by


@dataclass
class CaseOutcome:
    labels: np.ndarray  # uint8 (k, j, i)
    overlap: int
    slices_encoded: int
    seconds: float


# ---- manifest ------------------------------------------------------------------------


def read_manifest(path: str | Path, *, boxes_from_reference: bool) -> list[Case]:
    """Cases of a CSV with a header: ``case,image`` and ``prompts`` and/or ``reference``.

    Relative paths are taken from the manifest's folder. Problems of the manifest itself
    raise ``BatchError``; a file that is missing or unreadable fails only its case later.
    """
    manifest = Path(path)
    try:
        with open(manifest, newline="", encoding="utf-8-sig") as f:
            table = [[cell.strip() for cell in row] for row in csv.reader(f)]
    except (OSError, UnicodeDecodeError, csv.Error) as exc:
        raise BatchError(f"cannot read manifest {manifest}: {exc}") from None
    columns = table[0] if table else []
    raw = []
    for line, cells in enumerate(table[1:], start=2):
        if len(cells) > len(columns):
            raise BatchError(f"{manifest}: line {line} has {len(cells)} cells but the header "
                             f"has {len(columns)} columns")
        raw.append((line, dict(zip(columns, cells + [""] * (len(columns) - len(cells)),
                                   strict=True))))
    missing = [c for c in ("case", "image") if c not in columns]
    if missing:
        raise BatchError(f"{manifest}: needs a header with columns case,image and prompts or "
                         f"reference; missing {', '.join(missing)} (found {columns})")
    has_prompts, has_reference = "prompts" in columns, "reference" in columns
    if boxes_from_reference and not has_reference:
        raise BatchError(f"{manifest}: --boxes-from-reference needs a 'reference' column")
    if boxes_from_reference and has_prompts:
        raise BatchError(f"{manifest}: has a 'prompts' column and --boxes-from-reference was "
                         "given; use one source of prompts")
    if not boxes_from_reference and not has_prompts:
        raise BatchError(f"{manifest}: needs a 'prompts' column (prompts JSON per case), or a "
                         "'reference' column with --boxes-from-reference")
    base = manifest.parent
    cases: list[Case] = []
    seen: set[str] = set()
    for line, row in raw:
        if not any(row.values()):
            continue  # blank line
        where = f"{manifest}: line {line}"
        name = row.get("case", "")
        if not _SAFE_CASE.match(name):
            raise BatchError(f"{where}: case name {name!r} must start with a letter or digit "
                             "and hold only letters, digits, '.', '_' and '-' (it names the "
                             "output file)")
        if name in seen:
            raise BatchError(f"{where}: case {name!r} is listed twice")
        seen.add(name)
        image, prompts, reference = (row.get(c, "") for c in ("image", "prompts", "reference"))
        if not image:
            raise BatchError(f"{where}: case {name!r} has no image")
        if has_prompts and not prompts:
            raise BatchError(f"{where}: case {name!r} has no prompts file")
        if boxes_from_reference and not reference:
            raise BatchError(f"{where}: case {name!r} has no reference")
        cases.append(Case(name, base / image, base / prompts if prompts else None,
                          base / reference if reference else None))
    if not cases:
        raise BatchError(f"{manifest}: lists no cases")
    return cases


# ---- boxes from a reference mask ---------------------------------------------------------


def reference_boxes(reference: np.ndarray, axis: str, labels: Sequence[int] | None,
                    jitter: int, seed: int, case: str,
                    names: dict[int, str] | None = None) -> list[ObjectSpec]:
    """One box per reference label, as MedSAM2's evaluations derive them.

    For each label (or those of ``labels`` present): the slice along ``axis`` where it has
    the largest area (the first such slice on ties), and on it the label's bounding box
    (x0, y0, x1, y1) = (min column, min row, max column, max row), grown on every side by
    one shift drawn from 0..``jitter`` and clipped to the slice (MedSAM2's
    ``mask2D_to_bbox``). The shift is drawn from (seed, case, label), so a case gets the
    same boxes in any order, process or run.
    """
    if axis not in AXES:
        raise PromptError(f"unknown axis {axis!r}: use k, j or i")
    ax = AXES.index(axis)
    present = sorted(set(np.unique(reference).tolist()) - {0})
    chosen = present if labels is None else [v for v in labels if v in present]
    if not chosen:
        wanted = "any label" if labels is None else f"labels {list(labels)}"
        raise PromptError(f"the reference holds no {wanted} to draw a box from")
    too_big = [v for v in chosen if v > 255]
    if too_big:
        raise PromptError(f"reference labels {too_big} cannot be output labels (1..255); "
                          "choose others with --labels")
    from scipy import ndimage

    boxes = ndimage.find_objects(reference, max_label=max(chosen))
    specs = []
    for n, label in enumerate(chosen):
        region = boxes[label - 1]
        sub = reference[region] == label
        others = tuple(a for a in range(3) if a != ax)
        best = int(np.argmax(sub.sum(axis=others)))
        index = region[ax].start + best
        rows, cols = (np.flatnonzero(np.take(sub, best, axis=ax).any(axis=a)) for a in (1, 0))
        r_off, c_off = (region[a].start for a in others)
        n_rows, n_cols = (reference.shape[a] for a in others)
        rng = np.random.default_rng([seed, zlib.crc32(case.encode()), label])
        shift = int(rng.integers(0, jitter + 1)) if jitter else 0
        box = (max(0, c_off + int(cols[0]) - shift), max(0, r_off + int(rows[0]) - shift),
               min(n_cols - 1, c_off + int(cols[-1]) + shift),
               min(n_rows - 1, r_off + int(rows[-1]) + shift))
        name = (names or {}).get(int(label), f"label_{label}")
        specs.append(ObjectSpec(int(label), name, axis, index,
                                Prompt(box=tuple(float(v) for v in box)),
                                DEFAULT_COLORS[n % len(DEFAULT_COLORS)]))
    return specs


# ---- one case -------------------------------------------------------------------------


def prepare_case(case: Case, settings: BatchSettings
                 ) -> tuple[Volume, Volume | None, PreparedCase]:
    """Read and check a case, derive its objects, preprocess its volume (driver side).

    With ``settings.time`` the image is read as ``segment --time`` reads it (``read_frames``)
    and the returned Volume is the frames' grid, the one its labels are written on.
    """
    if settings.format in DICOM_FORMATS and not Path(case.image).is_dir():
        raise VolumeError(f"{case.image}: {NOT_A_SERIES}")
    frames = read_frames(case.image) if settings.time else None
    image = frames.grid if frames is not None else read_volume(case.image)
    reference = None
    if case.reference is not None:
        reference = read_volume(case.reference)
        check_same_grid(image, reference)
    if settings.boxes_from_reference:
        assert reference is not None
        specs = reference_boxes(label_array(reference, "reference"), settings.axis,
                                settings.labels, settings.box_jitter, settings.seed, case.name,
                                dict(settings.label_names or ()))
    else:
        assert case.prompts is not None
        specs = load_prompts_file(case.prompts)
    for spec in specs:
        try:
            if frames is not None:
                check_frame_prompt(frames.pixels.shape, spec)
            else:
                check_slice_prompt(image.array.shape, spec.axis, spec.slice, spec.prompt)
        except PromptError as exc:
            raise PromptError(f"object {spec.label} ({spec.name}): {exc}") from None
    if frames is not None:
        return image, reference, PreparedCase(
            case.name, frames_u8(frames, settings.modality, settings.window), specs,
            frames.frame_time_ms)
    volume_u8 = window_to_uint8(image.array, settings.modality, settings.window)  # type: ignore[arg-type]
    return image, reference, PreparedCase(case.name, volume_u8, specs)


def segment_case(engine: object, prepared: PreparedCase, settings: BatchSettings,
                 progress: Callable[[object], None] | None = None) -> CaseOutcome:
    """Segment one prepared case on ``engine``: the same code runs locally and on Ray."""
    from ..engine import Session, segment_objects

    t0 = time.perf_counter()
    before = engine.encoder_calls  # type: ignore[attr-defined]
    session = Session(engine, prepared.volume_u8)  # type: ignore[arg-type]
    labels, overlap = segment_objects(session, prepared.specs, recipe=settings.recipe,  # type: ignore[arg-type]
                                      lcc=settings.lcc,
                                      stop_after_empty=settings.stop_after_empty,
                                      direction=settings.direction, progress=progress)
    return CaseOutcome(labels, overlap, engine.encoder_calls - before,  # type: ignore[attr-defined]
                       time.perf_counter() - t0)


def output_path(out_dir: Path, case: str, fmt: str) -> Path:
    return out_dir / f"{case}.{DICOM_FORMATS.get(fmt, fmt)}"


def read_label_table(path: str | Path) -> tuple[tuple[int, str], ...]:
    """``label<TAB>name`` rows under a header (TotalSegmentator's ``labels_total.tsv``)."""
    try:
        lines = Path(path).read_text().splitlines()
    except OSError as exc:
        raise BatchError(f"--label-table {path}: {exc}") from None
    names: dict[int, str] = {}
    for n, line in enumerate(lines[1:], start=2):
        if not line.strip():
            continue
        parts = line.split("\t")
        try:
            label, name = int(parts[0]), parts[1].strip()
        except (IndexError, ValueError):
            raise BatchError(f"--label-table {path}: line {n} is not 'label<TAB>name'") from None
        if not name or label in names:
            raise BatchError(f"--label-table {path}: line {n}: empty or repeated label {label}")
        names[label] = name
    if not names:
        raise BatchError(f"--label-table {path}: no rows under the header")
    return tuple(sorted(names.items()))
