"""Capability "phases": 3D + time sessions (4D CT breathing phases, cardiac phases).

One upload holds every phase, (phases, k, j, i) on one grid. The session's engine Session
is the key phase (``VolumeMeta.key_phase``): prompts, spatial propagation, undo and focus
work on it as on any 3D session. Propagation along "t" is ``engine/phases.py``'s recipe
made interactive: each axial slice k that holds the object in the key phase is a short
video over the phases, prompted on the key phase with that slice's mask and propagated
through the phases asked for; each (phase, slice) result streams as a SliceUpdate naming
its ``phase`` and is kept here (the key phase's masks stay the engine Session's own).
"""

from __future__ import annotations

import threading
from collections.abc import Callable

import numpy as np
from medsam_client.protocol import PromptRequest, PropagateRequest, VolumeMeta

from ..engine import Prompt, Session, SliceResult
from .errors import BadInput

# (phase, slice k, result): one carried mask, as it is computed
CarryProgress = Callable[[int, int, SliceResult], None]


def check_phases_meta(meta: VolumeMeta) -> None:
    """Shape and key phase of a 3D + time VolumeMeta (BadInput if wrong); and that a
    volume or frames session does not carry a key phase it would ignore."""
    if not meta.phases:
        if meta.key_phase != 0:
            raise BadInput("key_phase names a phase of a 3D + time session: set phases "
                           "(shape (phases, k, j, i)) or leave it out")
        return
    if meta.time:
        raise BadInput("time (2D + time frames) and phases (3D + time) exclude each other: "
                       "a (phases, k, j, i) volume is sent with phases only")
    if len(meta.shape) != 4 or any(s < 1 for s in meta.shape):
        raise BadInput(f"a 3D + time volume must be 4 positive sizes (phases, k, j, i), got "
                       f"shape {meta.shape}")
    if meta.shape[0] < 2:
        raise BadInput(f"3D + time needs at least two phases, got shape {meta.shape}")
    if isinstance(meta.key_phase, bool) or not 0 <= meta.key_phase < meta.shape[0]:
        raise BadInput(f"key_phase {meta.key_phase} is outside 0..{meta.shape[0] - 1} (the "
                       f"phases of shape {meta.shape})")


def check_phase(meta: VolumeMeta, phase: int | None, what: str) -> None:
    """A request's ``phase``: only on a 3D + time session, and within its phases."""
    if phase is None:
        return
    if not meta.phases:
        raise BadInput(f"{what} names phase {phase}, but this session is not 3D + time "
                       "(upload the volume with phases for that)")
    if isinstance(phase, bool) or not 0 <= phase < meta.shape[0]:
        raise BadInput(f"phase {phase} is outside 0..{meta.shape[0] - 1} (the session's "
                       "phases)")


def check_prompt_phase(meta: VolumeMeta, req: PromptRequest) -> None:
    """Prompts of a 3D + time session go on its key phase (time_axis.engine_axis refuses
    axis t for them)."""
    check_phase(meta, req.phase, "the prompt")
    if meta.phases and req.phase is not None and req.phase != meta.key_phase:
        raise BadInput(f"prompts go on the key phase {meta.key_phase} (VolumeMeta.key_phase), "
                       f"not phase {req.phase}: the other phases get their masks by "
                       "propagating along t")


def window_phases(volume: np.ndarray, window: Callable[[np.ndarray], np.ndarray]
                  ) -> np.ndarray:
    """The phases windowed as one volume (the same mapping for every phase), as
    ``segment --time --phase`` does."""
    flat = window(volume.reshape(-1, *volume.shape[2:]))
    return np.ascontiguousarray(flat.reshape(volume.shape))


