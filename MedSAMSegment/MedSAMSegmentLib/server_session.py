"""The server side of one annotated volume, as this client built it; replays itself if lost.

Worker thread only (see tasks.py). Every operation the server accepted is recorded
(prompts, completed propagations, object deletions). When the server no longer has
the session -- the local worker restarted, a remote server restarted or expired it --
the volume is uploaded again and the record is replayed in order, which rebuilds the
same server state (the engine is deterministic for the same device and weights), then
the operation that found the session gone is retried once. A cancelled propagation is
not replayed (it cannot be stopped at the same slice again); its slices stay in the
user's preview, they are just not memory on the server.
"""

from __future__ import annotations

import threading
from collections.abc import Callable
from dataclasses import dataclass, field
from typing import Any

import numpy as np
from medsam_client import protocol as P
from medsam_client.client import SESSION_GONE, MedSAMClient, MedSAMError, SessionHandle

from .backend import Backend


@dataclass(frozen=True)
class VolumeUpload:
    """The voxels and how the server must read them (main thread prepares it)."""

    array: np.ndarray  # (k, j, i), the source image on the segmentation's grid
    spacing: tuple[float, float, float]
    modality: str  # "ct" or "mr"
    window: tuple[float, float] | None  # CT (level, width)
    name: str = ""
    time: bool = False  # frames along the first axis (a time session, axis "t")


@dataclass(frozen=True)
class PromptOp:
    object_id: int
    axis: str
    index: int
    box: tuple[float, float, float, float] | None = None
    points: tuple[tuple[float, float], ...] = ()
    labels: tuple[int, ...] = ()
    mask: np.ndarray | None = field(default=None, compare=False)
    kind: str = "box"  # box, points, mask


@dataclass(frozen=True)
class PropagateOp:
    object_ids: tuple[int, ...]
    axis: str
    direction: str = "both"
    first: int | None = None
    last: int | None = None
    stop_after_empty: int = 0


@dataclass(frozen=True)
class DeleteOp:
    object_id: int


@dataclass
class ReplayReport:
    prompts: int = 0
    propagations: int = 0
    masks: dict[int, np.ndarray] = field(default_factory=dict)  # object id -> server mask


Notify = Callable[[str], None]


