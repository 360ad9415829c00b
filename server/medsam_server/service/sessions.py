"""The session registry: volumes in, idle and abandoned sessions out, memory under a budget.

A ``ServiceSession`` is one client's volume on this server. Two clocks close it:

- *idle* (``last_used``, ``--idle-timeout``): no work for that long (uploads, prompts,
  propagations and their polls, undo, mask reads, deletions). A session at work is never
  idle-closed: a long job keeps it.
- *lease* (``last_seen``, ``--lease-timeout``), for sessions whose client asked for one
  (``VolumeMeta.lease``): the client heartbeats; silent for the lease timeout, it is taken
  to be gone (crashed, killed, unplugged) and the session is closed even with work in
  flight: its job is cancelled and its memory freed when the model worker lets go of it.
  Any request of the client renews the lease; work the server does on its own (a job's
  progress) does not, and ``GET /sessions/{sid}`` renews nothing (it reports the time left).

Its ``work`` (claims.SessionWork) says whether the model worker is using it: sessions at
work are never idle-closed nor have their feature cache trimmed, because the worker
uses them without a lock. A session whose volume is being uploaded (``uploading``) is
closed by neither clock, and the voxels it announced count against the memory budget
from the moment the upload begins. Everything else here happens under the registry lock.
"""

from __future__ import annotations

import logging
import math
import re
import secrets
import threading
import time
from collections.abc import Callable
from dataclasses import dataclass, field

import numpy as np
from medsam_client.protocol import (
    VOLUME_DTYPES,
    Lease,
    SessionInfo,
    VolumeMeta,
    array_nbytes,
    available_encodings,
    bytes_to_array,
    decompress,
    sha256_array,
)

from ..engine import Engine, Session, window_to_uint8
from .claims import SessionWork
from .config import ServiceConfig
from .errors import BadInput, OutOfMemory, SessionGone, TooLarge, TooManySessions, WrongState
from .phases_axis import PhaseStore, check_phases_meta, window_phases
from .time_axis import check_time_meta, is_colour

log = logging.getLogger(__name__)
_SHA256 = re.compile(r"^[0-9a-f]{64}$")


@dataclass(eq=False)
class ServiceSession:
    session_id: str
    meta: VolumeMeta
    last_used: float  # idle clock: the last work
    last_seen: float  # lease clock: the last word from the client
    lease: bool = False  # the client heartbeats; closed when it falls silent
    session: Session | None = None  # the engine session, once the volume is uploaded
    # 3D + time (capability "phases"): every phase and the carried masks; ``session`` is
    # the key phase's
    phases: PhaseStore | None = None
    uploading: bool = False
    work: SessionWork = field(init=False)

    def __post_init__(self) -> None:
        self.work = SessionWork(self.session_id, self._free)

    def _free(self) -> None:  # closed and no work left: the memory goes now
        self.session = None
        self.phases = None

    @property
    def closed(self) -> bool:
        return self.work.closed

    @property
    def state(self) -> str:
        return "ready" if self.session is not None else "awaiting_volume"

    def info(self, config: ServiceConfig, now: float) -> SessionInfo:
        es = self.session
        lease_timeout, lease_left, idle_left = self.time_left(config, now)
        return SessionInfo(self.session_id, self.state, list(self.meta.shape),  # type: ignore[arg-type]
                           self.meta.sha256, es.object_ids if es else [],
                           config.idle_timeout_s, lease_timeout, lease_left, idle_left)

    def time_left(self, config: ServiceConfig, now: float
                  ) -> tuple[float | None, float | None, float]:
        """(lease timeout, lease left, idle left) in seconds; lease ones None without a lease."""
        idle_left = max(0.0, config.idle_timeout_s - (now - self.last_used))
        if not self.lease:
            return None, None, idle_left
        return (config.lease_timeout_s,
                max(0.0, config.lease_timeout_s - (now - self.last_seen)), idle_left)

    def memory(self) -> dict[str, int]:
        """Bytes held, by kind (the engine session's own report); ``uploads``: the voxels
        an upload in progress announced."""
        es = self.session
        if es is None:
            upload = array_nbytes(self.meta.shape, self.meta.dtype) if self.uploading else 0
            return {**dict.fromkeys(MEMORY_KINDS, 0), "uploads": upload}
        held = {**es.memory(), "uploads": 0}
        store = self.phases
        if store is not None:  # the other phases and their carried masks
            for key, value in store.memory().items():
                held[key] += value
        return held


# what ServiceSession.memory reports, upload aside (Session.memory's keys)
MEMORY_KINDS = ("volumes", "features", "masks", "logits", "undo")


