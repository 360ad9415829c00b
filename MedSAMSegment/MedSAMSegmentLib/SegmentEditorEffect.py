"""The "MedSAM2" Segment Editor effect (Qt glue, thin).

Mouse and keys become calls on ``Controller`` (controller.py, tested on slicer-core);
its results reach the views through a timer that pumps the worker thread's callbacks.
Box and points are drawn by a BoxPipeline per slice view (kept in RAS, re-positioned
from processViewNodeEvents, removed in deactivate).
"""

import os
import time

import qt
import slicer
import vtk
from SegmentEditorEffects import AbstractScriptedSegmentEditorEffect

from MedSAMSegmentLib import SlicerRuntime
from MedSAMSegmentLib.BoxPipeline import BoxPipeline
from MedSAMSegmentLib.controller import Controller, Settings
from MedSAMSegmentLib.editor import ADD, EditorContext
from MedSAMSegmentLib.focus import FOCUS_DELAY_S, Debouncer
from MedSAMSegmentLib.interaction import drag_is_box, enter_applies, press_swallowed
from MedSAMSegmentLib.OptionsPanel import OptionsPanel
from MedSAMSegmentLib.panel_state import panel_state
from MedSAMSegmentLib.source_volume import set_display_window
from MedSAMSegmentLib.time_controller import TimeController


class EffectEditorContext(EditorContext):
    """EditorContext backed by the Segment Editor's effect adaptor."""

    def __init__(self, scriptedEffect: object) -> None:
        self.effect = scriptedEffect

    def scene(self) -> slicer.vtkMRMLScene:
        return self.effect.scene()

    def parameter_node(self) -> slicer.vtkMRMLSegmentEditorNode:
        return self.effect.parameterSetNode()

    def source_image(self) -> slicer.vtkOrientedImageData:
        return self.effect.sourceVolumeImageData()

    def save_state_for_undo(self) -> None:
        self.effect.saveStateForUndo()

    def modify_segment(self, segment_id: str, labelmap: slicer.vtkOrientedImageData,
                       mode: str) -> None:
        modes = slicer.qSlicerSegmentEditorAbstractEffect
        self.effect.modifySegmentByLabelmap(
            self.segmentation_node(), segment_id, labelmap,
            modes.ModificationModeAdd if mode == ADD else modes.ModificationModeRemove)