class ServerSession:
    """One volume's session on the backend's server (created lazily, on first use)."""

    def __init__(self, backend: Callable[[], Backend], volume: VolumeUpload, *,
                 notify: Notify | None = None, stall_timeout: float = 300.0) -> None:
        self.backend = backend  # the current backend (the user may switch it in settings)
        self.volume = volume
        self.notify = notify or (lambda message: None)
        self.stall_timeout = stall_timeout
        self.history: list[PromptOp | PropagateOp | DeleteOp] = []
        self.handle: SessionHandle | None = None
        self.uploads = 0
        self.last_replay: ReplayReport | None = None
        self.server_info: P.Info | None = None  # of the server holding the session (provenance)
        self._served_by: tuple[int, int] | None = None  # (id of backend, its generation)
        self._resend_reason: str | None = None

    # ---- operations ----------------------------------------------------------------
    def prompt(self, op: PromptOp) -> P.SliceUpdate:
        def call(client: MedSAMClient, handle: SessionHandle) -> P.SliceUpdate:
            return client.prompt(handle, op.object_id, op.axis, op.index, box=op.box,
                                 points=op.points or None,
                                 point_labels=op.labels if op.points else None, mask=op.mask)

        update = self._with_session(call)
        self.history.append(op)
        return update

    def propagate(self, op: PropagateOp, *, on_update: Callable[[P.SliceUpdate], None],
                  on_job: Callable[[P.JobInfo], None] | None = None,
                  cancel: threading.Event | None = None) -> P.JobInfo:
        def call(client: MedSAMClient, handle: SessionHandle) -> P.JobInfo:
            return client.propagate(handle, list(op.object_ids), axis=op.axis,
                                    direction=op.direction, first=op.first, last=op.last,
                                    stop_after_empty=op.stop_after_empty, on_update=on_update,
                                    on_job=on_job, cancel=cancel, poll_wait=0.5,
                                    stall_timeout=self.stall_timeout)

        job = self._with_session(call)
        if job.state == "done":
            self.history.append(op)
        return job

    def delete_object(self, object_id: int) -> None:
        if not any(isinstance(op, PromptOp) and op.object_id == object_id for op in self.history):
            return  # the server never heard of it
        op = DeleteOp(object_id)

        def call(client: MedSAMClient, handle: SessionHandle) -> None:
            try:
                client.delete_object(handle, object_id)
            except MedSAMError as exc:
                if exc.code != "object_not_found":
                    raise

        self._with_session(call)
        self.history.append(op)

    def focus(self, axis: str, index: int) -> bool:
        """Have the server encode that slice and its neighbours ahead (focus.py): only on a
        session the server has now, never by uploading one; False when not sent (no
        session yet, a server restarted or without the capability, the session gone: the
        next operation rebuilds it)."""
        handle = self.handle
        if handle is None:
            return False
        backend = self.backend()
        if (id(backend), backend.generation) != self._served_by:  # restarted: no session
            return False
        try:
            return backend.client().focus(handle, axis, index)  # type: ignore[arg-type]
        except MedSAMError as exc:
            if exc.code == SESSION_GONE:
                return False
            raise

    @property
    def ready(self) -> bool:
        """Whether the server has this volume's session (one attribute read: any thread)."""
        return self.handle is not None

    def close(self) -> None:
        """Free the server session (best effort: the server also expires idle sessions)."""
        handle, self.handle = self.handle, None
        if handle is not None:
            try:
                self.backend().client().close_session(handle, quiet=True)
            except MedSAMError:
                pass

    def replace_volume(self, volume: VolumeUpload) -> None:
        """Same voxels, new reading (e.g. another CT window): re-upload and replay on next use."""
        self.close()
        self.volume = volume
        self._resend_reason = "The volume is sent again with the new intensity settings."

    def pop_replay(self) -> ReplayReport | None:
        report, self.last_replay = self.last_replay, None
        return report

    # ---- session upkeep ------------------------------------------------------------
    def _with_session(self, call: Callable[[MedSAMClient, SessionHandle], Any]) -> Any:
        client, handle = self._ensure()
        try:
            return call(client, handle)
        except MedSAMError as exc:
            if exc.code != SESSION_GONE:
                raise
        # the server forgot us between _ensure and the call: rebuild once, retry once
        self.handle = None
        client, handle = self._ensure()
        return call(client, handle)

    def _ensure(self) -> tuple[MedSAMClient, SessionHandle]:
        backend = self.backend()
        client = backend.client()
        served_by = (id(backend), backend.generation)
        if self.handle is not None and served_by != self._served_by:
            self.handle = None  # another backend, or the local worker restarted: session gone
        if self.handle is None:
            lost = self.uploads > 0
            if lost:
                reason = self._resend_reason or (
                    "The MedSAM2 server no longer has this volume's session (it restarted, "
                    "expired it, or you switched servers).")
                self._resend_reason = None
                self.notify(f"{reason} Replaying {self._describe_history()}; your results "
                            "stay as they are.")
            v = self.volume
            self.handle = client.upload(v.array, spacing=v.spacing, modality=v.modality,
                                        window=v.window, name=v.name, time=v.time)
            self._served_by = served_by
            self.server_info = client.info()
            self.uploads += 1
            if lost:
                self.last_replay = self._replay(client, self.handle)
        return client, self.handle

    def _replay(self, client: MedSAMClient, handle: SessionHandle) -> ReplayReport:
        report = ReplayReport()
        alive: set[int] = set()
        for op in self.history:
            if isinstance(op, PromptOp):
                client.prompt(handle, op.object_id, op.axis, op.index, box=op.box,
                              points=op.points or None,
                              point_labels=op.labels if op.points else None, mask=op.mask)
                alive.add(op.object_id)
                report.prompts += 1
            elif isinstance(op, PropagateOp):
                job = client.propagate(handle, list(op.object_ids), axis=op.axis,
                                       direction=op.direction, first=op.first, last=op.last,
                                       stop_after_empty=op.stop_after_empty,
                                       poll_wait=0.5, stall_timeout=self.stall_timeout)
                if job.state != "done":
                    raise MedSAMError(f"replaying a propagation ended {job.state}",
                                      code="replay_failed")
                report.propagations += 1
            else:
                client.delete_object(handle, op.object_id)
                alive.discard(op.object_id)
        for object_id in sorted(alive):
            report.masks[object_id] = client.object_mask(handle, object_id)
        return report

    def _describe_history(self) -> str:
        prompts = sum(isinstance(op, PromptOp) for op in self.history)
        runs = sum(isinstance(op, PropagateOp) for op in self.history)
        objects = len({op.object_id for op in self.history if isinstance(op, PromptOp)})
        return f"{prompts} prompt(s) and {runs} propagation(s) of {objects} segment(s) on it"
