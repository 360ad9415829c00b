"""3D + time sessions (capability "phases") in ``MedSAMClient``: one upload of every phase,
prompts and spatial propagation on the key phase as on any volume, then propagation along
"t" that carries the key phase's slice masks to the other phases, streamed per (phase,
slice) with progress and cancel like any job; masks per phase (``object_mask(phase=)``)."""

from __future__ import annotations

import threading
from collections.abc import Callable, Sequence
from typing import TYPE_CHECKING

import numpy as np

from . import protocol as P
from .errors import UNSUPPORTED, MedSAMError
from .volumes import SessionHandle, volume_meta, wire_phases

if TYPE_CHECKING:
    from .client import MedSAMClient

# said when the server lacks it (MedSAMClient.notes, and the refusal of an upload)
WITHOUT_PHASES = "has no 3D + time sessions: a (phases, k, j, i) volume cannot be sent"


class PhasesMixin:
    """MedSAMClient's 3D + time calls (mixed in, so the client stays one object)."""

    def upload_phases(self: MedSAMClient, phases: np.ndarray | Sequence[np.ndarray], *,
                      key_phase: int, spacing: Sequence[float] = (1.0, 1.0, 1.0),
                      origin: Sequence[float] = (0.0, 0.0, 0.0),
                      direction: Sequence[float] = (1, 0, 0, 0, 1, 0, 0, 0, 1),
                      modality: P.Modality = "ct", window: Sequence[float] | None = None,
                      name: str = "") -> SessionHandle:
        """Create a 3D + time session: every phase in one upload, (phases, k, j, i) or one
        3D array per phase, all on the grid of ``spacing``/``origin``/``direction`` and
        windowed alike. Prompts go on ``key_phase`` (k, j or i); ``propagate_phases`` then
        carries them to the others. Refused, nothing sent, by a server without "phases"."""
        if not self.supports("phases"):
            raise MedSAMError(f"medsam-server at {self.url} {WITHOUT_PHASES}; update the "
                              "server to segment 3D + time volumes", code=UNSUPPORTED)
        vol = wire_phases(phases)
        if isinstance(key_phase, bool) or not 0 <= int(key_phase) < vol.shape[0]:
            raise MedSAMError(f"key phase {key_phase} is outside 0..{vol.shape[0] - 1} (the "
                              f"phases of shape {vol.shape})")
        return self._upload(vol, volume_meta(vol, P.sha256_array(vol), spacing, origin,
                                             direction, modality, window, name,
                                             key_phase=int(key_phase)))

    def propagate_phases(self: MedSAMClient, session: SessionHandle | str,
                         object_ids: Sequence[int], *, first: int | None = None,
                         last: int | None = None, direction: P.Direction = "both",
                         stop_after_empty: int = 0,
                         on_update: Callable[[P.SliceUpdate], None] | None = None,
                         on_job: Callable[[P.JobInfo], None] | None = None,
                         cancel: threading.Event | None = None, poll_wait: float = 1.0,
                         stall_timeout: float | None = None) -> P.JobInfo:
        """Carry the objects' key-phase masks along t to phases ``first``..``last`` (all by
        default; the range holds the key phase). Each update is one axial slice
        (``axis`` "k", ``index``) of one ``phase``; cancel and progress as ``propagate``."""
        if isinstance(session, SessionHandle) and session.key_phase is None:
            raise MedSAMError(f"session {session.session_id} is not 3D + time (upload it with "
                              "upload_phases): it has no phases to propagate to")
        return self.propagate(session, object_ids, axis="t", direction=direction,
                              first=first, last=last, stop_after_empty=stop_after_empty,
                              on_update=on_update, on_job=on_job, cancel=cancel,
                              poll_wait=poll_wait, stall_timeout=stall_timeout)
