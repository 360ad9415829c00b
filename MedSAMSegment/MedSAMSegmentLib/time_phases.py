"""Propagate through time with 3D frames: a 4D CT (breathing or cardiac phases) loaded as a
volume sequence, the source volume being its browser's proxy.

Every phase goes to the server once, as one 3D + time session (capability "phases",
client ``upload_phases``) whose key phase is the frame the browser shows at the first
prompt. Boxes, points or a painted slice prompt a slice of the key phase in any aligned
view, as on an ordinary volume; "Propagate through time" propagates in 3D on the key phase
(along the axis of the last prompt), then carries it along t to the other phases (all, or a
range holding the key phase), streaming each (phase, slice) into the per-phase preview the
browser shows (time_sequence.TimePreview). Apply writes each phase's 3D mask into the
segmentation's sequence item, Undo apply takes the whole write back, Cancel stops within a
slice. ``routes_3d_frames`` sends TimeController's calls here when the frames are 3D, so the
effect uses the same buttons. Main thread only, Qt-free, like TimeController.
"""

from __future__ import annotations

import functools
import time
from collections.abc import Callable
from dataclasses import dataclass, field

import numpy as np
import slicer
from medsam_client.client import SESSION_GONE, MedSAMError, SessionHandle, slice_mask

from .controller import REDRAW_INTERVAL_S, UserError, error_text
from .geometry import (
    GeometryError,
    SliceFrame,
    box_on_slice,
    point_on_slice,
    slice_region,
    take_slice,
)
from .labelmaps import segment_array
from .panel_view import TimePanelState
from .preview import Preview
from .source_volume import display_window, guess_modality
from .tasks import Task
from .time_sequence import (
    AppliedWrite,
    TimeContext,
    TimePreview,
    edited_frames,
    frame_range,
    frame_slices,
    items_digest,
    phases_array,
    restore_frames,
    segment_template,
    segmentation_sequence,
    write_frames,
)
from .views import slice_frame


@dataclass
class PhaseObject:
    """One segment's result: its 3D mask in every phase, the phases it holds results for."""

    segment_id: str
    object_id: int
    masks: np.ndarray  # (phases, k, j, i) bool
    axis: str = "k"  # the last prompt's axis: the key phase propagates along it
    prompted: bool = False
    pending: set[int] = field(default_factory=set)  # phases with a result not yet applied


class PhasesServer:
    """The 3D + time session on the current backend (worker thread). A session the server
    lost is said, never rebuilt silently: its results live in the preview, not on the server."""

    def __init__(self, backend: Callable[[], object], volume: np.ndarray, key_phase: int,
                 spacing: tuple[float, ...], modality: str,
                 window: tuple[float, float] | None, name: str) -> None:
        self.backend, self.volume, self.key_phase = backend, volume, key_phase
        self.spacing, self.modality, self.window, self.name = spacing, modality, window, name
        self.handle: SessionHandle | None = None
        self._served_by: tuple[int, int] | None = None

    def call(self, fn: Callable[[object, SessionHandle], object]) -> object:
        backend = self.backend()
        client = backend.client()
        served_by = (id(backend), backend.generation)
        if self.handle is not None and served_by != self._served_by:
            self.handle = None
            raise UserError("the MedSAM2 server restarted or changed: its 3D + time session is "
                            "gone. Discard, then draw the box again")
        if self.handle is None:
            self.handle = client.upload_phases(self.volume, key_phase=self.key_phase,
                                               spacing=self.spacing, modality=self.modality,
                                               window=self.window, name=self.name)
            self._served_by = served_by
        try:
            return fn(client, self.handle)
        except MedSAMError as exc:
            if exc.code == SESSION_GONE:
                self.handle = None
                raise UserError("the MedSAM2 server no longer has the 3D + time session "
                                "(restarted or expired). Discard, then draw the box again") \
                    from exc
            raise

    def close(self) -> None:  # best effort: the server expires idle sessions itself
        handle, self.handle = self.handle, None
        if handle is not None:
            try:
                self.backend().client().close_session(handle, quiet=True)
            except MedSAMError:
                pass


