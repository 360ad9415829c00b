"""The session registry: volumes in, idle sessions out, memory kept under a budget.

A ``ServiceSession`` is one client's volume on this server. It is *active* while model
work for it is queued or running (``active`` > 0); active sessions are never expired
nor have their feature cache trimmed, because the model worker uses them without a
lock. A session whose volume is being uploaded (``uploading``) is never expired either,
and the voxels it announced count against the memory budget from the moment the upload
begins. Everything else here happens under the registry lock.
"""

from __future__ import annotations

import logging
import math
import re
import secrets
import threading
import time
from collections.abc import Callable
from dataclasses import dataclass

import numpy as np
from medsam_client.protocol import (
    VOLUME_DTYPES,
    SessionInfo,
    VolumeMeta,
    array_nbytes,
    available_encodings,
    bytes_to_array,
    decompress,
    sha256_array,
)

from ..engine import Engine
from ..preprocess import window_to_uint8
from ..session import Session
from .config import ServiceConfig
from .errors import (
    BadInput,
    Busy,
    OutOfMemory,
    SessionNotFound,
    TooLarge,
    TooManySessions,
    WrongState,
)

log = logging.getLogger(__name__)
_SHA256 = re.compile(r"^[0-9a-f]{64}$")


@dataclass(eq=False)
class ServiceSession:
    session_id: str
    meta: VolumeMeta
    last_used: float
    session: Session | None = None  # the engine session, once the volume is uploaded
    uploading: bool = False
    active: int = 0  # queued or running work items (prompts, jobs, deletions)
    job_id: str | None = None  # the queued or running propagation job
    closed: bool = False  # deleted or expired; work still holding it sees this

    @property
    def state(self) -> str:
        return "ready" if self.session is not None else "awaiting_volume"

    def info(self, idle_timeout_s: float) -> SessionInfo:
        es = self.session
        return SessionInfo(self.session_id, self.state, list(self.meta.shape),  # type: ignore[arg-type]
                           self.meta.sha256, es.object_ids if es else [], idle_timeout_s)

    def memory(self) -> dict[str, int]:
        """Bytes held, by kind; ``uploads``: the voxels an upload in progress announced."""
        es = self.session
        if es is None:
            upload = array_nbytes(self.meta.shape, self.meta.dtype) if self.uploading else 0
            return {"volumes": 0, "features": 0, "masks": 0, "logits": 0, "uploads": upload}
        return {"volumes": int(es.volume.nbytes), "features": int(es.cache.nbytes),
                "masks": len(es.object_ids) * int(es.volume.size),
                "logits": _logits_nbytes(es), "uploads": 0}


def _logits_nbytes(es: Session) -> int:
    """The low-res logits the engine keeps per object, axis and slice."""
    total = 0
    for obj in list(es._objects.values()):  # read from other threads: copy the views
        for state in list(obj.axes.values()):
            for t in list(state.lowres.values()):
                total += t.numel() * t.element_size()
    return total


def check_meta(meta: VolumeMeta, config: ServiceConfig) -> None:
    """Refuse a VolumeMeta that could never be uploaded, before any voxel is sent."""
    if meta.dtype not in VOLUME_DTYPES:
        raise BadInput(f"dtype {meta.dtype!r} is not supported; use one of {VOLUME_DTYPES}")
    if len(meta.shape) != 3 or any(s < 1 for s in meta.shape):
        raise BadInput(f"shape {meta.shape} must be 3 positive sizes (k, j, i)")
    if meta.encoding not in available_encodings():
        raise BadInput(f"encoding {meta.encoding!r} is not available here; "
                       f"use one of {available_encodings()}")
    if not _SHA256.match(meta.sha256):
        raise BadInput("sha256 must be 64 lower-case hex digits (protocol.sha256_array)")
    for name, n in (("spacing", 3), ("origin", 3), ("direction", 9)):
        values = getattr(meta, name)
        if len(values) != n or not all(math.isfinite(v) for v in values):
            raise BadInput(f"{name} must be {n} finite numbers, got {values}")
    if any(v <= 0 for v in meta.spacing):
        raise BadInput(f"spacing must be positive, got {meta.spacing}")
    if meta.window is not None:
        if meta.modality != "ct":
            raise BadInput("a window is only used with modality 'ct'")
        if len(meta.window) != 2 or not all(math.isfinite(v) for v in meta.window) \
                or meta.window[1] <= 0:
            raise BadInput(f"window must be [level, width] with width > 0, got {meta.window}")
    raw = array_nbytes(meta.shape, meta.dtype)
    if raw > config.memory_budget_bytes:
        raise TooLarge(f"a {meta.dtype} volume of shape {meta.shape} needs {raw >> 20} MB, over "
                       f"this server's {config.memory_budget_bytes >> 20} MB memory budget; "
                       "crop or resample it")
    if len(meta.name) > 1024:
        raise BadInput("name is longer than 1024 characters")


