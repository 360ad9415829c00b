"""What each route does, in protocol messages and without HTTP.

Requests are checked here so bad input fails at once with a reason instead of failing
later in a job. Checks that read an engine Session's objects (which the model worker
changes) run on the worker, as an urgent item the request waits for; model work then
goes to the same worker.

Every work item holds a ``Claim`` on its session (claims.py) from the moment the request
is accepted until the item has run (or was refused), in a ``try/finally``; a job holds
its own claim from the moment it exists, so a session closed at any point in between
(deleted, expired, lease lapsed, server shutting down) never stays pinned. A focus
(focus.py) is the exception: queued, it holds nothing; it claims one slice at a time.
"""

from __future__ import annotations

import dataclasses
import logging
import math
import threading
from collections.abc import Callable
from concurrent.futures import Future

import numpy as np
from medsam_client.protocol import (
    CAPABILITIES,
    MASK_DTYPES,
    PROTOCOL_VERSION,
    Deleted,
    ErrorBody,
    Focused,
    FocusRequest,
    Info,
    JobInfo,
    Lease,
    ObjectMask,
    PromptRequest,
    PropagateRequest,
    SessionInfo,
    SliceUpdate,
    Undone,
    VolumeMeta,
    available_encodings,
    crop_mask,
    decode_array,
)

from .. import __version__
from ..engine import Engine, PreprocessError, Prompt, PromptError, Session, SliceResult
from .config import ServiceConfig
from .errors import BadInput, ObjectNotFound, SessionGone, TooManyObjects, Unavailable, WrongState
from .focus import FocusWork
from .jobs import Job, JobStore
from .phases_axis import carry_object, check_phase, check_prompt_phase, key_slices, time_targets
from .sessions import ServiceSession, SessionRegistry
from .time_axis import engine_axis, wire_undone, wire_update
from .worker import ModelWorker

log = logging.getLogger(__name__)
MAX_OBJECT_ID = 2**31 - 1  # label values a segmentation can hold
# Masks in responses: zlib is in every Python, so any client can read them
RESPONSE_ENCODING = "zlib"


def _finite(x: float) -> float:
    return x if math.isfinite(x) else 0.0  # JSON has no NaN


def slice_update(result: SliceResult) -> SliceUpdate:
    return SliceUpdate(result.object_id, result.axis, result.index,  # type: ignore[arg-type]
                       _finite(result.iou), _finite(result.object_score),
                       crop_mask(result.mask, RESPONSE_ENCODING))


def prompt_from_request(req: PromptRequest, es: Session) -> Prompt:
    """The engine's Prompt for a request, checked against the slice it names."""
    if not 1 <= req.object_id <= MAX_OBJECT_ID:
        raise BadInput(f"object_id must be in 1..{MAX_OBJECT_ID}, got {req.object_id}")
    if any(len(p) != 2 for p in req.points):
        raise BadInput("each point must be [x, y]")
    mask = None
    if req.mask is not None:
        rows, cols = es.slice_shape(req.axis)
        mask = decode_array(req.mask, allowed_dtypes=MASK_DTYPES, max_bytes=rows * cols)
    prompt = Prompt(box=tuple(req.box) if req.box is not None else None,  # type: ignore[arg-type]
                    points=tuple((p[0], p[1]) for p in req.points),
                    labels=tuple(req.point_labels), mask=mask)
    return es.check_prompt(req.axis, req.index, prompt)


