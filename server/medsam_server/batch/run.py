"""Running a batch: the output folder's ledger, Ctrl-C, the local runner, the report.

``BatchLedger`` owns ``OUTDIR``: it decides which cases still have to run, records the
settings in ``batch.json``, and after every case rewrites ``results.csv`` and
``metrics.csv`` (temporary file, then rename), so the folder is consistent whenever the
batch stops. The local runner (here) and the Ray runner (``ray_runner.py``) both feed it.
"""

from __future__ import annotations

import csv
import json
import os
import secrets
import signal
import sys
import threading
import time
from collections.abc import Callable, Iterator
from contextlib import contextmanager
from dataclasses import dataclass, field
from pathlib import Path

import numpy as np

from ..engine import AXES
from ..io.prompts_file import load_prompts_file
from ..io.sequences import read_label_sequence, write_label_sequence
from ..io.volumes import Volume, read_volume, write_mask
from .cases import (
    DICOM_FORMATS,
    SETTINGS_FILE,
    BatchError,
    BatchSettings,
    Case,
    CaseOutcome,
    Interrupted,
    PreparedCase,
    output_path,
    prepare_case,
    segment_case,
)
from .evaluate import (
    LabelMetrics,
    read_metrics_csv,
    summary,
    volume_metrics,
    write_csv_atomic,
    write_metrics_csv,
)

RESULTS_COLUMNS = ("case", "status", "seconds", "slices_encoded", "message")


# ---- results.csv, metrics.csv, batch.json --------------------------------------------------


@dataclass
class _Row:
    case: str
    status: str  # ok | failed | skipped
    seconds: str = ""
    slices_encoded: str = ""
    message: str = ""


