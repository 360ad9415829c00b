"""The effect's logic: everything the MedSAM2 effect does, except Qt (MRML layer).

Main thread. The Qt adaptor (SegmentEditorEffect.py) turns mouse and button events
into calls here and calls ``pump()`` from a timer; tests call the same methods on a
slicer-core scene. Model work goes to the worker thread (tasks.py) through one
ServerSession per source volume; its results come back through ``pump()`` into the
annotation state and the preview. Every failure ends as a message (``on_message``),
never as an exception into Qt and never as a silent fallback.
"""

from __future__ import annotations

import logging
import time
from collections.abc import Callable
from dataclasses import dataclass

import numpy as np
import slicer
from medsam_client.client import MedSAMError, slice_mask

from .annotation import AnnotationError, AnnotationState, ObjectState, ReviewItem
from .annotation_log import AnnotationLog, prompt_fields
from .backend import Backend
from .editor import EditorContext, WriteError, write_result
from .focus import FocusSender
from .geometry import GeometryError, SliceFrame, box_on_slice, point_on_slice, take_slice
from .labelmaps import segment_array
from .preview import Preview
from .provenance import provenance_tags
from .server_session import PromptOp, PropagateOp, ServerSession, VolumeUpload
from .source_volume import VolumeContext, capture, display_window, fingerprint, window_change
from .tasks import Task, TaskRunner
from .views import jump_views, shown_slice, slice_frame

log = logging.getLogger(__name__)
Message = Callable[[str, str], None]  # (text, level: "info" | "warning" | "error")
REDRAW_INTERVAL_S = 0.5


class UserError(Exception):
    """Something the user can fix; shown as is."""


@dataclass
class Settings:
    modality: str = "auto"  # auto, ct, mr
    stall_timeout_s: float = 300.0


