"""Propagation jobs: state, per-slice updates, cancellation and long polls.

A job's state goes queued → running → done | cancelled | failed. The model worker
appends one ``SliceUpdate`` per finished slice; readers take ``updates[since:]`` and
may wait (asynchronously, no thread held) until there is something new.

A job id is ``<session id>.<token>``: a proxy routes ``/jobs/{jid}`` by the same key as
the session's own routes (see sessions.new_session_id). A job holds its session through
a ``Claim`` given when it becomes the session's job (claims.SessionWork.claim_job).
"""

from __future__ import annotations

import asyncio
import logging
import secrets
import threading
import time
from dataclasses import dataclass, field

from medsam_client.protocol import ErrorBody, JobInfo, PropagateRequest, SliceUpdate

from .claims import Claim
from .errors import BadInput, JobGone

log = logging.getLogger(__name__)
FINISHED = ("done", "cancelled", "failed")


@dataclass(eq=False)
class Job:
    job_id: str
    session_id: str
    request: PropagateRequest
    axes: dict[int, str]  # object id → axis it propagates along
    total_slices: int
    state: str = "queued"
    updates: list[SliceUpdate] = field(default_factory=list)
    error: ErrorBody | None = None
    finished_at: float | None = None
    cancel_event: threading.Event = field(default_factory=threading.Event)
    # its hold on the session, released once when the job ends (or is cancelled in queue)
    claim: Claim | None = None
    _lock: threading.Lock = field(default_factory=threading.Lock)
    _waiters: list[tuple[asyncio.AbstractEventLoop, asyncio.Event]] = field(default_factory=list)

    def attach_claim(self, claim: Claim) -> None:
        """Called by SessionWork.claim_job, before anyone else can see the job."""
        self.claim = claim

    # ---- called by the worker ------------------------------------------------------
    def start(self) -> bool:
        """queued → running; False if it was cancelled while queued."""
        with self._lock:
            if self.state != "queued":
                return False
            self.state = "running"
            self._notify()
            return True

    def add_update(self, update: SliceUpdate) -> None:
        with self._lock:
            self.updates.append(update)
            self._notify()

    def finish(self, state: str, error: ErrorBody | None = None) -> None:
        with self._lock:
            if self.state not in FINISHED:
                self._end(state, error)

    def release(self) -> None:
        with self._lock:
            self._release()

    def _end(self, state: str, error: ErrorBody | None) -> None:  # with self._lock held
        # free the session before anyone can see the job ended, so a client that polled
        # "done" can prompt at once (lock order job → registry, never the reverse)
        self._release()
        self.state = state
        self.error = error
        self.finished_at = time.monotonic()
        self._notify()

    def _release(self) -> None:  # with self._lock held
        if self.claim is not None:
            self.claim.release()  # idempotent

    # ---- called by request handlers ------------------------------------------------
    def cancel(self) -> None:
        self.cancel_event.set()
        with self._lock:
            if self.state == "queued":  # the worker will skip it: end it now
                self._end("cancelled", None)

    def info(self, since: int = 0) -> JobInfo:
        with self._lock:
            n = len(self.updates)
            if not 0 <= since <= n:
                raise BadInput(f"since={since} is past the {n} updates of job {self.job_id}")
            return JobInfo(self.job_id, self.session_id, self.state,  # type: ignore[arg-type]
                           done_slices=n, total_slices=max(self.total_slices, n),
                           updates=self.updates[since:], next_since=n, error=self.error)

    async def wait(self, since: int, timeout: float) -> None:
        """Return when there are updates past ``since``, the job has ended, or at timeout."""
        if timeout <= 0:
            return
        loop = asyncio.get_running_loop()
        event = asyncio.Event()
        with self._lock:
            if len(self.updates) > since or self.state in FINISHED:
                return
            waiter = (loop, event)
            self._waiters.append(waiter)
        try:
            await asyncio.wait_for(event.wait(), timeout)
        except asyncio.TimeoutError:
            pass
        finally:
            with self._lock:
                self._waiters.remove(waiter)

    def _notify(self) -> None:  # with self._lock held
        for loop, event in self._waiters:
            try:
                loop.call_soon_threadsafe(event.set)
            except RuntimeError:  # that loop is closed: nobody is waiting there any more
                pass


class JobStore:
    def __init__(self, keep_s: float) -> None:
        self.keep_s = keep_s
        self._jobs: dict[str, Job] = {}
        self._lock = threading.Lock()

    @staticmethod
    def new(session_id: str, request: PropagateRequest, axes: dict[int, str],
            total_slices: int) -> Job:
        """A job not yet known to anyone: claim its session, then ``add`` it."""
        return Job(f"{session_id}.{secrets.token_urlsafe(9)}", session_id, request, axes,
                   total_slices)

    def add(self, job: Job) -> None:
        with self._lock:
            self._jobs[job.job_id] = job

    def discard(self, job_id: str) -> None:
        with self._lock:
            self._jobs.pop(job_id, None)

    def get(self, job_id: str) -> Job:
        with self._lock:
            job = self._jobs.get(job_id)
        if job is None:
            raise JobGone(f"unknown job {job_id!r} (finished jobs are kept "
                              f"{self.keep_s:g} s); start a new one with POST .../propagate")
        return job

    def pending(self) -> int:
        """Jobs queued or running (``Info.jobs_queued``: the work ahead of a new job)."""
        with self._lock:
            return sum(1 for j in self._jobs.values() if j.state not in FINISHED)

    def cancel_all(self) -> None:
        with self._lock:
            jobs = list(self._jobs.values())
        for job in jobs:
            job.cancel()

    def prune(self) -> int:
        """Drop jobs finished more than ``keep_s`` ago."""
        now = time.monotonic()
        with self._lock:
            old = [jid for jid, j in self._jobs.items()
                   if j.finished_at is not None and now - j.finished_at > self.keep_s]
            for jid in old:
                del self._jobs[jid]
        return len(old)