@dataclass
class BatchLedger:
    """The output folder's state: rows per case, rewritten atomically after each case."""

    out_dir: Path
    cases: list[Case]
    settings: BatchSettings
    rows: dict[str, _Row] = field(default_factory=dict)
    metrics: dict[str, list[LabelMetrics]] = field(default_factory=dict)
    failed: int = 0
    done: int = 0

    @property
    def has_references(self) -> bool:
        return any(c.reference is not None for c in self.cases)

    def plan(self) -> list[Case]:
        """Check the folder and its settings, take over earlier rows; the cases to run.

        Writes nothing (``start`` does), so a batch that cannot start leaves no trace.
        """
        if self.out_dir.exists() and not self.out_dir.is_dir():
            raise BatchError(f"{self.out_dir}: is a file, give a folder for the outputs")
        record = self.out_dir / SETTINGS_FILE
        wanted = self.settings.as_json()
        if record.is_file():
            try:
                earlier = json.loads(record.read_text())
            except ValueError as exc:
                raise BatchError(f"{record}: unreadable ({exc}); delete it to start over") \
                    from None
            # over both records' keys: a setting left out at its default (as_json) counts too
            changed = sorted(k for k in set(wanted) | set(earlier)
                             if earlier.get(k) != wanted.get(k))
            if changed:
                diff = ", ".join(f"{k}: {earlier.get(k)!r} then, {wanted.get(k)!r} now"
                                 for k in changed)
                raise BatchError(f"{self.out_dir} holds a batch made with other settings "
                                 f"({diff}); use another -o folder or the same settings")
        earlier_rows = _read_rows(self.out_dir / "results.csv")
        earlier_metrics = _read_metrics(self.out_dir / "metrics.csv")
        todo = []
        for case in self.cases:
            if output_path(self.out_dir, case.name, self.settings.format).is_file():
                old = earlier_rows.get(case.name)
                self.rows[case.name] = old if old and old.status == "ok" else _Row(
                    case.name, "skipped", message="output from an earlier run")
                if case.reference is not None:
                    self.metrics[case.name] = earlier_metrics.get(case.name) \
                        or self._score_existing(case)
            else:
                todo.append(case)
        return todo

    def start(self) -> None:
        """Create the folder, record the settings, write the rows taken over."""
        self.out_dir.mkdir(parents=True, exist_ok=True)
        _write_text_atomic(self.out_dir / SETTINGS_FILE,
                           json.dumps(self.settings.as_json(), indent=1) + "\n")
        self._write()

    def _score_existing(self, case: Case) -> list[LabelMetrics]:
        try:
            out = output_path(self.out_dir, case.name, self.settings.format)
            reference = read_volume(case.reference)  # type: ignore[arg-type]
            labels = self._labels(case, reference)
            return volume_metrics(case.name, read_output(out, self.settings.format, reference),
                                  reference, labels, self.settings.tolerance_mm,
                                  frames=self.settings.time)
        except ValueError as exc:  # user errors; recorded, the batch goes on
            self.rows[case.name].message = f"metrics: {exc}"
            return []

    def _labels(self, case: Case, reference: Volume) -> list[int]:
        if self.settings.boxes_from_reference:
            present = set(np.unique(reference.array).tolist()) - {0}
            wanted = self.settings.labels
            return sorted(present if wanted is None else present & set(wanted))
        return [s.label for s in load_prompts_file(case.prompts)]  # type: ignore[arg-type]

    def record_ok(self, case: Case, image: Volume, reference: Volume | None,
                  prepared: PreparedCase, outcome: CaseOutcome, seconds: float) -> None:
        """Score (if there is a reference), then write the output and the rows."""
        out = output_path(self.out_dir, case.name, self.settings.format)
        if reference is not None:  # first: a scoring error leaves no output behind
            result = Volume(outcome.labels, image.spacing, image.origin, image.direction,
                            str(out))
            self.metrics[case.name] = volume_metrics(
                case.name, result, reference, [s.label for s in prepared.specs],
                self.settings.tolerance_mm, frames=self.settings.time)
        notes = [f"{outcome.overlap} voxels were claimed by two objects; the first listed "
                 "kept them"] if outcome.overlap else []
        if self.settings.format in DICOM_FORMATS:
            notes += write_dicom_output(out, self.settings, case, image, prepared, outcome)
        elif self.settings.format == "seq.nrrd":  # as segment --time writes one
            write_label_sequence(out, outcome.labels, image,
                                 frame_time_ms=prepared.frame_time_ms)
        else:
            write_mask(out, outcome.labels, image,
                       segments=[(s.label, s.name, s.color) for s in prepared.specs])
        note = "; ".join(notes)
        self.rows[case.name] = _Row(case.name, "ok", f"{seconds:.2f}",
                                    str(outcome.slices_encoded), note)
        self.done += 1
        self._write()

    def record_failure(self, case: Case, exc: BaseException, seconds: float) -> str:
        message = str(exc) if isinstance(exc, ValueError) else f"{type(exc).__name__}: {exc}"
        message = " ".join(message.split())  # one line in the CSV
        self.rows[case.name] = _Row(case.name, "failed", f"{seconds:.2f}", "", message)
        self.metrics.pop(case.name, None)
        self.failed += 1
        self._write()
        return message

    def _write(self) -> None:
        order = [c.name for c in self.cases if c.name in self.rows]
        write_csv_atomic(self.out_dir / "results.csv", RESULTS_COLUMNS,
                         ([r.case, r.status, r.seconds, r.slices_encoded, r.message]
                          for r in (self.rows[n] for n in order)))
        if self.has_references:
            write_metrics_csv(self.out_dir / "metrics.csv",
                              [m for n in order for m in self.metrics.get(n, [])])

    def all_metrics(self) -> list[LabelMetrics]:
        return [m for c in self.cases for m in self.metrics.get(c.name, [])]


def _write_text_atomic(path: Path, text: str) -> None:
    tmp = path.parent / f".{secrets.token_hex(6)}-{path.name}"
    try:
        tmp.write_text(text)
        os.replace(tmp, path)
    finally:
        tmp.unlink(missing_ok=True)


def _read_rows(path: Path) -> dict[str, _Row]:
    if not path.is_file():
        return {}
    try:
        with open(path, newline="") as f:
            return {r["case"]: _Row(*(r[c] for c in RESULTS_COLUMNS)) for r in csv.DictReader(f)}
    except (KeyError, ValueError, csv.Error) as exc:
        raise BatchError(f"{path}: unreadable ({exc!r}); delete it to rebuild it") from None


def _read_metrics(path: Path) -> dict[str, list[LabelMetrics]]:
    if not path.is_file():
        return {}
    grouped: dict[str, list[LabelMetrics]] = {}
    try:
        rows = read_metrics_csv(path)
    except (KeyError, ValueError, csv.Error) as exc:
        raise BatchError(f"{path}: unreadable ({exc!r}); delete it to rebuild it") from None
    for m in rows:
        grouped.setdefault(m.case, []).append(m)
    return grouped


# ---- Ctrl-C --------------------------------------------------------------------------------


@contextmanager
def stop_on_sigint() -> Iterator[threading.Event]:
    """The first Ctrl-C sets the event (work stops at the next slice); a second one aborts."""
    stop = threading.Event()
    if threading.current_thread() is not threading.main_thread():
        yield stop  # signals reach only the main thread; nothing to install
        return

    def handler(signum: int, frame: object) -> None:
        stop.set()
        signal.signal(signal.SIGINT, signal.default_int_handler)
        print("\nmedsam-server: stopping after this slice (Ctrl-C again to abort)",
              file=sys.stderr)

    previous = signal.signal(signal.SIGINT, handler)
    try:
        yield stop
    finally:
        signal.signal(signal.SIGINT, previous)