class SegmentEditorEffect(AbstractScriptedSegmentEditorEffect):
    """Box (or points) on one slice -> MedSAM2 mask -> propagate -> Apply."""

    def __init__(self, scriptedEffect: object) -> None:
        scriptedEffect.name = "MedSAM2"  # not translated: modules find effects by name
        scriptedEffect.title = "MedSAM2"
        scriptedEffect.perSegment = True
        scriptedEffect.requireSegments = True
        AbstractScriptedSegmentEditorEffect.__init__(self, scriptedEffect)
        self.pipelines = {}
        self.drag = None  # (view widget, start xy) while a box is dragged
        self.lastSliceWidget = None
        self.controller = None
        self.timeController = None  # prompts on a browser's proxy of 2D frames go here
        self.panel = None
        self.timer = None  # made on first activation (the registered prototype never is)
        self.focusTimer = None  # single shot: the view the user scrolled to has settled
        self.focusDebouncer = None
        self.shownSegment = None

    def clone(self) -> object:
        import qSlicerSegmentationsEditorEffectsPythonQt as effects

        cloned = effects.qSlicerSegmentEditorScriptedEffect(None)
        cloned.setPythonSource(__file__.replace("\\", "/"))
        return cloned

    def icon(self) -> qt.QIcon:
        path = os.path.join(os.path.dirname(__file__), "SegmentEditorEffect.png")
        return qt.QIcon(path) if os.path.exists(path) else qt.QIcon()

    def helpText(self) -> str:
        from MedSAMSegmentLib.help_text import effect_help  # tested against the panel's controls

        return effect_help()

    # ---- life cycle ----------------------------------------------------------------
    def setupOptionsFrame(self) -> None:
        self.panel = OptionsPanel(self.scriptedEffect, {
            "from_segment": self.onFromSegment, "propagate": self.onPropagate,
            "cancel": self.onCancel, "apply": self.onApply, "discard": self.onDiscard,
            "jump": self.onJump, "modality": self.onModality, "preset": self.onPreset,
            "use_window": self.onUseWindow, "opacity": self.onOpacity,
            "propagate_time": self.onPropagateTime, "undo_time": self.onUndoTime,
            "settings": lambda: slicer.util.selectModule("MedSAMSegment")},
            modality=SlicerRuntime.settings().modality)

    def activate(self) -> None:
        self.ensureController()
        self.ensureTimeController()
        if self.timer is None:
            self.timer = qt.QTimer()
            self.timer.setInterval(50)
            self.timer.connect("timeout()", self.onTimer)
        if self.focusTimer is None:
            self.focusTimer = qt.QTimer()
            self.focusTimer.setSingleShot(True)
            self.focusTimer.connect("timeout()", self.onFocusTimer)
            self.focusDebouncer = Debouncer(
                FOCUS_DELAY_S, self.onViewSettled, clock=time.monotonic,
                start_timer=lambda seconds: self.focusTimer.start(max(1, int(seconds * 1000))))
        self.timer.start()
        self.updateGUIFromMRML()

    def deactivate(self) -> None:
        # Prompts, results and the preview stay: the user may Paint and come back. A running
        # propagation goes on streaming into the preview (the timer runs until it ends).
        for viewWidget, pipeline in self.pipelines.items():
            for actor in pipeline.actors():
                self.scriptedEffect.removeActor2D(viewWidget, actor)
        self.pipelines = {}
        if self.drag is not None:
            self.scriptedEffect.cursorOn(self.drag[0])
            self.drag = None
        if self.timer is not None and (self.controller is None or not self.controller.busy):
            self.timer.stop()
        if self.focusTimer is not None:
            self.focusDebouncer.cancel()
            self.focusTimer.stop()

    def cleanup(self) -> None:
        if self.timer is not None:
            self.timer.stop()
            self.timer.disconnect("timeout()", self.onTimer)
        if self.focusTimer is not None:
            self.focusTimer.stop()
            self.focusTimer.disconnect("timeout()", self.onFocusTimer)
        if self.panel is not None:  # as AbstractScriptedSegmentEditorEffect.cleanup asks
            self.panel.close()
        if self.controller is not None:
            self.controller.close()
            self.controller = None
        if self.timeController is not None:
            self.timeController.close()
            self.timeController = None

    def setMRMLDefaults(self) -> None:
        pass

    def sourceVolumeNodeChanged(self) -> None:
        self.updateGUIFromMRML()  # the controller notices the change before its next call

    def referenceGeometryChanged(self) -> None:
        self.updateGUIFromMRML()

    def ensureController(self) -> Controller:
        if self.controller is None:
            self.controller = Controller(
                EffectEditorContext(self.scriptedEffect), SlicerRuntime.runner(),
                SlicerRuntime.backend_holder(), on_message=self.showMessage,
                on_change=self.updateGUIFromMRML, log_file=SlicerRuntime.annotation_log(),
                settings=Settings(modality=SlicerRuntime.settings().modality))
        return self.controller

    def ensureTimeController(self) -> TimeController:
        if self.timeController is None:
            self.timeController = TimeController(
                EffectEditorContext(self.scriptedEffect), SlicerRuntime.runner(),
                SlicerRuntime.backend_holder(), slicer.modules.sequences.logic(),
                on_message=self.showMessage, on_change=self.updateGUIFromMRML,
                log_file=SlicerRuntime.annotation_log(),
                settings=Settings(modality=SlicerRuntime.settings().modality))
        return self.timeController

    def target(self) -> object:
        """The time controller when the source volume is a browser's proxy of 2D frames."""
        timeController = self.ensureTimeController()
        return timeController if timeController.routes_prompts() else self.ensureController()

    def onTimer(self) -> None:
        if self.controller is None:
            return
        self.controller.pump()
        if self.timeController is not None:
            self.timeController.pump()
        # selecting another segment does not notify effects: follow it here
        node = self.scriptedEffect.parameterSetNode()
        selected = node.GetSelectedSegmentID() if node is not None else None
        if selected != self.shownSegment:
            self.updateGUIFromMRML()
        if not self.controller.busy and not self.scriptedEffect.active():
            self.timer.stop()

    def onFocusTimer(self) -> None:
        if self.focusDebouncer is not None:
            self.focusDebouncer.fire()

    def onViewSettled(self, sliceNode: object) -> None:
        # the user stopped on a slice: the server encodes it and its neighbours meanwhile
        if self.controller is not None:
            self.controller.focus_view(sliceNode)

    # ---- views ---------------------------------------------------------------------
    def processInteractionEvents(self, callerInteractor: vtk.vtkRenderWindowInteractor,
                                 eventId: int, viewWidget: object) -> bool:
        if viewWidget.className() != "qMRMLSliceWidget":
            return False
        if eventId == vtk.vtkCommand.EnterEvent and self.focusDebouncer is not None:
            self.focusDebouncer.poke(viewWidget.sliceLogic().GetSliceNode())
            return False
        xy = callerInteractor.GetEventPosition()
        if self.drag is not None and self.drag[0] is viewWidget:
            # a drag in progress is finished whatever modifier is pressed meanwhile
            if eventId == vtk.vtkCommand.MouseMoveEvent:
                self.pipelineForWidget(viewWidget).set_box(self.drag[1], xy)
                self.render(viewWidget)
                return True
            if eventId == vtk.vtkCommand.LeftButtonReleaseEvent:
                self.finishBox(viewWidget, xy)
                return True
        if (callerInteractor.GetShiftKey() or callerInteractor.GetControlKey()
                or callerInteractor.GetAltKey()):
            return False  # modifier clicks belong to Slicer (pan, zoom, window/level)
        if eventId == vtk.vtkCommand.LeftButtonPressEvent:
            if press_swallowed(self.scriptedEffect.confirmCurrentSegmentVisible(),
                               self.scriptedEffect.NotConfirmed,
                               self.scriptedEffect.ConfirmedWithDialog):
                return True
            self.lastSliceWidget = viewWidget
            mode = self.panel.mode if self.panel is not None else "box"
            if mode == "box":
                self.drag = (viewWidget, (xy[0], xy[1]))
                self.scriptedEffect.cursorOff(viewWidget)
            else:
                positive = mode == "positive"
                pipeline = self.pipelineForWidget(viewWidget)
                pipeline.add_point(xy, positive)
                sliceNode = viewWidget.sliceLogic().GetSliceNode()
                if not self.target().prompt_point(sliceNode, (xy[0], xy[1]), positive):
                    pipeline.clear()  # refused (message shown): don't leave a mark
                self.render(viewWidget)
            return True
        if eventId == vtk.vtkCommand.KeyPressEvent and callerInteractor.GetKeySym() == "Return":
            # like Draw: Enter applies, when there is something to apply
            controller = self.target()
            node = self.scriptedEffect.parameterSetNode()
            obj = controller.object_of(node.GetSelectedSegmentID() if node else None)
            if enter_applies(obj, controller.propagating):
                self.onApply(False)
                return True
        return False

    def finishBox(self, viewWidget: object, xy: tuple) -> None:
        start, self.drag = self.drag[1], None
        self.scriptedEffect.cursorOn(viewWidget)
        pipeline = self.pipelineForWidget(viewWidget)
        if not drag_is_box(start, xy):
            pipeline.clear()
            self.showMessage("Drag to draw a box around the structure.", "info")
        else:
            pipeline.set_box(start, xy)
            sliceNode = viewWidget.sliceLogic().GetSliceNode()
            if not self.target().prompt_box(sliceNode, start, (xy[0], xy[1])):
                pipeline.clear()  # refused (message shown): don't leave a box
        self.render(viewWidget)

    def processViewNodeEvents(self, callerViewNode: object, eventId: int,
                              viewWidget: object) -> None:
        if callerViewNode and callerViewNode.IsA("vtkMRMLSliceNode"):
            if self.focusDebouncer is not None:  # scrolled (or panned: the same slice, sent once)
                self.focusDebouncer.poke(callerViewNode)
            pipeline = self.pipelines.get(viewWidget)
            if pipeline is not None:
                pipeline.update()
                self.render(viewWidget)

    def pipelineForWidget(self, viewWidget: object) -> BoxPipeline:
        pipeline = self.pipelines.get(viewWidget)
        if pipeline is None:
            pipeline = BoxPipeline(viewWidget.sliceLogic().GetSliceNode())
            for actor in pipeline.actors():
                self.scriptedEffect.addActor2D(viewWidget, actor)
            self.pipelines[viewWidget] = pipeline
        return pipeline

    def render(self, viewWidget: object) -> None:
        viewWidget.sliceView().scheduleRender()

    # ---- buttons -------------------------------------------------------------------
    def onFromSegment(self) -> None:
        sliceWidget = self.activeSliceWidget()
        if sliceWidget is None:
            self.showMessage("Move the mouse over the slice view to use first.", "warning")
            return
        self.target().prompt_segment_slice(sliceWidget.sliceLogic().GetSliceNode())

    def onPropagate(self, allSegments: bool) -> None:
        self.ensureController().propagate(all_segments=allSegments,
                                          **self.panel.propagate_options())

    def onPropagateTime(self) -> None:
        self.ensureTimeController().propagate(**self.panel.time_options())

    def onUndoTime(self) -> None:
        self.ensureTimeController().undo_apply()

    def onCancel(self) -> None:
        self.target().cancel()

    def onApply(self, allSegments: bool) -> None:
        self.target().apply(replace=self.panel.replace(), all_segments=allSegments)

    def onDiscard(self) -> None:
        self.target().discard()
        for pipeline in self.pipelines.values():
            pipeline.clear()

    def onJump(self, index: int) -> None:
        if self.target() is self.timeController:
            self.timeController.jump_to(index)  # the browser shows that frame
            return
        layout = slicer.app.layoutManager()
        nodes = [layout.sliceWidget(name).sliceLogic().GetSliceNode()
                 for name in layout.sliceViewNames()]
        if not self.ensureController().jump_to(nodes, index):
            self.showMessage("No slice view shows this segment's slicing direction.", "info")

    def onModality(self, value: str) -> None:
        SlicerRuntime.update_settings(modality=value)
        self.ensureController().use_view_window(modality=value)
        self.ensureTimeController().settings.modality = value  # read at the next clip's upload

    def onPreset(self, level: float, width: float) -> None:
        source = self.scriptedEffect.parameterSetNode().GetSourceVolumeNode()
        if source is None:
            self.showMessage("Select a source volume first.", "warning")
            return
        try:
            set_display_window(source, level, width)
        except ValueError as exc:
            self.showMessage(str(exc), "warning")
            return
        self.showMessage(f"The view shows level {level:g} / width {width:g}; click 'Use view "
                         "window' for MedSAM2 to see it too.", "info")

    def onUseWindow(self) -> None:
        self.ensureController().use_view_window()

    def onOpacity(self, value: float) -> None:
        controller = self.ensureController()
        if controller.preview is not None:
            controller.preview.set_opacity(value)
        self.ensureTimeController().set_opacity(value)

    def activeSliceWidget(self) -> object:
        """The slice view the user last worked in (Red before any)."""
        if self.lastSliceWidget is not None:
            return self.lastSliceWidget
        return slicer.app.layoutManager().sliceWidget("Red")

    # ---- GUI -----------------------------------------------------------------------
    def showMessage(self, text: str, level: str) -> None:
        if self.panel is not None:
            self.panel.show_message(text, level)

    def updateGUIFromMRML(self) -> None:
        if self.panel is None:
            return
        node = self.scriptedEffect.parameterSetNode()
        self.shownSegment = node.GetSelectedSegmentID() if node is not None else None
        self.panel.refresh(panel_state(self.controller, SlicerRuntime.backend_summary()),
                           self.timeController.panel_state() if self.timeController else None)

    def updateMRMLFromGUI(self) -> None:
        pass
