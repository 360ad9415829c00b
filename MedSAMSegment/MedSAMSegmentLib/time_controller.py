"""Propagate through time: the effect's logic when the source volume is a browser's proxy.

A cine, an echo recording or any volume sequence of 2D frames: the frames go to the
server once, as one time session (capability "time", axis "t"); a box or points drawn on
the frame the browser shows prompt that frame; "Propagate through time" streams the other
frames (all, or a range holding the prompted frame) into a preview that the browser
itself shows frame by frame (time_sequence.bind_preview), so the user can scrub or play
while it runs. Apply writes every frame of the result into the segmentation's own
sequence (time_sequence.write_frames); ``undo_apply`` takes that whole write back.

Composed from the spatial path's pieces (EditorContext, TaskRunner, ServerSession,
AnnotationState, Preview), main thread only, Qt-free: the effect calls it exactly as it
calls Controller. Frames are stored as slices along "k" of a (frames, rows, columns)
AnnotationState; the wire calls that axis "t". Corrections re-propagate only the frames
they change: the server starts from the frames prompted since the last run and stops each
direction at the next prompted frame, the range end, or where the result stops changing.
"""

from __future__ import annotations

import time
from collections.abc import Callable

import numpy as np
import slicer
from medsam_client.client import MedSAMError, slice_mask

from .annotation import AnnotationError, AnnotationState, ObjectState
from .annotation_log import AnnotationLog, prompt_fields
from .backend import Backend
from .controller import REDRAW_INTERVAL_S, Message, Settings, UserError, error_text
from .editor import EditorContext
from .geometry import GeometryError, SliceFrame, box_on_slice, point_on_slice
from .labelmaps import segment_array
from .panel_view import TimePanelState
from .preview import Preview
from .server_session import PromptOp, PropagateOp, ServerSession
from .source_volume import display_window
from .tasks import Task, TaskRunner
from .time_frames import FrameFlag, frames_upload, review_frames, time_panel_state
from .time_phases import routes_3d_frames
from .time_sequence import (
    AppliedWrite,
    TimeContext,
    TimePreview,
    TimeSource,
    edited_frames,
    frame_range,
    frame_slices,
    frames_array,
    items_digest,
    restore_frames,
    segment_template,
    segmentation_sequence,
    time_source,
    write_frames,
)
from .views import slice_frame


def routes_to_time(scene: slicer.vtkMRMLScene,
                   volume_node: slicer.vtkMRMLScalarVolumeNode | None) -> bool:
    """Do prompts on this source volume go through time (a proxy of 2D frames)?"""
    source = time_source(scene, volume_node)
    return source is not None and frame_slices(source) == 1


