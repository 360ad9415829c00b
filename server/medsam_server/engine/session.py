"""One volume, its objects, their prompts and results, and propagation through slices.

The default recipe is MedSAM2's ``medsam2_infer_3D_CT.py``: a box on the key slice,
propagate to the end, then (with a fresh memory) the same box propagated in reverse;
each slice's mask is ``logits > 0`` after bilinear upsampling. A pass here always
starts from a fresh memory holding the object's prompted (conditioning) slices on
that axis, which is exactly what the reference's reset between directions gives.

Corrections: a new prompt on any slice makes that slice a conditioning slice; the next
``propagate`` re-runs only from the changed slices, and on slices that already had a
result it stops as soon as the new mask matches the old one (``converge_iou``), so
results elsewhere are kept.

Undo: each prompt opens an undo entry that remembers, the first time each slice changes
(the prompt's own slice, then every slice a propagation rewrites), what that slice held
before; ``undo`` takes the last prompt back and restores those slices exactly, so the
object is as it was just before that prompt.

Threads: one thread (the model worker) changes a session. ``memory()`` may be read from
any thread: it reads counters kept up to date by that one thread, never the dicts.
"""

from __future__ import annotations

import threading
from collections.abc import Callable
from dataclasses import dataclass, field
from typing import Literal

import numpy as np
import torch

from .engine import Engine, StepOutput, upsample_logits
from .features import return_freed_memory, tensor_nbytes, tensors_nbytes
from .preprocess import axis_index, is_colour, model_input, slice_shape
from .prompts import Prompt, PromptError, check_slice_prompt, merge_points
from .propagation import PropagationPlan, PropagationReport, mask_iou, tracked_through
from .undo import SliceBefore, UndoEntry, UndoReport

Direction = Literal["both", "forward", "backward"]


@dataclass
class SliceResult:
    """What a prompt or a propagated slice produced (also passed to progress callbacks)."""

    object_id: int
    axis: str
    index: int
    mask: np.ndarray  # bool, slice shape
    iou: float
    object_score: float


@dataclass
class _AxisState:
    prompts: dict[int, Prompt] = field(default_factory=dict)
    cond: dict[int, StepOutput] = field(default_factory=dict)  # prompted slices' outputs
    lowres: dict[int, torch.Tensor] = field(default_factory=dict)  # last logits per slice
    scores: dict[int, tuple[float, float]] = field(default_factory=dict)  # (iou, object score)
    pending: set[int] = field(default_factory=set)  # prompted since the last propagation
    # slices whose result came from a propagation that finished (not cancelled): only
    # these count as "had a result" when a correction decides where to stop
    settled: set[int] = field(default_factory=set)


@dataclass
class _Object:
    mask: np.ndarray  # bool volume
    axes: dict[str, _AxisState] = field(default_factory=dict)
    undo: list[UndoEntry] = field(default_factory=list)  # oldest first


class Cancelled(Exception):
    """Raised inside a pass when the cancel event is set (caught by ``propagate``)."""