class TimePhases:
    """TimeController's calls for 3D frames (``owner``: the TimeController, whose context,
    runner, backend, sequences logic, messages and settings it shares)."""

    def __init__(self, owner: object) -> None:
        self.o = owner
        self.clip: TimeContext | None = None
        self.key_phase = 0
        self.objects: dict[str, PhaseObject] = {}
        self.server: PhasesServer | None = None
        self.preview: TimePreview | None = None
        self.progress: tuple[int, int] | None = None
        self.applied: AppliedWrite | None = None
        self._templates: dict[str, slicer.vtkSegmentation] = {}
        self._propagation: Task | None = None
        self._dirty: dict[str, set[int]] = {}
        self._drawn_at = 0.0

    propagating = property(lambda self: self._propagation is not None)
    routes_prompts = staticmethod(lambda: True)  # boxes on 3D frames go through time too

    def object_of(self, segment_id: str | None) -> PhaseObject | None:
        return self.objects.get(segment_id) if segment_id else None

    review_queue = staticmethod(lambda limit=10: [])  # no per-phase review yet: scrub

    def set_opacity(self, opacity: float) -> None:
        if self.preview is not None:
            self.preview.preview.set_opacity(opacity)

    def panel_state(self) -> TimePanelState:
        source = self.o.source()
        t = TimePanelState(offered=True, frames=source.num_frames, frame_shown=source.frame_shown,
                           propagating=self.propagating, progress=self.progress,
                           can_undo_apply=self.applied is not None and not self.propagating)
        seg, segment_id = self.o.ctx.segmentation_node(), self.o.ctx.selected_segment_id()
        segment = seg.GetSegmentation().GetSegment(segment_id) \
            if seg is not None and segment_id else None
        t.segment = segment.GetName() if segment is not None else ""
        obj = self.object_of(segment_id)
        if obj is not None:
            t.prompted = [self.key_phase] if obj.prompted else []
            t.pending = len(obj.pending)
        return t

    def redraw(self) -> None:
        """Write changed phases into the preview's items (throttled while streaming)."""
        if self.clip is not None and self.clip.segmentation.GetScene() is None:
            self.o.on_message("The segmentation the MedSAM2 results were made for was removed; "
                              "they were discarded.", "info")
            self.close()
            return
        now = time.monotonic()
        if not self._dirty or (self.propagating and now - self._drawn_at < REDRAW_INTERVAL_S):
            return
        self._drawn_at = now
        dirty, self._dirty = self._dirty, {}
        empty = np.zeros(self.clip.shape[1:], bool)
        for segment_id, phases in sorted(dirty.items()):
            obj = self.objects.get(segment_id)
            self.preview.write(segment_id, {p: obj.masks[p] if obj is not None and p in
                                            obj.pending else empty for p in phases})
        self.o.on_change()

    # ---- prompts -------------------------------------------------------------------
    def prompt_box(self, slice_node: slicer.vtkMRMLSliceNode, p0: tuple[float, float],
                   p1: tuple[float, float]) -> bool:
        return self._prompt(slice_node, "box", lambda f: {
            "box": box_on_slice(f, p0, p1, self.clip.shape[1:])})

    def prompt_point(self, slice_node: slicer.vtkMRMLSliceNode, xy: tuple[float, float],
                     positive: bool) -> bool:
        return self._prompt(slice_node, "points", lambda f: {
            "points": [point_on_slice(f, xy, self.clip.shape[1:])],
            "point_labels": [1 if positive else 0]})

    def prompt_segment_slice(self, slice_node: slicer.vtkMRMLSliceNode) -> bool:
        def make(f: SliceFrame) -> dict:
            painted = take_slice(segment_array(self.o.ctx.segmentation_node(),
                                               self.o.ctx.selected_segment_id(),
                                               self.clip.reference), f.axis, f.index)
            if not painted.any():
                raise UserError(f"the segment is empty on this slice of phase {self.key_phase}:"
                                " paint it there first, then use it as the prompt")
            return {"mask": np.ascontiguousarray(painted)}
        return self._prompt(slice_node, "mask", make)

    def _prompt(self, slice_node: slicer.vtkMRMLSliceNode, kind: str,
                make: Callable[[SliceFrame], dict]) -> bool:
        try:
            segment_id = self._prepare()
            frame = slice_frame(slice_node, self.clip.reference,
                                self.clip.source.proxy.GetParentTransformNode())
            args = make(frame)
        except (UserError, GeometryError, MedSAMError, ValueError) as exc:
            self.o.on_message(error_text(exc), "warning")
            return False
        if segment_id not in self._templates:  # names, colours, terminology as they are now
            self._templates[segment_id] = segment_template(self.clip.segmentation)
        obj = self.objects.get(segment_id) or PhaseObject(
            segment_id, max([o.object_id for o in self.objects.values()], default=0) + 1,
            np.zeros(self.clip.shape, bool))
        self.objects[segment_id] = obj
        server, key, clip = self.server, self.key_phase, self.clip
        if self.propagating:
            self.o.on_message("The prompt will run when the propagation ends (or Cancel it).",
                              "info")

        def work(task: Task) -> tuple:
            update = server.call(lambda c, h: c.prompt(h, obj.object_id, frame.axis,
                                                       frame.index, phase=key, **args))
            return slice_mask(update), update.iou

        def done(result: tuple) -> None:
            if self.clip is not clip:
                return  # the clip changed meanwhile
            obj.masks[key][slice_region(frame.axis, frame.index)] = result[0]
            obj.prompted, obj.axis = True, frame.axis
            obj.pending.add(key)
            self._dirty.setdefault(segment_id, set()).add(key)
            self.o.on_message(f"Phase {key}, {frame.axis} {frame.index}: predicted IoU "
                              f"{result[1]:.2f}. Correct it, or Propagate through time.", "info")

        def failed(exc: BaseException) -> None:
            if self.objects.get(segment_id) is obj and not obj.prompted:
                del self.objects[segment_id]
            self._error(exc)

        self.o._submit(Task(f"{kind} on phase {key}", work, done, failed))
        return True

    # ---- propagation ---------------------------------------------------------------
    def propagate(self, first: int | None = None, last: int | None = None) -> bool:
        """3D on the key phase, then along t to phases ``first``..``last`` (all by default)."""
        try:
            segment_id = self._prepare()
            obj = self.objects.get(segment_id)
            if obj is None or not obj.prompted:
                raise UserError(f"draw a box on phase {self.key_phase} of this segment first")
            if self.propagating:
                raise UserError("a propagation is already running: wait or Cancel it")
            lo, hi = frame_range(self.clip.shape[0], self.key_phase, first, last)
        except (UserError, MedSAMError, ValueError) as exc:
            self.o.on_message(error_text(exc), "warning")
            return False
        server, key, clip, started = self.server, self.key_phase, self.clip, time.monotonic()
        self.progress = (0, 0)
        # the phases carried to get this run's slices only: their old results go
        targets = [p for p in range(lo, hi + 1) if p != key]
        obj.masks[targets] = False
        obj.pending.update(range(lo, hi + 1))
        self._dirty.setdefault(segment_id, set()).update(targets)

        def work(task: Task) -> str:
            def on_update(u: object) -> None:
                task.post(self._on_slice, clip, obj, key if u.phase is None else u.phase,
                          u.axis, u.index, slice_mask(u))

            def on_job(job: object) -> None:
                task.post(self._on_job, job.done_slices, job.total_slices)

            job = server.call(lambda c, h: c.propagate(
                h, [obj.object_id], axis=obj.axis, on_update=on_update, on_job=on_job,
                cancel=task.cancel_event, poll_wait=0.5))
            if job.state != "done" or len(targets) == 0:
                return job.state
            return server.call(lambda c, h: c.propagate_phases(
                h, [obj.object_id], first=lo, last=hi, on_update=on_update, on_job=on_job,
                cancel=task.cancel_event, poll_wait=0.5)).state

        def finish(state: str | None, error: BaseException | None = None) -> None:
            self._propagation, self.progress = None, None
            if error is not None:
                self._error(error)
            elif state != "done":
                self.o.on_message("Propagation cancelled; the slices done so far are in the "
                                  "preview.", "info")
            else:
                self.o.on_message(f"Propagated phase {key} in 3D and phases {lo}..{hi} in "
                                  f"{time.monotonic() - started:.1f} s. Scrub the browser, "
                                  "then Apply.", "info")
            self.o.on_change()

        self._propagation = self.o._submit(Task(
            "propagate 3D + time", work, on_done=finish,
            on_error=lambda exc: finish(None, exc), on_cancelled=lambda: finish("cancelled")))
        self.o.on_change()
        return True

    def cancel(self) -> None:
        if self._propagation is not None:
            self._propagation.cancel()
            self.o.on_message("Cancelling…", "info")

    def _on_slice(self, clip: TimeContext, obj: PhaseObject, phase: int, axis: str,
                  index: int, mask: np.ndarray) -> None:
        if self.clip is clip and self.objects.get(obj.segment_id) is obj:
            obj.masks[phase][slice_region(axis, index)] = mask
            self._dirty.setdefault(obj.segment_id, set()).add(phase)

    def _on_job(self, done: int, total: int) -> None:
        if self._propagation is not None:
            self.progress = (done, total)
            self.o.on_change()

    # ---- apply / undo / discard ----------------------------------------------------
    def apply(self, replace: bool = True, all_segments: bool = False) -> int:
        """Write each phase's 3D mask of the selected segment into its sequence item."""
        if self.propagating:
            self.o.on_message("Wait for the propagation to end (or Cancel it) before Apply.",
                              "warning")
            return 0
        if not replace or all_segments:
            self.o.on_message("Through time, Apply replaces the selected segment on the phases "
                              "of its result; choose 'Replace' and apply each segment.", "warning")
            return 0
        obj = self.object_of(self.o.ctx.selected_segment_id())
        if obj is None or not obj.pending:
            self.o.on_message("There is no MedSAM2 result to apply.", "info")
            return 0
        clip = self.clip
        if self.o.ctx.segmentation_node() is not clip.segmentation or self.o.source() is None \
                or self.o._key(self.o.source(), clip.segmentation) != clip.key:
            self.o.on_message("The MedSAM2 results were made for another segmentation or 4D "
                              "volume; select them again, or Discard the results.", "error")
            return 0
        phases = sorted(obj.pending)
        try:
            sequence = segmentation_sequence(self.o.logic, clip.source, clip.segmentation)
            before = write_frames(self.o.logic, clip.source, sequence,
                                  self._templates[obj.segment_id], obj.segment_id,
                                  {p: obj.masks[p] for p in phases})
        except ValueError as exc:
            self.o.on_message(error_text(exc), "error")
            return 0
        self.applied = AppliedWrite(obj.segment_id, sequence, before,
                                    items_digest(clip.source, sequence, phases))
        obj.pending.clear()
        self._dirty.setdefault(obj.segment_id, set()).update(phases)  # the preview empties
        self.redraw()
        self.o.on_message(f"Applied {len(phases)} phase(s) to the segmentation's sequence. "
                          "'Undo apply through time' takes all of them back.", "info")
        return len(phases)

    def undo_apply(self) -> bool:
        applied, clip = self.applied, self.clip
        if applied is None or clip is None:
            self.o.on_message("There is no Apply through time to undo.", "info")
            return False
        edited = edited_frames(clip.source, applied)
        if edited:
            self.o.on_message(f"Phase(s) {', '.join(map(str, edited[:8]))} were edited after "
                              "the Apply; undoing it would lose those edits, so it was not "
                              "undone.", "error")
            return False
        restore_frames(self.o.logic, clip.source, applied.sequence, applied.before)
        self.applied = None
        self.o.on_message(f"Apply through time undone on {len(applied.written)} phase(s).",
                          "info")
        self.o.on_change()
        return True

    def discard(self, all_segments: bool = False) -> None:
        objs = list(self.objects.values()) if all_segments else \
            [o for o in [self.object_of(self.o.ctx.selected_segment_id())] if o is not None]
        for obj in objs:
            del self.objects[obj.segment_id]
            self._dirty.setdefault(obj.segment_id, set()).update(obj.pending)
            server, oid = self.server, obj.object_id
            if obj.prompted:  # else the server never heard of it
                self.o._submit(Task("discard", lambda task, s=server, o=oid: s.call(
                    lambda c, h: c.delete_object(h, o)), on_error=self._error))
        if objs:
            self.redraw()
            self.o.on_message("MedSAM2 result discarded.", "info")
        self.o.on_change()

    # ---- session and clip ----------------------------------------------------------
    def close(self) -> None:
        if self._propagation is not None:
            self._propagation.cancel()
        self._propagation, self.progress = None, None
        if self.server is not None:
            server = self.server
            self.o._submit(Task("close session", lambda task: server.close()))
        if self.preview is not None:
            self.preview.drop()
        self.clip = self.server = self.preview = None
        self.objects, self.applied, self._templates, self._dirty = {}, None, {}, {}

    def _prepare(self) -> str:
        seg, source = self.o.ctx.segmentation_node(), self.o.source()
        if seg is None or source is None:
            raise UserError("select a segmentation and a source volume that a sequence browser "
                            "plays")
        segment_id = self.o.ctx.selected_segment_id()
        if not segment_id or seg.GetSegmentation().GetSegment(segment_id) is None:
            raise UserError("add or select a segment first: MedSAM2 segments into it")
        shown = source.frame_shown
        if not 0 <= shown < source.num_frames:
            raise UserError("the browser shows no phase; select one first")
        key = self.o._key(source, seg)
        if self.clip is not None and key == self.clip.key and shown == self.key_phase:
            return segment_id
        if any(o.pending for o in self.objects.values()):
            raise UserError(f"prompts go on phase {self.key_phase}, where the first box was "
                            "drawn: show that phase, or Apply or Discard the results first")
        volume = phases_array(source)
        modality = self.o.settings.modality
        modality = guess_modality(volume) if modality == "auto" else modality
        self.close()
        self.key_phase = shown
        reference = slicer.vtkSlicerSegmentationsModuleLogic \
            .CreateOrientedImageDataFromVolumeNode(source.proxy)
        self.clip = TimeContext(key, source, seg, reference, tuple(volume.shape))
        self.preview = TimePreview(self.o.logic, self.clip, Preview(self.o.ctx.scene(), seg))
        self.server = PhasesServer(
            self.o.backend, volume, shown, tuple(float(v) for v in reference.GetSpacing()),
            modality, display_window(source.proxy) if modality == "ct" else None,
            source.sequence.GetName())
        return segment_id

    def _error(self, exc: BaseException) -> None:
        self.o.on_message(error_text(exc), "error")
        self.o.on_change()