# ---- the local runner ------------------------------------------------------------------------


def run_local(ledger: BatchLedger, todo: list[Case], engine_factory: Callable[[], object],
              *, quiet: bool = False) -> bool:
    """Run ``todo`` in this process on one engine; False if Ctrl-C stopped it."""
    from tqdm import tqdm

    engine = engine_factory() if todo else None  # a model that cannot load: nothing written
    ledger.start()
    settings = ledger.settings
    bar = None if quiet else tqdm(total=len(todo), unit="case", file=sys.stderr, desc="cases")
    with stop_on_sigint() as stop:
        try:
            for case in todo:
                if stop.is_set():
                    return False
                t0 = time.perf_counter()
                slices = None
                try:
                    image, reference, prepared = prepare_case(case, settings)
                    slices = None if quiet else tqdm(
                        total=_slice_total(prepared), unit="slice", file=sys.stderr,
                        desc=case.name, leave=False, position=1)

                    def progress(result: object, slices: object = slices) -> None:
                        if slices is not None:
                            slices.update(1)  # type: ignore[attr-defined]
                        if stop.is_set():
                            raise Interrupted

                    outcome = segment_case(engine, prepared, settings, progress)
                    ledger.record_ok(case, image, reference, prepared, outcome,
                                     time.perf_counter() - t0)
                except Interrupted:
                    _note(bar, f"{case.name}: interrupted, nothing written for it")
                    return False
                except Exception as exc:  # noqa: BLE001  (recorded; the batch goes on)
                    message = ledger.record_failure(case, exc, time.perf_counter() - t0)
                    _note(bar, f"{case.name}: failed: {message}")
                finally:
                    if slices is not None:
                        slices.close()
                if bar is not None:
                    bar.update(1)
        finally:
            if bar is not None:
                bar.close()
    return True


def _slice_total(prepared: PreparedCase) -> int:
    return sum(prepared.volume_u8.shape[AXES.index(s.axis)] for s in prepared.specs)


def _note(bar: object, text: str) -> None:
    if bar is not None:
        bar.write(text, file=sys.stderr)  # type: ignore[attr-defined]
    else:
        print(text, file=sys.stderr)


def report(ledger: BatchLedger, skipped: int, finished: bool) -> int:
    """Final lines on stderr (and the metrics summary on stdout); the exit status."""
    out = ledger.out_dir
    if finished:
        print(f"batch: {ledger.done} done, {ledger.failed} failed, {skipped} skipped "
              f"(already done); see {out / 'results.csv'}", file=sys.stderr)
    else:
        left = len(ledger.cases) - len(ledger.rows)
        print(f"medsam-server: interrupted: {ledger.done} done, {ledger.failed} failed, "
              f"{left} not run; run the same command again to resume", file=sys.stderr)
    rows = ledger.all_metrics()
    if finished and rows:
        print(summary(rows))
    if not finished:
        return 130
    return 1 if ledger.failed else 0


def write_dicom_output(out: Path, settings: BatchSettings, case: Case, image: Volume,
                       prepared: PreparedCase, outcome: CaseOutcome) -> list[str]:
    """A case's DICOM SEG or RTSTRUCT, referencing its series; the notes for results.csv."""
    from .. import __version__
    from ..io.dicom_seg import export_objects, write_seg
    from ..io.dicom_series import source_series
    from ..io.rtstruct import write_rtstruct

    objects, notes = export_objects(prepared.specs)
    writer = write_seg if settings.format == "dicom-seg" else write_rtstruct
    checkpoint = f"sha256 {settings.checkpoint_sha256[:16]}"
    return notes + writer(out, outcome.labels, source_series(case.image, image), objects,
                          version=__version__, checkpoint=checkpoint)


def read_output(out: Path, fmt: str, reference: Volume) -> Volume:
    """An earlier run's output as labels on the reference's grid (to score it again)."""
    if fmt == "rtstruct":
        raise ValueError(f"{out}: an RTSTRUCT's metrics are taken from metrics.csv; it has "
                         "none for this case (delete the output to run it again)")
    if fmt == "dicom-seg":
        from ..io.dicom_seg import read_seg

        return read_seg(out, reference)
    if fmt == "seq.nrrd":
        return read_label_sequence(out)
    return read_volume(out)
