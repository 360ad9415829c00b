"""Who holds a session: its queued or running work, its one job, and whether it is closed.

Each ``ServiceSession`` has one ``SessionWork``; every claim, release and close of that
session goes through it, under its one lock, so they cannot interleave half-way:

- ``claim()`` gives a ``Claim`` for one work item (a prompt, an undo, a deletion, a
  job being planned). Releasing it twice is harmless.
- ``claim_job(job)`` makes ``job`` the session's one propagation job and gives the job
  its claim *in the same step*, so from the moment a job can be reached (cancelled by a
  deletion, an expiry, a lapsed lease, a shutdown) it also knows how to release. (Before,
  a session deleted between the job's claim and the assignment of its release callback
  left the claim held and the session's memory pinned for good.)
- ``close()`` marks the session closed and hands back its job, for the caller to
  cancel outside any lock; once closed, nothing new can be claimed.

When a closed session's last claim is released, ``on_free`` drops its memory (the
engine session); while claims are held, the model worker may still be using it.

Lock order: a job's lock, then this lock (a job's release calls ``Claim.release``);
the registry lock, then this lock. Under this lock nothing is called but
``job.attach_claim`` (an attribute set on a job nobody else has yet); ``on_free`` runs
after it.
"""

from __future__ import annotations

import threading
from collections.abc import Callable
from typing import Protocol

from .errors import Busy, SessionGone


class ClaimedJob(Protocol):
    job_id: str

    def attach_claim(self, claim: Claim) -> None: ...

    def cancel(self) -> None: ...


class Claim:
    """One work item's hold on a session; ``release`` is idempotent."""

    def __init__(self, work: SessionWork, job: ClaimedJob | None = None) -> None:
        self._work = work
        self._job = job
        self._held = True

    def release(self) -> None:
        self._work._release(self)


class SessionWork:
    def __init__(self, session_id: str, on_free: Callable[[], None]) -> None:
        self.session_id = session_id
        self._on_free = on_free
        self._lock = threading.Lock()
        self._active = 0
        self._job: ClaimedJob | None = None
        self._closed = False

    # ---- reading (a snapshot: enough for expiry and the budget, which re-check) ---------
    @property
    def active(self) -> int:
        """Work items queued or running (prompts, undos, deletions, the job)."""
        return self._active

    @property
    def closed(self) -> bool:
        return self._closed

    @property
    def job_id(self) -> str | None:
        job = self._job
        return job.job_id if job is not None else None

    # ---- claiming ------------------------------------------------------------------
    def claim(self) -> Claim:
        """Hold the session for one work item; refused if it is closed or has a job."""
        with self._lock:
            self._check_free()
            self._active += 1
            return Claim(self)

    def claim_job(self, job: ClaimedJob) -> None:
        """Make ``job`` the session's job, holding it until ``job`` releases its claim."""
        with self._lock:
            self._check_free()
            claim = Claim(self, job)
            self._active += 1
            self._job = job
            job.attach_claim(claim)  # before anyone else can see the job

    def close(self) -> ClaimedJob | None:
        """Closed for good; returns the job (queued or running) for the caller to cancel."""
        with self._lock:
            self._closed = True
            free = self._active == 0
            job = self._job
        if free:
            self._on_free()
        return job

    def _check_free(self) -> None:  # with self._lock held
        if self._closed:
            raise SessionGone(f"session {self.session_id} was closed")
        if self._job is not None:
            jid = self._job.job_id
            raise Busy(f"session {self.session_id} is busy with job {jid}; wait for it "
                       f"(GET /jobs/{jid}) or cancel it (POST /jobs/{jid}/cancel)")

    def _release(self, claim: Claim) -> None:
        with self._lock:
            if not claim._held:
                return
            claim._held = False
            self._active -= 1
            if claim._job is not None and self._job is claim._job:
                self._job = None
            free = self._closed and self._active == 0
        if free:
            self._on_free()