ROUTED = ("routes_prompts", "object_of", "panel_state", "prompt_box", "prompt_point",
          "prompt_segment_slice", "propagate", "cancel", "apply", "undo_apply", "discard",
          "review_queue", "set_opacity")


def phases_of(ctl: object, create: bool = True) -> TimePhases | None:
    """The TimePhases of a TimeController whose source frames are 3D (None otherwise)."""
    source = ctl.source()
    if source is None or frame_slices(source) <= 1:
        return None
    if "_phases" not in vars(ctl) and create:
        ctl._phases = TimePhases(ctl)
    return vars(ctl).get("_phases")


def routes_3d_frames(cls: type) -> type:
    """TimeController's class decorator: with 3D frames, ROUTED calls go to its TimePhases;
    pump, close and ``propagating`` cover both (a run goes on if the user looks elsewhere)."""
    def route(name: str) -> Callable:
        own = getattr(cls, name)

        @functools.wraps(own)
        def routed(self: object, *args: object, **kw: object) -> object:
            phases = phases_of(self)
            return getattr(phases, name)(*args, **kw) if phases is not None \
                else own(self, *args, **kw)
        return routed

    for name in ROUTED:
        setattr(cls, name, route(name))
    own_pump, own_close, own_propagating = cls.pump, cls.close, cls.propagating.fget

    def pump(self: object) -> int:
        n = own_pump(self)  # drains the shared runner: both paths' results
        if "_phases" in vars(self):
            self._phases.redraw()
        return n

    def close(self: object) -> None:
        own_close(self)
        if "_phases" in vars(self):
            self._phases.close()

    cls.pump, cls.close = pump, close
    cls.propagating = property(lambda self: own_propagating(self) or (
        "_phases" in vars(self) and self._phases.propagating))
    return cls
