"""What the user has done with MedSAM2 on one volume: objects, results, review order.

Pure numpy, main thread only. Each Segment Editor segment the user prompts gets one
MedSAM2 object (a positive integer id, stable for the session). Its results live here
as a boolean volume on the source image grid; slices changed since the last Apply are
"pending": they are what the preview shows and what Apply writes.
"""

from __future__ import annotations

import time
from dataclasses import dataclass, field

import numpy as np

from .geometry import AXES, slice_region


@dataclass(frozen=True)
class ReviewItem:
    """One slice to check: the model's own estimate of how good its mask is there."""

    index: int
    iou: float
    object_score: float
    voxels: int


@dataclass
class ObjectState:
    object_id: int
    segment_id: str
    shape: tuple[int, int, int]
    axis: str | None = None  # the slicing axis, fixed by the first prompt
    mask: np.ndarray = field(init=False)  # every result, applied or not
    pending: set[int] = field(default_factory=set)  # slices not yet applied
    scores: dict[int, tuple[float, float]] = field(default_factory=dict)  # iou, object score
    prompted: dict[int, str] = field(default_factory=dict)  # slice -> "box"/"points"/"mask"
    unpropagated: set[int] = field(default_factory=set)  # prompted since the last propagation
    first_prompt_at: float | None = None  # for the annotation log's time-to-apply
    prompts: int = 0  # boxes, point sets and mask prompts given (the provenance tags')
    propagated: bool = False

    def __post_init__(self) -> None:
        self.mask = np.zeros(self.shape, dtype=bool)

    def pending_mask(self) -> np.ndarray:
        """The results of the pending slices only (what the preview shows)."""
        out = np.zeros(self.shape, dtype=bool)
        if self.axis is None:
            return out
        for index in self.pending:
            region = slice_region(self.axis, index)
            out[region] = self.mask[region]
        return out


class AnnotationError(ValueError):
    """A request that does not fit the current annotation (message says what to do)."""


class AnnotationState:
    """All objects of one source volume."""

    def __init__(self, shape: tuple[int, int, int]) -> None:
        self.shape = tuple(int(v) for v in shape)
        self._objects: dict[str, ObjectState] = {}
        self._next_id = 1

    # ---- objects -------------------------------------------------------------------
    def get(self, segment_id: str) -> ObjectState | None:
        return self._objects.get(segment_id)

    def objects(self) -> list[ObjectState]:
        return sorted(self._objects.values(), key=lambda o: o.object_id)

    def by_object_id(self, object_id: int) -> ObjectState | None:
        return next((o for o in self._objects.values() if o.object_id == object_id), None)

    def object_for(self, segment_id: str, axis: str) -> ObjectState:
        """The segment's object, created on first use; its axis must match."""
        obj = self._objects.get(segment_id)
        if obj is None:
            obj = ObjectState(self._next_id, segment_id, self.shape, axis)
            self._next_id += 1
            self._objects[segment_id] = obj
        elif obj.axis is not None and obj.axis != axis:
            raise AnnotationError(
                f"this segment is being segmented slice by slice along the volume's {axis_name(obj.axis)} "
                f"axis; draw its prompts in a view showing those slices, or Discard its MedSAM2 "
                "result to start again in this view")
        return obj

    def remove(self, segment_id: str) -> ObjectState | None:
        return self._objects.pop(segment_id, None)

    def has_pending(self) -> bool:
        return any(o.pending for o in self._objects.values())

    # ---- results -------------------------------------------------------------------
    def record_prompt(self, obj: ObjectState, index: int, kind: str) -> None:
        obj.prompted[index] = kind
        obj.prompts += 1
        if obj.first_prompt_at is None:
            obj.first_prompt_at = time.time()

    def apply_slice(self, obj: ObjectState, axis: str, index: int, mask2d: np.ndarray,
                    iou: float, object_score: float) -> bool:
        """Store one slice result; True if the slice's mask changed."""
        if obj.axis is None:
            obj.axis = axis
        if axis != obj.axis:
            raise AnnotationError(f"result on axis {axis} for an object on axis {obj.axis}")
        region = slice_region(axis, index)
        old = obj.mask[region]
        if old.shape != mask2d.shape:
            raise AnnotationError(f"slice mask shape {mask2d.shape} does not match {old.shape}")
        changed = not np.array_equal(old, mask2d)
        obj.mask[region] = mask2d
        obj.pending.add(index)
        obj.scores[index] = (float(iou), float(object_score))
        return changed

    def mark_applied(self, obj: ObjectState) -> set[int]:
        applied, obj.pending = obj.pending, set()
        return applied

    def discard_pending(self, obj: ObjectState) -> None:
        obj.pending.clear()

    def differing_slices(self, masks: dict[int, np.ndarray]) -> int:
        """How many slices of the objects differ from ``masks`` (object id -> volume)."""
        differing = 0
        for object_id, mask in masks.items():
            obj = self.by_object_id(object_id)
            if obj is None or obj.axis is None or mask.shape != obj.mask.shape:
                continue
            axes = tuple(a for a in range(3) if a != AXES.index(obj.axis))
            differing += int(np.count_nonzero(np.any(mask != obj.mask, axis=axes)))
        return differing

    # ---- review --------------------------------------------------------------------
    def review_queue(self, segment_id: str, limit: int = 10) -> list[ReviewItem]:
        """The object's slices to check first: lowest predicted IoU, then lowest score.

        Only slices holding a mask are listed: empty slices at the ends of a structure
        are expected; a low-confidence mask is what deserves a look.
        """
        obj = self._objects.get(segment_id)
        if obj is None or obj.axis is None:
            return []
        items = []
        for index, (iou, score) in obj.scores.items():
            voxels = int(np.count_nonzero(obj.mask[slice_region(obj.axis, index)]))
            if voxels:
                items.append(ReviewItem(index, iou, score, voxels))
        items.sort(key=lambda it: (it.iou, it.object_score, it.index))
        return items[:limit]


def axis_name(axis: str) -> str:
    """How a user knows an array axis: by the slices a standard volume shows along it."""
    return {"k": "K (axial for most scans)", "j": "J (coronal for most scans)",
            "i": "I (sagittal for most scans)"}[axis]