def check_meta(meta: VolumeMeta, config: ServiceConfig) -> None:
    """Refuse a VolumeMeta that could never be uploaded, before any voxel is sent."""
    if meta.dtype not in VOLUME_DTYPES:
        raise BadInput(f"dtype {meta.dtype!r} is not supported; use one of {VOLUME_DTYPES}")
    check_phases_meta(meta)  # (phases, k, j, i) and its key phase (capability "phases")
    if not meta.phases:
        check_time_meta(meta)  # 3 sizes (k, j, i), or frames (capability "time")
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
            sid = new_session_id(self.config.replica)
            now = self.clock()
            s = self._sessions[sid] = ServiceSession(sid, meta, now, now, lease=meta.lease)
        log.info("session %s created: %s %s %s%s", sid, meta.dtype, meta.shape, meta.modality,
                 f", lease {self.config.lease_timeout_s:g} s" if meta.lease else "")
        return s

    def get(self, session_id: str, *, work: bool = True) -> ServiceSession:
        """The session; ``work``: this request is work (renews both clocks), else it
        renews nothing (a status read)."""
        with self.lock:
            s = self._sessions.get(session_id)
            if s is None:
                raise SessionGone(
                    f"unknown session {session_id!r}: it was closed, expired (after "
                    f"{self.config.idle_timeout_s:g} s without work, or "
                    f"{self.config.lease_timeout_s:g} s without a word from its client), or "
                    "the server restarted; upload the volume again (POST /sessions)")
            if work:
                s.last_used = s.last_seen = self.clock()
            return s

    def heartbeat(self, s: ServiceSession) -> Lease:
        """The client is alive: renew the lease (not the idle clock: a heartbeat is no work).
        A session made without a lease gets one from its first heartbeat."""
        with self.lock:
            if s.closed:
                raise SessionGone(f"session {s.session_id} was closed")
            s.lease = True
            now = s.last_seen = self.clock()
            lease_timeout, lease_left, idle_left = s.time_left(self.config, now)
        return Lease(s.session_id, lease_timeout, lease_left, idle_left)  # type: ignore[arg-type]

    def touch(self, session_id: str, *, client: bool = True) -> None:
        """Work on the session: renews the idle clock, and the lease when ``client`` (the
        request came from its client, not from the server's own job progress)."""
        with self.lock:
            s = self._sessions.get(session_id)
            if s is not None:
                s.last_used = self.clock()
                if client:
                    s.last_seen = s.last_used

    def session_info(self, s: ServiceSession) -> SessionInfo:
        with self.lock:
            return s.info(self.config, self.clock())

    def begin_upload(self, s: ServiceSession) -> None:
        """Mark ``s`` uploading (before its body is read): a second upload is refused at
        once, the session is not expired meanwhile, and its announced voxels count
        against the memory budget; refused if they cannot fit beside work in progress."""
        need = array_nbytes(s.meta.shape, s.meta.dtype)
        with self.lock:
            self.require_awaiting_volume(s)
            if s.closed:
                raise SessionGone(f"session {s.session_id} was closed")
            # what cannot be freed: sessions at work and other uploads in progress
            pinned = sum(sum(o.memory().values()) for o in self._sessions.values()
                         if o.work.active > 0 or o.uploading)
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
            store = None
            if is_colour(s.meta):  # RGB frames go to the model as they are (uint8)
                volume_u8 = volume
            elif s.meta.phases:  # one mapping for every phase; the key phase is the session's
                store = PhaseStore(window_phases(volume, lambda v: window_to_uint8(
                    v, s.meta.modality, window)), s.meta.key_phase)  # type: ignore[arg-type]
                volume_u8 = store.key_volume
            else:
                volume_u8 = window_to_uint8(volume, s.meta.modality, window)  # type: ignore[arg-type]
            del volume
            session = Session(self.engine, volume_u8, undo_depth=self.config.undo_depth)
            with self.lock:
                if s.closed:
                    raise SessionGone(f"session {s.session_id} was closed during the upload")
                s.session, s.phases = session, store
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
        """Close ``s``: forgotten at once, its job cancelled, its memory freed as soon as
        the model worker lets go of it."""
        with self.lock:
            if self._sessions.get(s.session_id) is s:
                del self._sessions[s.session_id]
            job = s.work.close()
        if job is not None:
            job.cancel()  # outside the registry lock: the job releases its claim
        log.info("session %s closed (%s)", s.session_id, reason)

    # ---- expiry and memory ---------------------------------------------------------
    def expire(self) -> list[str]:
        """Close sessions whose lease lapsed (at work or not) or that are idle."""
        now = self.clock()
        idle_s, lease_s = self.config.idle_timeout_s, self.config.lease_timeout_s
        with self.lock:
            gone: list[tuple[ServiceSession, str]] = []
            for s in self._sessions.values():
                if s.uploading:
                    continue
                if s.lease and now - s.last_seen > lease_s:
                    gone.append((s, f"its client was silent for more than {lease_s:g} s "
                                    "(lease lapsed)"))
                elif s.work.active == 0 and now - s.last_used > idle_s:
                    gone.append((s, f"idle for more than {idle_s:g} s"))
        for s, reason in gone:
            self.remove(s, reason)
        return [s.session_id for s, _ in gone]

    def memory(self) -> dict[str, int]:
        with self.lock:
            total = {**dict.fromkeys(MEMORY_KINDS, 0), "uploads": 0}
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
                           if s.work.active == 0 and s is not protect and s.session is not None),
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


def new_session_id(replica: str = "") -> str:
    """``[replica.]token``: a proxy routes every request of the session by its prefix."""
    token = secrets.token_urlsafe(12)  # letters, digits, '-' and '_': never a '.'
    return f"{replica}.{token}" if replica else token