def decode_volume(body: bytes | bytearray, meta: VolumeMeta) -> np.ndarray:
    """Voxels from an upload body, checked against its VolumeMeta (size and sha256)."""
    expected = array_nbytes(meta.shape, meta.dtype)
    raw = decompress(body, meta.encoding, expected)
    volume = bytes_to_array(raw, meta.dtype, meta.shape)
    del raw
    if sha256_array(volume) != meta.sha256:
        raise BadInput("the uploaded voxels do not match the sha256 announced in POST /sessions "
                       "(corrupted upload, or sha256 not computed with protocol.sha256_array)")
    return volume


class SessionRegistry:
    """All sessions of the service, by id."""

    def __init__(self, engine: Engine, config: ServiceConfig,
                 clock: Callable[[], float] = time.monotonic) -> None:
        self.engine = engine
        self.config = config
        self.clock = clock
        self.lock = threading.RLock()
        self._sessions: dict[str, ServiceSession] = {}

    def __len__(self) -> int:
        return len(self._sessions)

    # ---- lifecycle -----------------------------------------------------------------
    def create(self, meta: VolumeMeta) -> ServiceSession:
        check_meta(meta, self.config)
        with self.lock:
            if len(self._sessions) >= self.config.max_sessions:
                raise TooManySessions(f"this server holds its maximum of {self.config.max_sessions}"
                                      " sessions; close unused ones (DELETE /sessions/{id})")
            sid = secrets.token_urlsafe(12)
            s = self._sessions[sid] = ServiceSession(sid, meta, self.clock())
        log.info("session %s created: %s %s %s", sid, meta.dtype, meta.shape, meta.modality)
        return s

    def get(self, session_id: str) -> ServiceSession:
        with self.lock:
            s = self._sessions.get(session_id)
            if s is None:
                raise SessionNotFound(
                    f"unknown session {session_id!r}: it may have expired (after "
                    f"{self.config.idle_timeout_s:g} s idle), been closed, or the server "
                    "restarted; upload the volume again (POST /sessions)")
            s.last_used = self.clock()
            return s

    def touch(self, session_id: str) -> None:
        with self.lock:
            s = self._sessions.get(session_id)
            if s is not None:
                s.last_used = self.clock()

    def begin_upload(self, s: ServiceSession) -> None:
        """Mark ``s`` uploading (before its body is read): a second upload is refused at
        once, the session is not expired meanwhile, and its announced voxels count
        against the memory budget; refused if they cannot fit beside work in progress."""
        need = array_nbytes(s.meta.shape, s.meta.dtype)
        with self.lock:
            self.require_awaiting_volume(s)
            if s.closed:
                raise SessionNotFound(f"session {s.session_id} was closed")
            # what cannot be freed: sessions at work and other uploads in progress
            pinned = sum(sum(o.memory().values()) for o in self._sessions.values()
                         if o.active > 0 or o.uploading)
            budget = self.config.memory_budget_bytes
            if pinned + need > budget:
                raise OutOfMemory(f"this upload needs {need >> 20} MB, but {pinned >> 20} MB of "
                                  f"the {budget >> 20} MB memory budget is held by uploads and "
                                  "work in progress; retry later")
            s.uploading = True
            s.last_used = self.clock()

    def end_upload(self, s: ServiceSession) -> None:
        with self.lock:
            s.uploading = False
            s.last_used = self.clock()

    def upload(self, s: ServiceSession, body: bytes | bytearray, *, begun: bool = False) -> None:
        """Decode, check and preprocess the voxels (CPU heavy: not on the event loop).
        ``begun``: the caller called ``begin_upload`` already (and ends it)."""
        if not begun:
            self.begin_upload(s)
        try:
            volume = decode_volume(body, s.meta)
            window = tuple(s.meta.window) if s.meta.window is not None else None
            volume_u8 = window_to_uint8(volume, s.meta.modality, window)  # type: ignore[arg-type]
            del volume
            session = Session(self.engine, volume_u8)
            with self.lock:
                if s.closed:
                    raise SessionNotFound(f"session {s.session_id} was closed during the upload")
                s.session = session
                s.uploading = False
                s.last_used = self.clock()
        finally:
            self.end_upload(s)
        log.info("session %s: volume uploaded (%d bytes on the wire)", s.session_id, len(body))
        self.enforce_budget(protect=s)

    def require_awaiting_volume(self, s: ServiceSession) -> None:
        """Cheap check before reading an upload body: one volume per session."""
        with self.lock:
            if s.session is not None or s.uploading:
                raise WrongState(f"session {s.session_id} already has its volume (or an upload in "
                                 "progress); create a new "
                                 "session for another volume")

    def remove(self, s: ServiceSession, reason: str) -> None:
        with self.lock:
            if self._sessions.get(s.session_id) is s:
                del self._sessions[s.session_id]
            s.closed = True
            if s.active == 0:
                s.session = None  # free the memory now; active work frees it on release
        log.info("session %s closed (%s)", s.session_id, reason)

    # ---- work accounting -----------------------------------------------------------
    def claim(self, s: ServiceSession, job_id: str | None = None) -> None:
        """Mark work queued for ``s``; with ``job_id`` it is that session's one job."""
        with self.lock:
            if s.closed:
                raise SessionNotFound(f"session {s.session_id} was closed")
            if s.job_id is not None:
                raise Busy(f"session {s.session_id} is busy with job {s.job_id}; wait for it "
                           f"(GET /jobs/{s.job_id}) or cancel it (POST /jobs/{s.job_id}/cancel)")
            s.active += 1
            s.job_id = job_id
            s.last_used = self.clock()

    def release(self, s: ServiceSession, job_id: str | None = None) -> None:
        with self.lock:
            s.active -= 1
            if job_id is not None and s.job_id == job_id:
                s.job_id = None
            s.last_used = self.clock()
            if s.closed and s.active == 0:
                s.session = None

    # ---- expiry and memory ---------------------------------------------------------
    def expire_idle(self) -> list[str]:
        now = self.clock()
        with self.lock:
            stale = [s for s in self._sessions.values()
                     if s.active == 0 and not s.uploading
                     and now - s.last_used > self.config.idle_timeout_s]
            for s in stale:
                self.remove(s, f"idle for more than {self.config.idle_timeout_s:g} s")
        return [s.session_id for s in stale]

    def memory(self) -> dict[str, int]:
        with self.lock:
            total = {"volumes": 0, "features": 0, "masks": 0, "logits": 0, "uploads": 0}
            for s in self._sessions.values():
                for key, value in s.memory().items():
                    total[key] += value
        total["total"] = sum(total.values())
        total["budget"] = self.config.memory_budget_bytes
        return total

    def enforce_budget(self, protect: ServiceSession | None = None) -> None:
        """Over budget: empty idle sessions' feature caches, then close idle sessions,
        least recently used first. Active sessions and ``protect`` are left alone."""
        budget = self.config.memory_budget_bytes
        with self.lock:
            total = self.memory()["total"]
            if total <= budget:
                return
            idle = sorted((s for s in self._sessions.values()
                           if s.active == 0 and s is not protect and s.session is not None),
                          key=lambda s: s.last_used)
            for s in idle:
                freed = s.session.cache.evict_to(0)  # type: ignore[union-attr]
                if freed:
                    log.info("session %s: dropped %d MB of cached features (memory budget)",
                             s.session_id, freed >> 20)
                total -= freed
                if total <= budget:
                    return
            for s in idle:
                total -= sum(s.memory().values())
                self.remove(s, "memory budget: least recently used idle session")
                if total <= budget:
                    return
        log.warning("memory use %d MB is over the %d MB budget, all of it in sessions at work",
                    total >> 20, budget >> 20)
