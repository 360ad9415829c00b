"""``medsam-server batch --ray``: the cases of a batch on a Ray cluster (or a local Ray).

One long-lived actor per worker slot holds an ``Engine`` (the model is loaded once per
actor, not per case). The driver, this process, does everything else exactly as the
local runner does (``batch.prepare_case`` reads, checks and preprocesses a case;
``run.BatchLedger`` writes the output, results and metrics), and streams the
prepared cases to whichever actor is free. Actors run ``batch.segment_case``, the local
runner's code, so with the same device and thread count the outputs are identical to a
local run.

Workers need no shared file system: the checkpoint travels once through Ray's object
store, volumes go out preprocessed (uint8) and label volumes come back. Every node needs
the same Python environment (``medsam-server``, torch, sam2).

Ray is imported only here, and this module only for ``--ray``.
"""

from __future__ import annotations

import logging
import math
import os
import re
import socket
import sys
import tempfile
import time
from dataclasses import dataclass
from pathlib import Path

import ray

from .cases import (
    BatchError,
    BatchSettings,
    Case,
    CaseOutcome,
    PreparedCase,
    prepare_case,
    segment_case,
)
from .run import BatchLedger, _note, stop_on_sigint


@dataclass(frozen=True)
class RayOptions:
    address: str | None  # None: $RAY_ADDRESS if set, else a new local Ray
    workers: int | None  # None: as many as the cluster's CPUs/GPUs fit now
    cpus_per_worker: float = 1.0
    gpus_per_worker: float = 0.0
    device: str = "auto"
    threads: int | None = None  # torch threads per actor; default: its CPUs
    precision: str = "auto"


class CaseWorker:
    """A Ray actor: one engine for its whole life, one case at a time."""

    def __init__(self, checkpoint: bytes, device: str, threads: int,
                 precision: str = "auto") -> None:
        from ..engine import Engine

        # torch.load wants a file; a private copy on the worker's own disk
        with tempfile.TemporaryDirectory(prefix="medsam-ckpt-") as tmp:
            path = Path(tmp) / "checkpoint.pt"
            path.write_bytes(checkpoint)
            self.engine = Engine.from_checkpoint(path, device, threads, precision=precision)

    def device(self) -> str:
        return str(self.engine.device)

    def precision(self) -> str:
        return self.engine.precision

    def segment(self, prepared: PreparedCase, settings: BatchSettings) -> CaseOutcome:
        return segment_case(self.engine, prepared, settings)


def run_on_ray(ledger: BatchLedger, todo: list[Case], checkpoint: Path, options: RayOptions,
               *, quiet: bool = False) -> bool:
    """Run ``todo`` on Ray actors; False if Ctrl-C stopped it."""
    if not todo:
        ledger.start()
        return True
    _connect(options.address)
    try:
        return _run(ledger, todo, checkpoint, options, quiet)
    finally:
        ray.shutdown()  # a local Ray stops; on a cluster our actors end with the job


def _connect(address: str | None) -> None:
    kwargs: dict = {"logging_level": logging.WARNING, "log_to_driver": False}
    _check_reachable(address or _env_address())
    if address is None and not _env_address():
        kwargs["include_dashboard"] = False  # a local Ray: no dashboard to serve
    try:
        ray.init(address=address, **kwargs)
    except (ConnectionError, RuntimeError, ValueError) as exc:
        where = address or _env_address() or "a new local Ray"
        raise BatchError(f"cannot start or reach Ray at {where}: {exc}") from None


def _env_address() -> str | None:
    return os.environ.get("RAY_ADDRESS") or None


def _check_reachable(address: str | None, timeout: float = 5.0) -> None:
    """Fail fast on a HOST:PORT nobody answers at: Ray itself retries for minutes."""
    match = re.fullmatch(r"(?:ray://)?\[?([\w.:-]+?)\]?:(\d+)", address or "")
    if match is None:  # no address, "auto", "local": Ray finds (or starts) the cluster
        return
    try:
        socket.create_connection((match[1], int(match[2])), timeout=timeout).close()
    except OSError as exc:
        raise BatchError(f"cannot reach Ray at {address}: {exc} (is the cluster up, and the "
                         "address its head's GCS HOST:6379 or ray://HOST:10001?)") from None


def worker_count(options: RayOptions, resources: dict[str, float], cases: int) -> int:
    """Actors to start: ``--workers``, else as many slots as the cluster has now."""
    if options.workers is not None:
        return min(options.workers, cases)
    slots = math.floor(resources.get("CPU", 0.0) / options.cpus_per_worker + 1e-9) \
        if options.cpus_per_worker > 0 else cases
    if options.gpus_per_worker > 0:
        slots = min(slots, math.floor(resources.get("GPU", 0.0) / options.gpus_per_worker
                                      + 1e-9))
    if slots < 1:
        raise BatchError(
            f"the Ray cluster has {resources.get('CPU', 0):g} CPUs and "
            f"{resources.get('GPU', 0):g} GPUs: no worker of {options.cpus_per_worker:g} CPUs "
            f"and {options.gpus_per_worker:g} GPUs fits; lower --cpus-per-worker/"
            "--gpus-per-worker or give --workers N to wait for the resources")
    return min(slots, cases)