class PhaseStore:
    """Every phase's uint8 voxels and the masks carried to the non-key phases.

    Carried masks are kept per (object, phase, slice k), only where non-empty; written by
    the model worker, read by mask requests (hence the lock).
    """

    def __init__(self, phases_u8: np.ndarray, key_phase: int) -> None:
        self.volume = phases_u8
        self.key = key_phase
        self.count = phases_u8.shape[0]
        self._masks: dict[tuple[int, int, int], np.ndarray] = {}
        self._lock = threading.Lock()

    @property
    def key_volume(self) -> np.ndarray:
        return self.volume[self.key]  # a view: the engine Session holds no copy

    def memory(self) -> dict[str, int]:
        """Bytes beyond the key phase's engine Session: the other phases, carried masks."""
        with self._lock:
            masks = sum(m.nbytes for m in self._masks.values())
        return {"volumes": int(self.volume.nbytes - self.key_volume.nbytes), "masks": masks}

    def put(self, object_id: int, phase: int, z: int, mask: np.ndarray) -> None:
        with self._lock:
            if mask.any():
                self._masks[object_id, phase, z] = mask.astype(bool, copy=True)
            else:
                self._masks.pop((object_id, phase, z), None)

    def clear(self, object_id: int, phases: set[int], slices: set[int] | None = None) -> None:
        """Forget the object's carried masks in ``phases`` (on ``slices``, or all)."""
        with self._lock:
            for key in [k for k in self._masks if k[0] == object_id and k[1] in phases
                        and (slices is None or k[2] in slices)]:
                del self._masks[key]

    def drop_object(self, object_id: int) -> None:
        self.clear(object_id, set(range(self.count)))

    def mask(self, object_id: int, key_mask: np.ndarray, phase: int | None) -> np.ndarray:
        """The object's mask in ``phase`` (k, j, i), or in every phase (phases, k, j, i)."""
        if phase == self.key:
            return key_mask
        out = np.zeros((self.count, *key_mask.shape), dtype=bool)
        if phase is None:
            out[self.key] = key_mask
        with self._lock:
            for (oid, p, z), m in self._masks.items():
                if oid == object_id and phase in (None, p):
                    out[p, z] = m
        return out if phase is None else out[phase]


def time_targets(store: PhaseStore, req: PropagateRequest) -> list[int]:
    """The phases a propagation along t computes (BadInput if the request cannot run)."""
    if req.direction not in ("both", "forward", "backward"):
        raise BadInput(f"direction must be both, forward or backward, not {req.direction!r}")
    if req.stop_after_empty < 0:
        raise BadInput("stop_after_empty must be >= 0")
    lo = 0 if req.first is None else req.first
    hi = store.count - 1 if req.last is None else req.last
    if not 0 <= lo <= store.key <= hi < store.count:
        raise BadInput(f"phases {lo}..{hi} must lie within 0..{store.count - 1} and hold the "
                       f"key phase {store.key} (propagation along t starts there)")
    if req.start is not None and req.start != store.key:
        raise BadInput(f"propagation along t starts on the key phase {store.key}, not on "
                       f"phase {req.start}")
    after = list(range(store.key + 1, hi + 1)) if req.direction != "backward" else []
    before = list(range(lo, store.key)) if req.direction != "forward" else []
    targets = before + after
    if not targets:
        raise BadInput(f"phases {lo}..{hi} ({req.direction}) hold no phase but the key phase "
                       f"{store.key}: nothing to propagate to")
    return targets


def key_slices(key_mask: np.ndarray, object_id: int) -> list[int]:
    """The axial slices that hold the object in the key phase (what is carried)."""
    slices = [int(z) for z in np.flatnonzero(key_mask.any(axis=(1, 2)))]
    if not slices:
        raise BadInput(f"object {object_id} is empty in the key phase: prompt it and propagate "
                       "it there (along k, j or i) before propagating along t")
    return slices


def carry_object(es: Session, store: PhaseStore, object_id: int, req: PropagateRequest,
                 progress: CarryProgress, cancel: threading.Event) -> bool:
    """Carry the object's key-phase slice masks through the requested phases; True if
    cancelled (the slices done so far are kept, streamed and stored alike)."""
    key_mask = es.mask(object_id)
    slices = key_slices(key_mask, object_id)
    targets = set(time_targets(store, req))
    # slices now empty in the key phase carry nothing any more (as segment_phases)
    store.clear(object_id, targets, set(range(key_mask.shape[0])) - set(slices))
    for z in slices:
        if cancel.is_set():
            return True
        video = Session(es.engine, np.ascontiguousarray(store.volume[:, z]))
        features = es.cache.get(("k", z))
        if features is not None:  # the same image: key slice z is the video's key frame
            video.cache.put(("k", store.key), features)
        video.add_prompt(object_id, "k", store.key, Prompt(mask=key_mask[z]))
        reached: set[int] = set()

        def step(result: SliceResult, z: int = z, reached: set[int] = reached) -> None:
            if result.index == store.key:
                return  # the key phase keeps its 3D result
            store.put(object_id, result.index, z, result.mask)
            reached.add(result.index)
            progress(result.index, z, result)

        report = video.propagate(object_id, "k", direction=req.direction,  # type: ignore[arg-type]
                                 first=req.first, last=req.last,
                                 stop_after_empty=req.stop_after_empty,
                                 converge_iou=req.converge_iou, progress=step, cancel=cancel)
        if report.cancelled:
            return True
        # phases a stop_after_empty left unreached hold nothing on this slice
        store.clear(object_id, targets - reached, {z})
    return False