class Session:
    """State for one preprocessed uint8 volume: feature cache, objects, results.

    ``volume_u8`` is (k, j, i) grey, or (frames, rows, columns, 3) RGB colour frames
    (``preprocess.is_colour``), which are segmented along the frame axis k only.

    ``undo_depth``: prompts per object that ``undo`` can take back (older ones are forgotten).
    """

    def __init__(self, engine: Engine, volume_u8: np.ndarray, *, undo_depth: int = 16) -> None:
        if volume_u8.dtype != np.uint8 or not (volume_u8.ndim == 3 or is_colour(volume_u8)):
            raise ValueError("a session needs a 3D uint8 volume (see preprocess.window_to_uint8) "
                             "or (frames, rows, columns, 3) uint8 colour frames")
        if min(volume_u8.shape) < 1:
            raise ValueError(f"empty volume shape {volume_u8.shape}")
        if undo_depth < 0:
            raise ValueError(f"undo_depth must be >= 0, got {undo_depth}")
        self.engine = engine
        self.volume = volume_u8
        self.colour = is_colour(volume_u8)
        self.shape: tuple[int, int, int] = tuple(volume_u8.shape[:3])  # type: ignore[assignment]
        self.cache = engine.new_cache()
        self.undo_depth = undo_depth
        self._objects: dict[int, _Object] = {}
        # kept by the model thread, read by any (see memory())
        self._object_count = 0
        self._logits_bytes = 0
        self._undo_bytes = 0

    # ---- queries -------------------------------------------------------------------
    @property
    def object_ids(self) -> list[int]:
        return sorted(self._objects)

    def mask(self, object_id: int) -> np.ndarray:
        """The object's boolean volume (a copy)."""
        return self._object(object_id).mask.copy()

    def slice_mask(self, object_id: int, axis: str, index: int) -> np.ndarray:
        return np.take(self._object(object_id).mask, index, axis=axis_index(axis)).copy()

    def slice_logits(self, object_id: int, axis: str, index: int) -> np.ndarray | None:
        """Latest logits of a slice at slice resolution (None if never computed)."""
        state = self._object(object_id).axes.get(axis)
        lowres = state.lowres.get(index) if state else None
        return None if lowres is None else upsample_logits(lowres, self.slice_shape(axis))

    def slice_scores(self, object_id: int, axis: str, index: int) -> tuple[float, float] | None:
        """(iou, object score) of the slice's latest result (None if never computed)."""
        state = self._object(object_id).axes.get(axis)
        return state.scores.get(index) if state else None

    def undo_left(self, object_id: int) -> int:
        """Prompts of the object that ``undo`` can take back."""
        return len(self._object(object_id).undo)

    def memory(self) -> dict[str, int]:
        """Bytes this session holds, by kind. Safe from any thread: counters only."""
        return {"volumes": int(self.volume.nbytes), "features": int(self.cache.nbytes),
                "masks": self._object_count * int(np.prod(self.shape)),
                "logits": self._logits_bytes, "undo": self._undo_bytes}

    def slice_shape(self, axis: str) -> tuple[int, int]:
        return slice_shape(self.shape, axis)

    def num_slices(self, axis: str) -> int:
        return self.shape[axis_index(axis)]

    # ---- editing -------------------------------------------------------------------
    def check_prompt(self, axis: str, index: int, prompt: Prompt) -> Prompt:
        """Validate a prompt for a slice without running the model (clipped box returned)."""
        if self.colour and axis != "k":
            raise PromptError(f"colour frames are segmented along time (axis k), not axis {axis}")
        return check_slice_prompt(self.shape, axis, index, prompt)

    def add_prompt(self, object_id: int, axis: str, index: int, prompt: Prompt) -> SliceResult:
        """Prompt one slice and return its mask at once (no propagation).

        A box or mask replaces that slice's earlier prompt; points alone are added to it
        and refine the slice's current result (SAM-style, via its previous logits).
        """
        if not isinstance(object_id, int) or object_id < 1:
            raise PromptError(f"object id must be a positive integer, got {object_id!r}")
        prompt = self.check_prompt(axis, index, prompt)
        rows_cols = self.slice_shape(axis)
        obj = self._objects.get(object_id)
        other = [a for a, st in obj.axes.items() if st.prompts and a != axis] if obj else []
        if other:  # one 3D mask per object: passes along two axes would overwrite each other
            raise PromptError(f"object {object_id} is segmented along axis {other[0]}; delete it "
                              f"or use a new object id to work along axis {axis}")
        state = obj.axes.get(axis) if obj else None
        merged = merge_points(state.prompts.get(index) if state else None, prompt)
        prev = None
        if not prompt.is_mask and prompt.box is None and state is not None:
            prev = state.lowres.get(index)  # refine what the user sees on this slice
        out = self.engine.prompt_step(self._features(axis, index), merged, rows_cols,
                                      index, self.num_slices(axis), prev)
        # only now, after the model ran, change state: a failure leaves nothing half-done
        created_object = obj is None
        if obj is None:
            obj = self._objects[object_id] = _Object(mask=np.zeros(self.shape, dtype=bool))
            self._object_count += 1
        created_axis = axis not in obj.axes
        state = obj.axes.setdefault(axis, _AxisState())
        self._open_undo(obj, UndoEntry(
            axis, index, _kind(prompt), state.prompts.get(index), state.cond.get(index),
            set(state.pending), set(state.settled), created_object, created_axis))
        state.prompts[index] = merged
        state.cond[index] = out
        state.pending.add(index)
        result = self._store(obj, state, object_id, axis, index, out)
        return result

    def remove_object(self, object_id: int) -> None:
        obj = self._object(object_id)
        del self._objects[object_id]
        self._object_count -= 1
        self._logits_bytes -= sum(tensor_nbytes(t) for st in obj.axes.values()
                                  for t in st.lowres.values())
        self._undo_bytes -= sum(e.nbytes for e in obj.undo)

    def undo(self, object_id: int) -> UndoReport:
        """Take back the object's last prompt: that slice, and every slice changed since
        (by propagations), become exactly what they were before it; so do the object's
        prompts and what the next ``propagate`` starts from. An object that the prompt
        created is removed. PromptError when there is nothing to take back."""
        obj = self._object(object_id)
        if not obj.undo:
            raise PromptError(f"object {object_id} has no prompt to undo (at most the last "
                              f"{self.undo_depth} prompts of an object can be taken back)")
        entry = obj.undo.pop()
        self._undo_bytes -= entry.nbytes
        slices = sorted(entry.slices)
        if entry.created_object:
            self.remove_object(object_id)
            return UndoReport(object_id, entry.axis, entry.index, entry.kind, slices, True, 0)
        state = obj.axes[entry.axis]
        for index, before in entry.slices.items():
            before.restore_into(self._slice_view(obj, entry.axis, index))
            self._set_lowres(state, index, before.lowres)
            if before.scores is None:
                state.scores.pop(index, None)
            else:
                state.scores[index] = before.scores
        for store, value in ((state.prompts, entry.prompt), (state.cond, entry.cond)):
            if value is None:
                store.pop(entry.index, None)
            else:
                store[entry.index] = value
        state.pending, state.settled = entry.pending, entry.settled
        if entry.created_axis:  # every slice it touched is restored: nothing is left there
            del obj.axes[entry.axis]
        return UndoReport(object_id, entry.axis, entry.index, entry.kind, slices, False,
                          len(obj.undo))

    def plan_propagation(self, object_id: int, axis: str | None = None, *,
                         direction: Direction = "both", start: int | None = None,
                         first: int | None = None, last: int | None = None,
                         stop_after_empty: int = 0) -> PropagationPlan:
        """Check a propagation request and say what it would do; changes nothing.

        Start slices: ``start`` if given, else the slices prompted since the last
        propagation that lie in the range, else every prompted slice in the range.
        """
        obj = self._object(object_id)
        axis = axis or self._only_axis(obj, object_id)
        state = obj.axes.get(axis)
        if state is None or not state.prompts:
            raise PromptError(f"object {object_id} has no prompt on axis {axis}: draw a box first")
        if direction not in ("both", "forward", "backward"):
            raise PromptError(f"direction must be both, forward or backward, not {direction!r}")
        if stop_after_empty < 0:
            raise PromptError("stop_after_empty must be >= 0")
        n = self.num_slices(axis)
        lo = 0 if first is None else first
        hi = n - 1 if last is None else last
        if not 0 <= lo <= hi < n:
            raise PromptError(f"range {lo}..{hi} is not within 0..{n - 1} along axis {axis}")
        if start is not None:
            if start not in state.prompts:
                raise PromptError(f"slice {start} has no prompt for object {object_id}")
            candidates = [start]
        else:
            candidates = sorted(state.pending) if state.pending & set(range(lo, hi + 1)) \
                else sorted(state.prompts)
        starts = tuple(s for s in candidates if lo <= s <= hi)
        if not starts:
            raise PromptError(f"no prompted slice of object {object_id} lies in {lo}..{hi}")
        steps = {"forward": (1,), "backward": (-1,), "both": (1, -1)}[direction]
        return PropagationPlan(axis, starts, lo, hi, steps)

    def propagate(self, object_id: int, axis: str | None = None, *,
                  direction: Direction = "both", start: int | None = None,
                  first: int | None = None, last: int | None = None,
                  stop_after_empty: int = 0, converge_iou: float = 0.98,
                  progress: Callable[[SliceResult], None] | None = None,
                  cancel: threading.Event | None = None) -> PropagationReport:
        """Propagate an object's prompts through its slices (see ``plan_propagation``).

        ``first``/``last``: inclusive range limits. ``stop_after_empty``: stop a direction
        after that many consecutive slices the model says hold no object (0 = never, the
        reference behaviour). ``converge_iou``: for a correction, stop a direction at the
        first slice that already had a result and whose new mask matches it with at least
        this IoU.
        """
        plan = self.plan_propagation(object_id, axis, direction=direction, start=start,
                                     first=first, last=last, stop_after_empty=stop_after_empty)
        obj = self._object(object_id)
        axis, starts, lo, hi, steps = plan.axis, plan.starts, plan.first, plan.last, plan.steps
        state = obj.axes[axis]
        # a correction only re-propagates as far as the result changes
        tracked_before = set(state.settled)
        report = PropagationReport(object_id, axis, [])
        try:
            for s in starts:
                for step in steps:
                    end = hi if step > 0 else lo
                    self._run_pass(obj, state, object_id, axis, s, step, end, tracked_before,
                                   stop_after_empty, converge_iou, progress, cancel, report)
        except Cancelled:
            report.cancelled = True
            return report  # prompts stay pending, so the next propagate redoes them
        state.pending.difference_update(starts)
        state.settled.update(report.slices)
        return report

    # ---- internals -----------------------------------------------------------------
    def _run_pass(self, obj: _Object, state: _AxisState, object_id: int, axis: str,
                  start: int, step: int, end: int, tracked_before: set[int],
                  stop_after_empty: int, converge_iou: float,
                  progress: Callable[[SliceResult], None] | None,
                  cancel: threading.Event | None, report: PropagationReport) -> None:
        n = self.num_slices(axis)
        memory: dict[str, dict[int, dict]] = {
            "cond_frame_outputs": {i: o.memory for i, o in state.cond.items()},
            "non_cond_frame_outputs": {},
        }
        if start not in report.slices:  # the key slice is reported once, not once per pass
            report.slices.append(start)
            self._emit(progress, object_id, axis, start, state.cond[start], obj)
        empty_run = 0
        for index in range(start + step, end + step, step):
            if index in state.prompts:
                break  # that slice's own prompt rules from there on
            if cancel is not None and cancel.is_set():
                raise Cancelled
            old = self._slice(obj, axis, index) if index in tracked_before else None
            fpn = self._features_ahead(axis, index, step, end, state.prompts)
            out = self.engine.track_step(fpn, memory, index, n, reverse=step < 0)
            memory["non_cond_frame_outputs"][index] = out.memory
            result = self._store(obj, state, object_id, axis, index, out)
            report.slices.append(index)
            if progress is not None:
                progress(result)
            empty_run = empty_run + 1 if out.object_score <= 0.5 else 0
            if stop_after_empty and empty_run >= stop_after_empty:
                break
            if (old is not None and mask_iou(old, result.mask) >= converge_iou
                    and tracked_through(state.prompts, tracked_before, index, step, end)):
                break  # unchanged, and every slice after it already has its result

    def release_features(self) -> int:
        """Drop every cached slice feature (they are encoded again if needed) and give the
        memory back to the OS; returns the bytes the cache held."""
        freed = self.cache.nbytes
        self.cache.clear()
        return_freed_memory()
        return freed

    def prefetch(self, axis: str, index: int, *, max_bytes: int | None = None) -> bool:
        """Encode a slice into the feature cache ahead of need (the service's focus, while
        the user draws); returns whether it encoded. Only when absent and when it fits
        without evicting anything (the cache's budget, and ``max_bytes`` more at most):
        work done on a guess must never push out features a prompt or a job uses."""
        if (axis, index) in self.cache:
            return False

        def fits(nbytes: int) -> bool:
            return self.cache.has_room(nbytes) and (max_bytes is None or nbytes <= max_bytes)

        # every slice's features have one size: the cached ones say it before encoding
        if len(self.cache) and not fits(self.cache.nbytes // len(self.cache)):
            return False
        fpn = self.engine.encode(model_input(self.volume, axis, index, self.engine.image_size))
        if not fits(tensors_nbytes(fpn)):
            return False
        self.cache.put((axis, index), fpn)
        return True

    def _features(self, axis: str, index: int) -> list[torch.Tensor]:
        key = (axis, index)
        fpn = self.cache.get(key)
        if fpn is None:
            fpn = self.engine.encode(model_input(self.volume, axis, index, self.engine.image_size))
            self.cache.put(key, fpn)
        return fpn

    def _features_ahead(self, axis: str, index: int, step: int, end: int,
                        prompts: dict[int, Prompt]) -> list[torch.Tensor]:
        """``index``'s features; on a miss, also those of the next slices of this pass not
        yet cached, encoded together in one batch (the encoder needs no memory, so it can
        run ahead of the chain). A batch is at most ``engine.encode_batch`` slices and as
        many as the cache holds, so a stop condition wastes at most that much work and the
        batch never evicts its own slices."""
        size = self.engine.encode_batch
        per_slice = self.engine.slice_feature_bytes
        if size > 1:  # never more than the cache holds (unknown size: one by one)
            size = min(size, self.cache.budget_bytes // per_slice) if per_slice else 1
        if size <= 1 or (axis, index) in self.cache:
            return self._features(axis, index)
        todo = [index]
        nxt = index + step
        # the pass ends at ``end`` or at the next prompted slice
        while len(todo) < size and (nxt - end) * step <= 0 and nxt not in prompts:
            if (axis, nxt) not in self.cache:
                todo.append(nxt)
            nxt += step
        if len(todo) == 1:
            return self._features(axis, index)
        px = self.engine.image_size
        fpns = self.engine.encode_many([model_input(self.volume, axis, i, px) for i in todo])
        for i, f in zip(todo, fpns, strict=True):
            self.cache.put((axis, i), f)
        return fpns[0]

    def _store(self, obj: _Object, state: _AxisState, object_id: int, axis: str, index: int,
               out: StepOutput) -> SliceResult:
        mask = out.mask(self.slice_shape(axis))
        view = self._slice_view(obj, axis, index)
        entry = obj.undo[-1] if obj.undo else None
        if entry is not None and index not in entry.slices:  # what undo gives back
            before = SliceBefore.of(view, state.lowres.get(index), state.scores.get(index))
            entry.slices[index] = before
            entry.nbytes += before.nbytes
            self._undo_bytes += before.nbytes
        view[...] = mask
        self._set_lowres(state, index, out.lowres)
        state.scores[index] = (out.iou, out.object_score)
        return SliceResult(object_id, axis, index, mask, out.iou, out.object_score)

    def _set_lowres(self, state: _AxisState, index: int, lowres: torch.Tensor | None) -> None:
        old = state.lowres.pop(index, None)
        if old is not None:
            self._logits_bytes -= tensor_nbytes(old)
        if lowres is not None:
            state.lowres[index] = lowres
            self._logits_bytes += tensor_nbytes(lowres)

    def _open_undo(self, obj: _Object, entry: UndoEntry) -> None:
        if self.undo_depth == 0:
            return
        obj.undo.append(entry)
        while len(obj.undo) > self.undo_depth:  # forget the oldest prompt's history
            self._undo_bytes -= obj.undo.pop(0).nbytes

    def _emit(self, progress: Callable[[SliceResult], None] | None, object_id: int, axis: str,
              index: int, out: StepOutput, obj: _Object) -> None:
        if progress is not None:
            progress(SliceResult(object_id, axis, index, self._slice(obj, axis, index),
                                 out.iou, out.object_score))

    def _slice_view(self, obj: _Object, axis: str, index: int) -> np.ndarray:
        ax = axis_index(axis)
        sl: list[slice | int] = [slice(None)] * 3
        sl[ax] = index
        return obj.mask[tuple(sl)]

    def _slice(self, obj: _Object, axis: str, index: int) -> np.ndarray:
        return self._slice_view(obj, axis, index).copy()

    def _object(self, object_id: int) -> _Object:
        try:
            return self._objects[object_id]
        except KeyError:
            raise PromptError(
                f"unknown object {object_id}; objects in this session: {self.object_ids}"
            ) from None

    def _only_axis(self, obj: _Object, object_id: int) -> str:
        axes = [a for a, s in obj.axes.items() if s.prompts]
        if len(axes) != 1:
            raise PromptError(f"object {object_id} has prompts on axes {axes}: name the axis")
        return axes[0]


def _kind(prompt: Prompt) -> str:
    return "mask" if prompt.is_mask else "box" if prompt.box is not None else "points"