@routes_3d_frames  # 3D frames (a 4D CT): the calls go to time_phases.TimePhases
class TimeController:
    def __init__(self, ctx: EditorContext, runner: TaskRunner, backend: Callable[[], Backend],
                 sequences_logic: slicer.vtkSlicerSequencesLogic, *, on_message: Message,
                 on_change: Callable[[], None] | None = None,
                 log_file: AnnotationLog | None = None, settings: Settings | None = None) -> None:
        self.ctx = ctx
        self.runner = runner
        self.backend = backend
        self.logic = sequences_logic
        self.on_message = on_message
        self.on_change = on_change or (lambda: None)
        self.log = log_file
        self.settings = settings or Settings()
        self.clip: TimeContext | None = None
        self.state: AnnotationState | None = None
        self.session: ServerSession | None = None
        self.preview: TimePreview | None = None
        self.progress: tuple[int, int] | None = None
        self.last_run: list[int] = []  # frames the last propagation streamed, in order
        self.applied: AppliedWrite | None = None
        self._templates: dict[str, slicer.vtkSegmentation] = {}  # segment -> at first prompt
        self._propagation: Task | None = None
        self._dirty: dict[str, set[int]] = {}  # segment -> frames the preview must redraw
        self._tasks: list[Task] = []
        self._drawn_at = 0.0

    # ---- status --------------------------------------------------------------------
    def source(self) -> TimeSource | None:
        """The browser playing the editor's source volume (None: an ordinary volume)."""
        return time_source(self.ctx.scene(), self.ctx.source_volume_node())

    def offered(self) -> bool:
        """Is "Propagate through time" offered (the source volume is a browser's proxy)?"""
        return self.source() is not None

    def routes_prompts(self) -> bool:
        """Do boxes and points go through time (a proxy of 2D frames)?"""
        return routes_to_time(self.ctx.scene(), self.ctx.source_volume_node())

    @property
    def busy(self) -> bool:
        return self.runner.busy

    @property
    def propagating(self) -> bool:
        return self._propagation is not None

    def object_of(self, segment_id: str | None) -> ObjectState | None:
        return self.state.get(segment_id) if self.state is not None and segment_id else None

    def panel_state(self) -> TimePanelState:
        """What the panel's "Through time" group shows (panel_view.time_view decides how)."""
        return time_panel_state(self, self.source())

    def pump(self) -> int:
        """Apply what the worker sent back; write changed frames into the preview's items
        (at most every REDRAW_INTERVAL_S while streaming: a fast server cannot stutter)."""
        n = self.runner.drain()
        if self.clip is not None and self.clip.segmentation.GetScene() is None:
            self.on_message("The segmentation the MedSAM2 results were made for was removed; "
                            "they were discarded.", "info")
            self.close()
            self.on_change()
            return n
        now = time.monotonic()
        if self.propagating and now - self._drawn_at < REDRAW_INTERVAL_S:
            return n
        if self._dirty and self.state is not None:
            self._drawn_at = now
            dirty, self._dirty = self._dirty, {}
            for segment_id, frames in sorted(dirty.items()):
                obj = self.state.get(segment_id)
                empty = np.zeros(self.clip.shape[1:], bool)
                self.preview.write(segment_id, {f: obj.mask[f] if obj is not None and
                                                f in obj.pending else empty for f in frames})
            self.on_change()
        return n

    # ---- prompts -------------------------------------------------------------------
    def prompt_box(self, slice_node: slicer.vtkMRMLSliceNode, p0: tuple[float, float],
                   p1: tuple[float, float]) -> bool:
        """A box on the frame the browser shows; that frame's mask appears in the preview."""
        def make(frame: SliceFrame, obj: ObjectState, t: int) -> PromptOp:
            box = box_on_slice(frame, p0, p1, (1, *self.clip.shape[1:]))
            return PromptOp(obj.object_id, "t", t, box=box, kind="box")
        return self._prompt(slice_node, make)

    def prompt_point(self, slice_node: slicer.vtkMRMLSliceNode, xy: tuple[float, float],
                     positive: bool) -> bool:
        """A + or - point refining the mask of the frame shown."""
        def make(frame: SliceFrame, obj: ObjectState, t: int) -> PromptOp:
            x, y = point_on_slice(frame, xy, (1, *self.clip.shape[1:]))
            return PromptOp(obj.object_id, "t", t, points=((x, y),),
                            labels=(1 if positive else 0,), kind="points")
        return self._prompt(slice_node, make)

    def prompt_segment_slice(self, slice_node: slicer.vtkMRMLSliceNode) -> bool:
        """The segment as painted on the frame shown becomes that frame's prompt."""
        def make(frame: SliceFrame, obj: ObjectState, t: int) -> PromptOp:
            painted = segment_array(self.ctx.segmentation_node(), obj.segment_id,
                                    self.clip.reference)[0]
            if not painted.any():
                raise UserError(f"the segment is empty on frame {t}: paint it there first "
                                "(Paint/Erase), then use it as the prompt")
            return PromptOp(obj.object_id, "t", t, mask=np.ascontiguousarray(painted),
                            kind="mask")
        return self._prompt(slice_node, make)

    def _prompt(self, slice_node: slicer.vtkMRMLSliceNode,
                make: Callable[[SliceFrame, ObjectState, int], PromptOp]) -> bool:
        try:
            segment_id = self._prepare()
            clip = self.clip
            frame = slice_frame(slice_node, clip.reference,
                                clip.source.proxy.GetParentTransformNode())
            if frame.axis != "k":
                raise GeometryError("this view cuts across the frames; draw in a view that "
                                    "shows a whole frame (the frames' own plane)")
            t = clip.source.frame_shown
            if not 0 <= t < clip.shape[0]:
                raise UserError("the browser shows no frame; select one first")
            created = self.state.get(segment_id) is None
            obj = self.state.object_for(segment_id, "k")
            try:
                op = make(frame, obj, t)
            except Exception:
                if created:
                    self.state.remove(segment_id)
                raise
        except (UserError, GeometryError, AnnotationError, MedSAMError, ValueError) as exc:
            self.on_message(error_text(exc), "warning")
            return False
        if segment_id not in self._templates:  # names, colours, terminology as they are now
            self._templates[segment_id] = segment_template(clip.segmentation)
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
                return  # the clip changed meanwhile
            state.record_prompt(obj, op.index, op.kind)
            obj.unpropagated.add(op.index)
            state.apply_slice(obj, "k", op.index, mask2d, iou, score)
            self._dirty.setdefault(obj.segment_id, set()).add(op.index)
            self._log(op.kind, obj, axis="t", slice=op.index, **prompt_fields(op))
            self.on_message(f"Frame {op.index}: predicted IoU {iou:.2f}. Add points or boxes "
                            "to correct it, or Propagate through time.", "info")

        def failed(exc: BaseException) -> None:
            if self.state is state and not obj.prompted and not obj.pending:
                state.remove(obj.segment_id)
            self._error(exc)

        self._submit(Task(f"{op.kind} on frame {op.index}", work, done, failed))
        return True

    # ---- propagation ---------------------------------------------------------------
    def propagate(self, first: int | None = None, last: int | None = None) -> bool:
        """Propagate the selected segment through all frames or ``first``..``last``."""
        try:
            segment_id = self._prepare()
            obj = self.state.get(segment_id)
            if obj is None or not obj.prompted:
                raise UserError("draw a box on a frame of this segment first")
            if self.propagating:
                raise UserError("a propagation is already running: wait or Cancel it")
            n = self.clip.shape[0]
            starts = sorted(obj.unpropagated or obj.prompted)
            inside = [f for f in starts if (first is None or f >= first)
                      and (last is None or f <= last)]
            lo, hi = frame_range(n, (inside or starts)[0], first, last)
        except (UserError, MedSAMError, ValueError) as exc:
            self.on_message(error_text(exc), "warning")
            return False
        op = PropagateOp((obj.object_id,), "t", "both", lo, hi, 0)
        session, state = self.session, self.state
        started = time.monotonic()
        self.progress, self.last_run = (0, 0), []

        def work(task: Task) -> tuple:
            def on_update(update: object) -> None:
                task.post(self._on_frame, state, update.object_id, update.index,
                          slice_mask(update), update.iou, update.object_score)

            def on_job(job: object) -> None:
                task.post(self._on_job, job.done_slices, job.total_slices)

            return session.propagate(op, on_update=on_update, on_job=on_job,
                                     cancel=task.cancel_event), session.pop_replay()

        def finish(job: object | None, error: BaseException | None,
                   cancelled: bool = False, replay: object = None) -> None:
            self._propagation, self.progress = None, None
            self._handle_replay(replay)
            cancelled = cancelled or (job is not None and job.state == "cancelled")
            outcome = "failed" if error else ("cancelled" if cancelled else "done")
            count = len(self.last_run)
            if self.state is state:
                if outcome == "done":
                    obj.unpropagated.clear()
                    obj.propagated = True
                self._log("propagate", obj, axis="t", first=lo, last=hi, slices=count,
                          state=outcome, seconds=time.monotonic() - started)
            if error is not None:
                self._error(error)
            elif cancelled:
                self.on_message(f"Propagation cancelled after {count} frame(s); the frames done "
                                "so far are in the preview.", "info")
            else:
                self.on_message(f"Propagated {count} frame(s) of {lo}..{hi} in "
                                f"{time.monotonic() - started:.1f} s. Scrub the browser or "
                                "check the frames listed under Review, then Apply.", "info")
            self.on_change()

        self._propagation = self._submit(Task(
            "propagate through time", work,
            on_done=lambda result: finish(result[0], None, replay=result[1]),
            on_error=lambda exc: finish(None, exc),
            on_cancelled=lambda: finish(None, None, cancelled=True)))
        self.on_change()
        return True

    def cancel(self) -> None:
        """Stop a running propagation within a frame; frames done stay in the preview."""
        if self._propagation is not None:
            self._propagation.cancel()
            self.on_message("Cancelling…", "info")

    def _on_frame(self, state: AnnotationState, object_id: int, index: int,
                  mask2d: np.ndarray, iou: float, score: float) -> None:
        if self.state is not state:
            return
        obj = state.by_object_id(object_id)
        if obj is not None:
            state.apply_slice(obj, "k", index, mask2d, iou, score)
            self._dirty.setdefault(obj.segment_id, set()).add(index)
            self.last_run.append(index)

    def _on_job(self, done: int, total: int) -> None:
        if self._propagation is not None:
            self.progress = (done, total)
            self.on_change()

    # ---- apply / undo / discard ----------------------------------------------------
    def apply(self, replace: bool = True, all_segments: bool = False) -> int:
        """Write every frame of the selected segment's result into the segmentation's
        sequence (other segments kept); returns frames written. ``replace``: a frame's
        segment becomes the result (adding is not offered through time: refused)."""
        if self.propagating:
            self.on_message("Wait for the propagation to end (or Cancel it) before Apply.",
                            "warning")
            return 0
        if not replace or all_segments:
            self.on_message("Through time, Apply replaces the selected segment on the frames "
                            "of its result; choose 'Replace' and apply each segment.", "warning")
            return 0
        obj = self.object_of(self.ctx.selected_segment_id())
        if obj is None or not obj.pending:
            self.on_message("There is no MedSAM2 result to apply.", "info")
            return 0
        clip = self.clip
        if self.ctx.segmentation_node() is not clip.segmentation or self.source() is None \
                or self._key(self.source(), clip.segmentation) != clip.key:
            self.on_message("The MedSAM2 results were made for another segmentation or clip; "
                            "select them again, or Discard the results.", "error")
            return 0
        try:
            sequence = segmentation_sequence(self.logic, clip.source, clip.segmentation)
            frames = sorted(obj.pending)
            # no save_state_for_undo: the browser gives the proxy the written item, and the
            # Segment Editor clears its undo history when that happens (docs/slicer.md)
            before = write_frames(self.logic, clip.source, sequence,
                                  self._templates[obj.segment_id], obj.segment_id,
                                  {f: obj.mask[f] for f in frames})
        except ValueError as exc:
            self.on_message(error_text(exc), "error")
            return 0
        self.applied = AppliedWrite(obj.segment_id, sequence, before,
                                    items_digest(clip.source, sequence, frames))
        self.state.mark_applied(obj)
        self._dirty.setdefault(obj.segment_id, set()).update(frames)  # the preview empties
        self._log("apply", obj, mode="replace", slices=len(frames),
                  seconds_since_first_prompt=time.time() - obj.first_prompt_at)
        self.pump()
        self.on_message(f"Applied {len(frames)} frame(s) to the segmentation's sequence. "
                        "'Undo apply through time' takes all of them back.", "info")
        return len(frames)

    def undo_apply(self) -> bool:
        """Take the last Apply through time back on every frame, in one step; refused if
        a frame it wrote was edited since (that edit would be lost)."""
        applied, clip = self.applied, self.clip
        if applied is None or clip is None:
            self.on_message("There is no Apply through time to undo.", "info")
            return False
        edited = edited_frames(clip.source, applied)
        if edited:
            self.on_message(f"Frame(s) {', '.join(map(str, edited[:8]))} were edited after the "
                            "Apply; undoing it would lose those edits, so it was not undone.",
                            "error")
            return False
        restore_frames(self.logic, clip.source, applied.sequence, applied.before)
        self.applied = None
        self.on_message(f"Apply through time undone on {len(applied.written)} frame(s).", "info")
        self.on_change()
        return True

    def discard(self, all_segments: bool = False) -> None:
        """Forget the segment's result and prompts; its preview frames empty."""
        if self.state is None:
            return
        objs = self.state.objects() if all_segments else \
            [o for o in [self.object_of(self.ctx.selected_segment_id())] if o is not None]
        for obj in objs:
            self.state.remove(obj.segment_id)
            self._dirty.setdefault(obj.segment_id, set()).update(obj.pending)
            self._log("discard", obj, slices=len(obj.pending))
            session, oid = self.session, obj.object_id
            self._submit(Task("discard", lambda task, s=session, o=oid: s.delete_object(o),
                              on_error=self._error))
        if objs:
            self.pump()
            self.on_message("MedSAM2 result discarded.", "info")
        self.on_change()

    # ---- review --------------------------------------------------------------------
    def review_queue(self, limit: int = 10) -> list[FrameFlag]:
        obj = self.object_of(self.ctx.selected_segment_id())
        return review_frames(obj, limit) if obj is not None else []

    def jump_to(self, frame: int) -> bool:
        """Show ``frame`` in the browser (its preview and segmentation follow)."""
        source = self.source()
        if source is None or not 0 <= frame < source.num_frames:
            return False
        source.browser.SetSelectedItemNumber(int(frame))
        self.logic.UpdateProxyNodesFromSequences(source.browser)
        return True

    def set_opacity(self, opacity: float) -> None:
        if self.preview is not None:
            self.preview.preview.set_opacity(opacity)

    # ---- session and clip ----------------------------------------------------------
    def close(self) -> None:
        """Stop work, free the server session, remove the preview and its sequence."""
        for task in self._tasks:
            task.cancel()
        self._propagation, self.progress = None, None
        if self.session is not None:
            session = self.session
            self._submit(Task("close session", lambda task: session.close()))
        if self.preview is not None:
            self.preview.drop()
        self.clip = self.state = self.preview = self.session = None
        self.applied, self._templates, self._dirty = None, {}, {}

    def _key(self, source: TimeSource, seg: slicer.vtkMRMLSegmentationNode) -> tuple:
        return (source.browser.GetID(), source.sequence.GetID(), source.num_frames, seg.GetID())

    def _prepare(self) -> str:
        seg, source = self.ctx.segmentation_node(), self.source()
        if seg is None or source is None:
            raise UserError("select a segmentation and a source volume that a sequence browser "
                            "plays")
        segment_id = self.ctx.selected_segment_id()
        if not segment_id or seg.GetSegmentation().GetSegment(segment_id) is None:
            raise UserError("add or select a segment first: MedSAM2 segments into it")
        key = self._key(source, seg)
        if self.clip is not None and key == self.clip.key:
            return segment_id
        if self.state is not None and self.state.has_pending():
            raise UserError("MedSAM2 results made for another clip or segmentation are not "
                            "applied: Apply or Discard them first")
        frames = frames_array(source)
        upload = frames_upload(frames, source.sequence.GetName(), self.settings.modality,
                               display_window(source.proxy))
        self.close()
        reference = slicer.vtkSlicerSegmentationsModuleLogic \
            .CreateOrientedImageDataFromVolumeNode(source.proxy)
        self.clip = TimeContext(key, source, seg, reference, tuple(frames.shape[:3]))
        self.state = AnnotationState(self.clip.shape)
        self.preview = TimePreview(self.logic, self.clip, Preview(self.ctx.scene(), seg))
        self.session = ServerSession(self.backend, upload,
                                     stall_timeout=self.settings.stall_timeout_s,
                                     notify=lambda text: self.runner.post(self.on_message, text,
                                                                          "warning"))
        return segment_id

    def _submit(self, task: Task) -> Task:
        self._tasks = [t for t in self._tasks if t.state in ("queued", "running")]
        self._tasks.append(task)
        return self.runner.submit(task)

    def _log(self, event: str, obj: ObjectState, **fields: object) -> None:
        if self.log is None:
            return
        segment = self.clip.segmentation.GetSegmentation().GetSegment(obj.segment_id) \
            if self.clip is not None else None
        try:
            self.log.write(event, volume=self.clip.source.sequence.GetName() if self.clip else "",
                           segment=segment.GetName() if segment is not None else obj.segment_id,
                           object_id=obj.object_id, **fields)
        except OSError as exc:
            self.on_message(f"cannot write the annotation log {self.log.path}: {exc}", "warning")

    def _handle_replay(self, replay: object) -> None:
        """The server lost the session and it was rebuilt: say whether its frames equal ours."""
        if replay is None or self.state is None:
            return
        differing = self.state.differing_slices(replay.masks)
        if differing:
            self.on_message(f"Session restored; the server's results differ from yours on "
                            f"{differing} frame(s). Yours are kept.", "warning")
        else:
            self.on_message("Session restored; the server's results equal yours.", "info")

    def _error(self, exc: BaseException) -> None:
        self.on_message(error_text(exc), "error")
        self.on_change()