def _run(ledger: BatchLedger, todo: list[Case], checkpoint: Path, options: RayOptions,
         quiet: bool) -> bool:
    from tqdm import tqdm

    n = worker_count(options, ray.cluster_resources(), len(todo))
    threads = options.threads or max(1, int(options.cpus_per_worker))
    actor_class = ray.remote(CaseWorker).options(num_cpus=options.cpus_per_worker,
                                                 num_gpus=options.gpus_per_worker)
    weights = ray.put(checkpoint.read_bytes())
    actors = [actor_class.remote(weights, options.device, threads, options.precision)
              for _ in range(n)]
    try:  # a checkpoint or environment problem shows here, before any case runs
        devices = ray.get([a.device.remote() for a in actors])
        precisions = ray.get([a.precision.remote() for a in actors])
    except ray.exceptions.RayError as exc:
        raise BatchError(f"Ray workers could not load the model: {_cause(exc)}") from None
    ledger.start()  # only now: a batch that cannot start leaves nothing behind
    print(f"ray: {n} worker(s) on {', '.join(sorted(set(devices)))}, {threads} thread(s) each, "
          f"in {', '.join(sorted(set(precisions)))}", file=sys.stderr)

    bar = None if quiet else tqdm(total=len(todo), unit="case", file=sys.stderr, desc="cases")
    pending = list(todo)
    free = list(actors)
    running: dict = {}  # ObjectRef -> (actor, case, image, reference, prepared, driver s)
    with stop_on_sigint() as stop:
        try:
            while pending or running:
                while free and pending and not stop.is_set():
                    case = pending.pop(0)
                    t0 = time.perf_counter()
                    try:
                        image, reference, prepared = prepare_case(case, ledger.settings)
                    except Exception as exc:  # noqa: BLE001  (recorded; the batch goes on)
                        message = ledger.record_failure(case, exc, time.perf_counter() - t0)
                        _note(bar, f"{case.name}: failed: {message}")
                        _tick(bar)
                        continue
                    actor = free.pop()
                    ref = actor.segment.remote(prepared, ledger.settings)
                    running[ref] = (actor, case, image, reference, prepared,
                                    time.perf_counter() - t0)
                if stop.is_set():
                    return False  # running cases are dropped with the actors: no output
                if not running:
                    continue
                # a short wait, so Ctrl-C is seen within a fraction of a second
                ready, _ = ray.wait(list(running), num_returns=1, timeout=0.2)
                for ref in ready:
                    actor, case, image, reference, prepared, spent = running.pop(ref)
                    _finish(ledger, ref, actor, case, image, reference, prepared, spent,
                            free, actor_class, weights, options, threads, bar)
                    _tick(bar)
        finally:
            if bar is not None:
                bar.close()
    return True


def _finish(ledger: BatchLedger, ref: object, actor: object, case: Case, image: object,
            reference: object, prepared: PreparedCase, spent: float, free: list,
            actor_class: object, weights: object, options: RayOptions, threads: int,
            bar: object) -> None:
    t0 = time.perf_counter()
    try:
        outcome: CaseOutcome = ray.get(ref)
    except ray.exceptions.RayActorError as exc:
        # the worker died (e.g. out of memory): record the case, start a fresh worker
        free.append(actor_class.remote(weights, options.device, threads, options.precision))  # type: ignore[attr-defined]
        message = ledger.record_failure(case, RuntimeError(f"Ray worker died: {_cause(exc)}"),
                                        spent)
        _note(bar, f"{case.name}: failed: {message}")
        return
    except ray.exceptions.RayTaskError as exc:
        free.append(actor)
        cause = exc.cause if isinstance(exc.cause, Exception) else RuntimeError(_cause(exc))
        message = ledger.record_failure(case, cause, spent)
        _note(bar, f"{case.name}: failed: {message}")
        return
    free.append(actor)
    try:
        ledger.record_ok(case, image, reference, prepared, outcome,  # type: ignore[arg-type]
                         spent + outcome.seconds + time.perf_counter() - t0)
    except Exception as exc:  # noqa: BLE001  (recorded; the batch goes on)
        message = ledger.record_failure(case, exc, spent + outcome.seconds)
        _note(bar, f"{case.name}: failed: {message}")


def _tick(bar: object) -> None:
    if bar is not None:
        bar.update(1)  # type: ignore[attr-defined]


def _cause(exc: BaseException) -> str:
    cause = getattr(exc, "cause", None)
    text = str(cause) if cause is not None else str(exc)
    lines = [ln.strip() for ln in text.splitlines() if ln.strip()]
    return lines[-1] if lines else type(exc).__name__