class Service:
    """The registry, the job store and the model worker, behind the routes."""

    def __init__(self, config: ServiceConfig, engine: Engine) -> None:
        self.config = config
        self.engine = engine
        self.sessions = SessionRegistry(engine, config)
        self.jobs = JobStore(config.job_keep_s)
        self.worker = ModelWorker()
        self._stop = threading.Event()
        self._sweeper = threading.Thread(target=self._sweep, name="medsam-sweeper", daemon=True)

    def start(self, worker_thread: bool = True) -> None:
        """Start the sweeper, and the model worker on its own thread unless the caller
        runs ``worker.run_here()`` itself."""
        if worker_thread:
            self.worker.start()
        self._sweeper.start()

    def close(self) -> None:
        self._stop.set()
        self.jobs.cancel_all()
        self.worker.stop()

    def _sweep(self) -> None:
        while not self._stop.wait(self.config.sweep_interval_s):
            try:
                self.sessions.expire()
                self.jobs.prune()
                self.sessions.enforce_budget()
            except Exception:  # keep sweeping; a bug here must not stop expiry
                log.exception("session sweeper failed")

    def info(self) -> Info:
        return Info(version=__version__, protocol=PROTOCOL_VERSION, model=self.config.model_name,
                    checkpoint_sha256=self.config.checkpoint_sha256,
                    device=str(self.engine.device), sessions=len(self.sessions),
                    jobs_queued=self.jobs.pending(), memory=self.sessions.memory(),
                    limits=self.config.limits(), encodings=list(available_encodings()),
                    capabilities=list(CAPABILITIES), replica=self.config.replica,
                    warm_start_s=self.config.warm_start_s, precision=self.engine.precision,
                    compiled=self.engine.compiled, kernels=self.engine.kernels)

    # ---- sessions ------------------------------------------------------------------
    def session_info(self, s: ServiceSession) -> SessionInfo:
        return self.sessions.session_info(s)

    def create_session(self, meta: VolumeMeta) -> SessionInfo:
        return self.session_info(self.sessions.create(meta))

    def upload(self, s: ServiceSession, body: bytes | bytearray, *,
               begun: bool = False) -> SessionInfo:
        self.sessions.upload(s, body, begun=begun)
        return self.session_info(s)

    def heartbeat(self, s: ServiceSession) -> Lease:
        return self.sessions.heartbeat(s)

    def delete_session(self, s: ServiceSession) -> Deleted:
        self.sessions.remove(s, "deleted by the client")  # cancels its job
        focus = self.worker.drop_idle(s.session_id)
        if isinstance(focus, FocusWork):
            focus.end("closed")
        return Deleted(s.session_id)

    def _ready(self, s: ServiceSession) -> Session:
        es = s.session
        if es is None:
            if s.closed:
                raise SessionGone(f"session {s.session_id} was closed")
            raise WrongState(f"session {s.session_id} has no volume yet; upload it first with "
                             f"PUT /sessions/{s.session_id}/volume")
        return es

    # ---- prompts and objects -------------------------------------------------------
    def prompt(self, s: ServiceSession, req: PromptRequest) -> Future:
        """Queue a prompt ahead of propagation work; the Future gives its SliceUpdate."""
        es = self._ready(s)
        check_prompt_phase(s.meta, req)  # 3D + time: on the key phase only
        req = dataclasses.replace(req, axis=engine_axis(s.meta, req.axis))
        prompt = prompt_from_request(req, es)

        def run() -> SliceUpdate:
            self._still_open(s)
            new = req.object_id not in es.object_ids
            if new and len(es.object_ids) >= self.config.max_objects:
                raise TooManyObjects(
                    f"session {s.session_id} holds its maximum of {self.config.max_objects} "
                    "objects; delete one (DELETE /sessions/{sid}/objects/{oid}) first")
            update = slice_update(es.add_prompt(req.object_id, req.axis, req.index, prompt))
            if new:  # a new mask volume: keep the sessions under the memory budget
                self.sessions.enforce_budget(protect=s)
            return wire_update(s.meta, update)

        return self._submit_claimed(s, run)

    def object_mask(self, s: ServiceSession, object_id: int,
                    phase: int | None = None) -> ObjectMask:
        """The object's mask; a 3D + time session's in ``phase``, or in all its phases."""
        check_phase(s.meta, phase, "the mask request")
        es = self._ready(s)
        self._require_object(s, es, object_id)
        try:
            mask = es.mask(object_id)
        except PromptError:  # deleted by another request since the check above
            self._require_object(s, es, object_id)
            raise
        if s.phases is not None:
            mask = s.phases.mask(object_id, mask, phase)
        return ObjectMask(object_id, crop_mask(mask, RESPONSE_ENCODING))

    def delete_object(self, s: ServiceSession, object_id: int) -> Future:
        es = self._ready(s)
        self._require_object(s, es, object_id)

        def run() -> Deleted:
            self._still_open(s)
            self._require_object(s, es, object_id)
            es.remove_object(object_id)
            if s.phases is not None:  # and what it carried to the other phases
                s.phases.drop_object(object_id)
            return Deleted(str(object_id))

        return self._submit_claimed(s, run)

    def undo(self, s: ServiceSession, object_id: int) -> Future:
        """Take back the object's last prompt (on the worker); the Future gives Undone."""
        es = self._ready(s)
        self._require_object(s, es, object_id)

        def run() -> Undone:
            self._still_open(s)
            self._require_object(s, es, object_id)
            if es.undo_left(object_id) == 0:
                raise WrongState(f"object {object_id} has no prompt left to undo (the last "
                                 f"{self.config.undo_depth} prompts of an object can be "
                                 "taken back)")
            report = es.undo(object_id)
            if report.object_removed and s.phases is not None:
                s.phases.drop_object(object_id)
            rows_cols = es.slice_shape(report.axis)
            updates = []
            for index in report.slices:
                if report.object_removed:
                    mask, scores = np.zeros(rows_cols, bool), None
                else:
                    mask = es.slice_mask(object_id, report.axis, index)
                    scores = es.slice_scores(object_id, report.axis, index)
                iou, score = scores if scores is not None else (0.0, 0.0)
                updates.append(SliceUpdate(object_id, report.axis, index,  # type: ignore[arg-type]
                                           _finite(iou), _finite(score),
                                           crop_mask(mask, RESPONSE_ENCODING)))
            log.info("session %s: object %d: undid the %s on slice %d (%d slices restored%s)",
                     s.session_id, object_id, report.kind, report.index, len(updates),
                     ", object removed" if report.object_removed else "")
            return wire_undone(s.meta, Undone(
                object_id, report.axis, report.index, report.kind,  # type: ignore[arg-type]
                report.object_removed, report.undo_left, updates))

        return self._submit_claimed(s, run)

    def _require_object(self, s: ServiceSession, es: Session, object_id: int) -> None:
        if object_id not in es.object_ids:
            raise ObjectNotFound(f"session {s.session_id} has no object {object_id}; its objects: "
                                 f"{es.object_ids}")

    @staticmethod
    def _still_open(s: ServiceSession) -> None:
        if s.closed:
            raise SessionGone(f"session {s.session_id} was closed")

    def _submit_claimed(self, s: ServiceSession, fn: Callable[[], object]) -> Future:
        """Claim ``s`` (refused at once if it is busy or closed), then run ``fn`` on the
        worker ahead of jobs; the claim is released whatever becomes of it."""
        claim = s.work.claim()

        def run() -> object:
            try:
                return fn()
            finally:
                claim.release()
                # idle counts from the end of the work (a slow prompt is not idle time)
                self.sessions.touch(s.session_id, client=False)

        try:
            return self.worker.submit(run, urgent=True, tag=s.session_id)
        except Unavailable:  # shutting down: give back what was claimed
            claim.release()
            raise

    # ---- focus (focus.py) ------------------------------------------------------------
    def focus(self, s: ServiceSession, req: FocusRequest) -> Focused:
        """Queue encoding around the slice the user looks at; answers at once."""
        work, replaced = self.start_focus(s, req)
        after = " after the session's propagation," if s.work.job_id is not None else ""
        return Focused(s.session_id, req.axis, req.index, replaced,
                       f"slice {req.index} along axis {req.axis}, then its neighbours, will be "
                       f"encoded{after} while the model has nothing else to do"
                       + ("; the session's earlier focus is dropped" if replaced else ""))

    def start_focus(self, s: ServiceSession, req: FocusRequest) -> tuple[FocusWork, bool]:
        """Check the request, make its FocusWork the session's idle work; (work, whether
        it replaced an earlier focus)."""
        es = self._ready(s)
        self._still_open(s)
        req = dataclasses.replace(req, axis=engine_axis(s.meta, req.axis))
        if req.axis not in ("k", "j", "i"):
            raise BadInput(f"axis must be k, j or i, not {req.axis!r}")
        n = es.num_slices(req.axis)
        if isinstance(req.index, bool) or not isinstance(req.index, int) \
                or not 0 <= req.index < n:
            raise BadInput(f"slice index {req.index} is outside 0..{n - 1} along axis "
                           f"{req.axis} of session {s.session_id}")
        work = FocusWork(s, req.axis, req.index, n, self._memory_room)
        old = self.worker.set_idle(s.session_id, work)
        if isinstance(old, FocusWork):
            old.end("replaced")
        return work, old is not None

    def _memory_room(self) -> int:
        """Bytes left under the server's memory budget (focus never goes past it)."""
        return self.config.memory_budget_bytes - self.sessions.memory()["total"]

    # ---- propagation ---------------------------------------------------------------
    def propagate(self, s: ServiceSession, req: PropagateRequest) -> Future:
        """Plan the job on the worker (the engine Session's objects are the worker's),
        then queue it; the Future gives its JobInfo, or the reason it was refused."""
        es = self._ready(s)
        along_t = s.phases is not None and req.axis == "t"  # to a 3D + time session's phases
        if not along_t:
            req = dataclasses.replace(req, axis=engine_axis(s.meta, req.axis))
        if not req.object_ids:
            raise BadInput("object_ids is empty: name the objects to propagate")
        if len(set(req.object_ids)) != len(req.object_ids):
            raise BadInput(f"object_ids {req.object_ids} names an object twice")
        if not math.isfinite(req.converge_iou):
            raise BadInput("converge_iou must be a finite number")

        def plan() -> JobInfo:  # on the worker, holding the plan's own claim
            self._still_open(s)
            axes, total = self._plan_time(s, es, req) if along_t else self._plan(s, es, req)
            job = self.jobs.new(s.session_id, req, axes, total)
            s.work.claim_job(job)  # busy or closed: refused, and the job never existed
            # from here on the job releases its own claim when it ends or is cancelled
            self.jobs.add(job)
            try:
                self.worker.submit(lambda: self._run_job(s, es, job, along_t), urgent=False,
                                   tag=s.session_id)
            except Unavailable:  # shutting down: this job never runs
                job.cancel()  # releases its claim
                self.jobs.discard(job.job_id)
                raise
            log.info("session %s: job %s propagates objects %s (%d slices at most)",
                     s.session_id, job.job_id, req.object_ids, total)
            return job.info()

        # refused at once if the session is busy with a job
        return self._submit_claimed(s, plan)

    def _plan(self, s: ServiceSession, es: Session, req: PropagateRequest
              ) -> tuple[dict[int, str], int]:
        """On the worker: the engine's plan for each object (PromptError: a 400)."""
        axes: dict[int, str] = {}
        total = 0
        for oid in req.object_ids:
            self._require_object(s, es, oid)
            plan = es.plan_propagation(oid, req.axis, direction=req.direction, start=req.start,
                                       first=req.first, last=req.last,
                                       stop_after_empty=req.stop_after_empty)
            axes[oid] = plan.axis
            total += plan.max_slices
        return axes, total

    def _plan_time(self, s: ServiceSession, es: Session, req: PropagateRequest
                   ) -> tuple[dict[int, str], int]:
        """On the worker: a 3D + time propagation along t (phases_axis; BadInput: a 400).
        At most one update per (phase reached, slice holding the object in the key phase)."""
        assert s.phases is not None
        targets = time_targets(s.phases, req)
        total = 0
        for oid in req.object_ids:
            self._require_object(s, es, oid)
            total += len(targets) * len(key_slices(es.mask(oid), oid))
        return dict.fromkeys(req.object_ids, "t"), total

    def _run_job(self, s: ServiceSession, es: Session, job: Job, along_t: bool = False) -> None:
        """On the worker thread: the objects one after the other, updates as they come."""
        if not job.start():
            return  # cancelled while queued; already released
        req = job.request

        def send(update: SliceUpdate) -> None:
            job.add_update(update)
            # server-side work: keeps the session from idling, never renews the lease
            self.sessions.touch(s.session_id, client=False)
            self.worker.run_urgent(skip_tag=s.session_id)  # other users' prompts go first

        def progress(result: SliceResult) -> None:
            send(wire_update(s.meta, slice_update(result)))

        def carried(phase: int, z: int, result: SliceResult) -> None:  # slice z of a phase
            send(dataclasses.replace(slice_update(result), axis="k", index=z, phase=phase))

        try:
            cancelled = False
            for oid in req.object_ids:
                if job.cancel_event.is_set():
                    cancelled = True
                elif along_t:
                    assert s.phases is not None
                    cancelled = carry_object(es, s.phases, oid, req, carried, job.cancel_event)
                else:
                    cancelled = es.propagate(
                        oid, job.axes[oid], direction=req.direction, start=req.start,
                        first=req.first, last=req.last, stop_after_empty=req.stop_after_empty,
                        converge_iou=req.converge_iou, progress=progress,
                        cancel=job.cancel_event).cancelled
                if cancelled:
                    break
            job.finish("cancelled" if cancelled else "done")
        except (PromptError, PreprocessError, BadInput) as exc:
            job.finish("failed", ErrorBody("bad_input", str(exc)))
        except Exception:
            log.exception("job %s failed", job.job_id)
            job.finish("failed", ErrorBody("internal", "propagation failed on the server; "
                                                       "its log has the details"))
        finally:
            job.release()  # idempotent: finish() released already unless it raised
            self.sessions.touch(s.session_id, client=False)
            self.sessions.enforce_budget()