class Controller:
    def __init__(self, ctx: EditorContext, runner: TaskRunner, backend: Callable[[], Backend],
                 *, on_message: Message, on_change: Callable[[], None] | None = None,
                 log_file: AnnotationLog | None = None, settings: Settings | None = None) -> None:
        self.ctx = ctx
        self.runner = runner
        self.backend = backend
        self.on_message = on_message
        self.on_change = on_change or (lambda: None)
        self.log = log_file
        self.settings = settings or Settings()
        self.volume: VolumeContext | None = None
        self.state: AnnotationState | None = None
        self.session: ServerSession | None = None
        self.preview: Preview | None = None
        self.progress: tuple[int, int] | None = None  # (done, total) while propagating
        self._propagation: Task | None = None
        self._dirty: set[str] = set()  # segments whose preview needs redrawing
        self._tasks: list[Task] = []
        self._drawn_at = 0.0
        self._focus = FocusSender(runner)

    # ---- status --------------------------------------------------------------------
    @property
    def busy(self) -> bool:
        return self.runner.busy

    @property
    def propagating(self) -> bool:
        return self._propagation is not None

    def object_of(self, segment_id: str | None) -> ObjectState | None:
        return self.state.get(segment_id) if self.state is not None and segment_id else None

    def pump(self) -> int:
        """Apply what the worker sent back, redraw changed previews (main thread, timer).

        Previews redraw at most every ``REDRAW_INTERVAL_S`` while a propagation streams (a
        redraw copies the whole pending result): a fast GPU server cannot stutter the GUI.
        """
        n = self.runner.drain()
        if self._forget_if_orphaned():
            return n
        now = time.monotonic()
        if self.propagating and now - self._drawn_at < REDRAW_INTERVAL_S:
            return n
        if self._dirty and self.state is not None and self.volume is not None:
            self._drawn_at = now
            for segment_id in sorted(self._dirty):
                obj = self.state.get(segment_id)
                if obj is not None:
                    self._preview().show(segment_id, obj.pending_mask(), self.volume.reference)
            self._dirty.clear()
            self.on_change()
        return n

    # ---- prompts -------------------------------------------------------------------
    def prompt_box(self, slice_node: slicer.vtkMRMLSliceNode, p0: tuple[float, float],
                   p1: tuple[float, float]) -> bool:
        """A box drawn from view pixel p0 to p1; its slice's mask appears in the preview."""
        def make(frame: SliceFrame, obj: ObjectState) -> PromptOp:
            box = box_on_slice(frame, p0, p1, self.volume.shape)
            return PromptOp(obj.object_id, frame.axis, frame.index, box=box, kind="box")
        return self._prompt(slice_node, make)

    def prompt_point(self, slice_node: slicer.vtkMRMLSliceNode, xy: tuple[float, float],
                     positive: bool) -> bool:
        """A + (object) or - (background) point refining that slice's mask."""
        def make(frame: SliceFrame, obj: ObjectState) -> PromptOp:
            x, y = point_on_slice(frame, xy, self.volume.shape)
            return PromptOp(obj.object_id, frame.axis, frame.index, points=((x, y),),
                            labels=(1 if positive else 0,), kind="points")
        return self._prompt(slice_node, make)

    def prompt_segment_slice(self, slice_node: slicer.vtkMRMLSliceNode) -> bool:
        """Use the segment as painted on the view's slice as the prompt for that slice."""
        def make(frame: SliceFrame, obj: ObjectState) -> PromptOp:
            painted = segment_array(self.ctx.segmentation_node(), obj.segment_id,
                                    self.volume.reference)
            mask = np.ascontiguousarray(take_slice(painted, frame.axis, frame.index))
            if not mask.any():
                raise UserError(f"the segment is empty on slice {frame.index}: paint it there "
                                "first (Paint/Erase), then use it as the prompt")
            return PromptOp(obj.object_id, frame.axis, frame.index, mask=mask, kind="mask")
        return self._prompt(slice_node, make)

    def _prompt(self, slice_node: slicer.vtkMRMLSliceNode,
                make: Callable[[SliceFrame, ObjectState], PromptOp]) -> bool:
        try:
            segment_id = self._prepare()
            frame = slice_frame(slice_node, self.volume.reference, self._transform())
            created = self.state.get(segment_id) is None
            obj = self.state.object_for(segment_id, frame.axis)
            try:
                op = make(frame, obj)
            except Exception:
                if created:
                    self.state.remove(segment_id)
                raise
        except (UserError, GeometryError, AnnotationError, MedSAMError, ValueError) as exc:
            self.on_message(error_text(exc), "warning")
            return False
        if changed := window_change(self.ctx.source_volume_node(), self.volume.upload):
            self.on_message(changed, "info")
        session, state = self.session, self.state
        if self.propagating:
            self.on_message("The prompt will run when the propagation ends (or Cancel it).",
                            "info")

        def work(task: Task) -> tuple:
            update = session.prompt(op)
            return slice_mask(update), update.iou, update.object_score, session.pop_replay()

        def done(result: tuple) -> None:
            mask2d, iou, score, replay = result
            self._handle_replay(replay)
            if self.state is not state:
                return  # the volume changed meanwhile; that result belongs to the old one
            state.record_prompt(obj, op.index, op.kind)
            obj.unpropagated.add(op.index)
            state.apply_slice(obj, op.axis, op.index, mask2d, iou, score)
            self._dirty.add(obj.segment_id)
            self._log(op.kind, obj, axis=op.axis, slice=op.index, **prompt_fields(op))
            self.on_message(f"Slice {op.index}: predicted IoU {iou:.2f}. Add points or boxes to "
                            "correct it, or Propagate.", "info")

        def failed(exc: BaseException) -> None:
            if self.state is state and not obj.prompted and not obj.pending:
                state.remove(obj.segment_id)  # its first prompt failed: no object after all
            self._error(exc)

        self._submit(Task(f"{op.kind} on slice {op.index}", work, done, failed))
        return True

    # ---- propagation ---------------------------------------------------------------
    def propagate(self, direction: str = "both", first: int | None = None,
                  last: int | None = None, stop_after_empty: int = 0,
                  all_segments: bool = False) -> bool:
        """Propagate the selected segment's prompts (or every segment's new prompts)."""
        try:
            segment_id = self._prepare()
            if all_segments:
                objs = [o for o in self.state.objects() if o.unpropagated]
                if not objs:
                    raise UserError("no segment has new prompts to propagate")
            else:
                obj = self.state.get(segment_id)
                if obj is None or not obj.prompted:
                    raise UserError("draw a box on a slice of this segment first")
                objs = [obj]
            if self.propagating:
                raise UserError("a propagation is already running: wait or Cancel it")
        except (UserError, MedSAMError, ValueError) as exc:
            self.on_message(error_text(exc), "warning")
            return False
        by_axis: dict[str, list[ObjectState]] = {}
        for obj in objs:
            by_axis.setdefault(obj.axis, []).append(obj)
        ops = [PropagateOp(tuple(o.object_id for o in group), axis, direction, first, last,
                           stop_after_empty) for axis, group in by_axis.items()]
        session, state = self.session, self.state
        started = time.monotonic()
        self.progress = (0, 0)

        def work(task: Task) -> tuple:
            def on_update(update: object) -> None:
                task.post(self._on_slice, state, update.object_id, update.axis, update.index,
                          slice_mask(update), update.iou, update.object_score)

            def on_job(job: object) -> None:
                task.post(self._on_job, job.done_slices, job.total_slices)

            jobs = []
            for op in ops:
                task.check_cancelled()
                jobs.append(session.propagate(op, on_update=on_update, on_job=on_job,
                                              cancel=task.cancel_event))
            return jobs, session.pop_replay()

        def finish(jobs: list, replay: object, error: BaseException | None,
                   cancelled: bool = False) -> None:
            self._propagation, self.progress = None, None
            self._handle_replay(replay)
            cancelled = cancelled or any(j.state == "cancelled" for j in jobs)
            state_ = "failed" if error else ("cancelled" if cancelled else "done")
            n = sum(len(j.updates) for j in jobs)
            if self.state is state:
                for op in ops:
                    for oid in op.object_ids:
                        o = state.by_object_id(oid)
                        if o is None:
                            continue
                        if state_ == "done":
                            o.unpropagated.clear()
                            o.propagated = True
                        self._log("propagate", o, axis=op.axis, direction=op.direction,
                                  first=op.first, last=op.last, slices=n, state=state_,
                                  seconds=time.monotonic() - started)
            if error is not None:
                self._error(error)
            elif state_ == "cancelled":
                self.on_message(f"Propagation cancelled after {n} slice(s); the slices done so "
                                "far are in the preview.", "info")
            else:
                self.on_message(f"Propagated {n} slice(s) in {time.monotonic() - started:.1f} s. "
                                "Check the slices listed under Review, then Apply.", "info")
            self.on_change()

        self._propagation = self._submit(Task(
            "propagate", work,
            on_done=lambda result: finish(result[0], result[1], None),
            on_error=lambda exc: finish([], None, exc),
            on_cancelled=lambda: finish([], None, None, cancelled=True)))
        self.on_change()
        return True

    def cancel(self) -> None:
        """Stop a running propagation within a slice; finished slices stay in the preview."""
        if self._propagation is not None:
            self._propagation.cancel()
            self.on_message("Cancelling…", "info")

    def _on_slice(self, state: AnnotationState, object_id: int, axis: str, index: int,
                  mask2d: np.ndarray, iou: float, score: float) -> None:
        if self.state is not state:
            return
        obj = state.by_object_id(object_id)
        if obj is not None:
            state.apply_slice(obj, axis, index, mask2d, iou, score)
            self._dirty.add(obj.segment_id)

    def _on_job(self, done: int, total: int) -> None:
        if self._propagation is not None:
            self.progress = (done, total)
            self.on_change()

    # ---- apply / discard -----------------------------------------------------------
    def apply(self, replace: bool = True, all_segments: bool = False) -> int:
        """Write pending results into their segments (one Undo step); returns slices written."""
        if self.propagating:
            self.on_message("Wait for the propagation to end (or Cancel it) before Apply.",
                            "warning")
            return 0
        objs = [o for o in self._targets(all_segments) if o.pending]
        if not objs:
            self.on_message("There is no MedSAM2 result to apply.", "info")
            return 0
        if not self._results_are_current():
            self.on_message("The MedSAM2 results were made for another segmentation or another "
                            "state of the source volume; they cannot be applied here. Select "
                            "that segmentation and volume again, or Discard them.", "error")
            return 0
        self.ctx.save_state_for_undo()
        written = 0
        for obj in objs:
            try:
                voxels = write_result(self.ctx, obj.segment_id, obj.mask, obj.axis, obj.pending,
                                      self.volume.reference, replace=replace, tags=provenance_tags(
                                          self.session.server_info, obj.prompts))
            except WriteError as exc:
                self.on_message(str(exc), "error")
                continue
            slices = self.state.mark_applied(obj)
            written += len(slices)
            self._dirty.add(obj.segment_id)
            self._log("apply", obj, mode="replace" if replace else "add", slices=len(slices),
                      voxels=voxels, seconds_since_first_prompt=time.time() - obj.first_prompt_at)
        self.pump()
        if written:
            self.on_message(f"Applied {written} slice(s); Undo restores the segment. Further "
                            "boxes or points on this segment correct it and re-propagate.", "info")
        return written

    def discard(self, all_segments: bool = False) -> None:
        """Forget the MedSAM2 result and prompts of the segment(s); segments stay as they are."""
        objs = self._targets(all_segments)
        for obj in objs:
            self.state.remove(obj.segment_id)
            if self.preview is not None:
                self.preview.remove(obj.segment_id)
            self._log("discard", obj, slices=len(obj.pending))
            session, oid = self.session, obj.object_id
            self._submit(Task("discard", lambda task, s=session, o=oid: s.delete_object(o),
                                    on_error=self._error))
        if objs:
            self.on_message("MedSAM2 result discarded.", "info")
        self.on_change()

    def _targets(self, all_segments: bool) -> list[ObjectState]:
        if all_segments:
            return self.state.objects() if self.state is not None else []
        obj = self.object_of(self.ctx.selected_segment_id())
        return [obj] if obj is not None else []

    # ---- review --------------------------------------------------------------------
    def review_queue(self, limit: int = 10) -> list[ReviewItem]:
        if self.state is None:
            return []
        return self.state.review_queue(self.ctx.selected_segment_id() or "", limit)

    def jump_to(self, slice_nodes: list[slicer.vtkMRMLSliceNode], index: int) -> int:
        obj = self.object_of(self.ctx.selected_segment_id())
        if obj is None or obj.axis is None or self.volume is None:
            return 0
        return jump_views(slice_nodes, self.volume.reference, obj.axis, index, self._transform())

    def focus_view(self, slice_node: slicer.vtkMRMLSliceNode) -> bool:
        """The user scrolled or entered a view: the server encodes its slice ahead (focus.py)."""
        if self.volume is None or self.session is None or not self.session.ready \
                or self.propagating:  # a propagation encodes what it needs itself
            return False
        target = shown_slice(slice_node, self.volume.reference, self._transform())
        return target is not None and self._focus.send(self.session, *target)

    # ---- session and volume --------------------------------------------------------
    def use_view_window(self, modality: str | None = None) -> None:
        """Re-send the volume (as ``modality``, default as now) in the view's CT window; replay."""
        if modality is not None:
            self.settings.modality = modality
        if self.volume is None:
            return  # the next box captures the volume with these settings
        up = self.volume.upload
        modality = up.modality if modality in (None, "auto") else modality
        window = display_window(self.ctx.source_volume_node()) if modality == "ct" else None
        if (modality, window) == (up.modality, up.window):
            return
        self.volume.upload = VolumeUpload(up.array, up.spacing, modality, window, up.name)
        session, upload = self.session, self.volume.upload
        self._submit(Task("new intensity", lambda task: session.replace_volume(upload),
                                on_error=self._error))
        seen = (f"CT through window level {window[0]:g} / width {window[1]:g}"
                if modality == "ct" else "MR, normalised")
        self.on_message(f"MedSAM2 now sees the volume as {seen}; new prompts and propagations "
                        "use it (earlier results are kept).", "info")

    def _submit(self, task: Task) -> Task:
        """Run on the (shared) worker thread; this controller cancels only its own tasks."""
        self._tasks = [t for t in self._tasks if t.state in ("queued", "running")]
        self._tasks.append(task)
        return self.runner.submit(task)

    def close(self) -> None:
        """The effect goes away: stop work, free the server session, remove the preview."""
        for task in self._tasks:
            task.cancel()
        self._propagation, self.progress = None, None
        if self.session is not None:
            session = self.session
            self._submit(Task("close session", lambda task: session.close()))
        if self.preview is not None:
            self.preview.clear()
        self.volume = self.state = self.session = self.preview = None

    def _prepare(self) -> str:
        """Check the editor's nodes and (re)make the volume context; returns the segment id."""
        seg, source = self.ctx.segmentation_node(), self.ctx.source_volume_node()
        if seg is None or source is None:
            raise UserError("select a segmentation and a source volume in the Segment Editor")
        segment_id = self.ctx.selected_segment_id()
        if not segment_id or seg.GetSegmentation().GetSegment(segment_id) is None:
            raise UserError("add or select a segment first: MedSAM2 segments into it")
        fp = fingerprint(source, seg)
        if self.volume is not None and fp == self.volume.fingerprint \
                and seg is self.volume.segmentation:
            return segment_id
        self._forget_if_orphaned()
        if self.state is not None and self.state.has_pending():
            made_for = self.volume.segmentation.GetName()
            raise UserError(f"MedSAM2 results made for segmentation '{made_for}' are not applied, "
                            "and the source volume, the segmentation or its geometry changed "
                            "since: Apply them (with that segmentation and volume selected as "
                            "they were) or Discard them first")
        image = self.ctx.source_image()
        if image is None:
            raise UserError("the Segment Editor has no source image yet; select a source volume")
        upload, reference = capture(image, source, self.settings.modality)
        if self.session is not None:
            old = self.session
            self._submit(Task("close old session", lambda task: old.close()))
        if self.preview is not None:
            self.preview.clear()
        shape = upload.array.shape
        self.volume = VolumeContext(fp, seg, reference, shape, upload, source.GetName())
        self.state = AnnotationState(shape)
        self.preview = Preview(self.ctx.scene(), seg)
        self.session = ServerSession(self.backend, upload, stall_timeout=self.settings.stall_timeout_s,
                                     notify=lambda text: self.runner.post(self.on_message, text,
                                                                          "warning"))
        return segment_id

    def _forget_if_orphaned(self) -> bool:
        """Drop results whose segmentation left the scene (deleted, scene closed)."""
        if self.volume is None or self.volume.segmentation.GetScene() is not None:
            return False
        self.on_message("The segmentation the MedSAM2 results were made for was removed; "
                        "they were discarded.", "info")
        self.close()
        self.on_change()
        return True

    def _results_are_current(self) -> bool:
        """Are the results for the editor's segmentation and source volume as they are now?"""
        seg, source = self.ctx.segmentation_node(), self.ctx.source_volume_node()
        return (self.volume is not None and seg is self.volume.segmentation
                and source is not None and fingerprint(source, seg) == self.volume.fingerprint)

    def _transform(self) -> slicer.vtkMRMLTransformNode | None:
        seg = self.ctx.segmentation_node()
        return seg.GetParentTransformNode() if seg is not None else None

    def _preview(self) -> Preview:
        if self.preview is None:
            self.preview = Preview(self.ctx.scene(), self.ctx.segmentation_node())
        return self.preview

    def _handle_replay(self, replay: object) -> None:
        if replay is None or self.state is None:
            return
        differing = self.state.differing_slices(replay.masks)
        for obj in self.state.objects():
            self._log("replay", obj, prompts=replay.prompts, propagations=replay.propagations,
                      differing_slices=differing)
        if differing:
            self.on_message(f"Session restored; the server's results differ from yours on "
                            f"{differing} slice(s). Yours are kept.", "warning")
        else:
            self.on_message("Session restored; the server's results equal yours.", "info")

    def _log(self, event: str, obj: ObjectState, **fields: object) -> None:
        if self.log is None:
            return
        seg = self.ctx.segmentation_node()
        segment = seg.GetSegmentation().GetSegment(obj.segment_id) if seg is not None else None
        try:
            self.log.write(event, volume=self.volume.name if self.volume else "",
                           segment=segment.GetName() if segment is not None else obj.segment_id,
                           object_id=obj.object_id, **fields)
        except OSError as exc:  # the log must never stop the work; say it once per failure
            self.on_message(f"cannot write the annotation log {self.log.path}: {exc}", "warning")

    def _error(self, exc: BaseException) -> None:
        self.on_message(error_text(exc), "error")
        self.on_change()


def error_text(exc: BaseException) -> str:
    """The line the panel shows for EXC: the server's own message where it sent one."""
    text = exc.message if isinstance(exc, MedSAMError) else str(exc)
    return text[:1].upper() + text[1:] if text else type(exc).__name__

