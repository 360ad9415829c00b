"""Slicer self-test of the MedSAM2 effect: box -> preview -> propagate -> Apply -> Undo.

Runs inside Slicer (CTest: slicer_add_python_unittest; or the module's "Reload and
Test"). It uses the worker configured in the MedSAMSegment module; when none is set
up but medsam-server is installed in the worker's Python, it makes a random-weight
checkpoint of the exact architecture (the masks are then meaningless, the mechanics
are not). The drag is sent to the Red view's interactor (slicer.util.clickAndDrag), so it
reaches the effect the way a user's does: through qMRMLSegmentEditorWidget's observers.
"""

import os
import subprocess
import tempfile
import time
import unittest

import numpy as np
import slicer
from slicer.ScriptedLoadableModule import ScriptedLoadableModuleTest


class MedSAMSegmentSelfTest(ScriptedLoadableModuleTest):
    def setUp(self) -> None:
        from MedSAMSegmentLib import SlicerRuntime

        slicer.mrmlScene.Clear(0)
        self.savedSettings = SlicerRuntime.settings()  # the user's, restored in tearDown

    def tearDown(self) -> None:
        from dataclasses import asdict

        from MedSAMSegmentLib import SlicerRuntime

        SlicerRuntime.update_settings(**asdict(self.savedSettings))

    def runTest(self) -> None:
        self.setUp()
        try:
            self.test_box_propagate_apply_undo()
        finally:
            self.tearDown()

    # ---- helpers -------------------------------------------------------------------
    def configureWorker(self) -> None:
        from MedSAMSegmentLib import SlicerRuntime
        from MedSAMSegmentLib.install import default_worker_python

        s = SlicerRuntime.settings()
        if s.backend == "remote":
            if s.validate():
                raise unittest.SkipTest("the remote MedSAM2 server is not set up: "
                                        + "; ".join(s.validate()))
            return
        if not s.validate():
            return
        python = s.python or default_worker_python()
        if not python:
            raise unittest.SkipTest("no Python for the MedSAM2 worker: install it first")
        checkpoint = s.checkpoint
        if not checkpoint or not os.path.isfile(checkpoint):
            checkpoint = os.path.join(tempfile.mkdtemp(), "medsam2_random.pt")
            made = subprocess.run([python, "-m", "medsam_server.cli", "make-test-checkpoint",
                                   checkpoint], capture_output=True, text=True)
            if made.returncode != 0:
                raise unittest.SkipTest("the MedSAM2 worker is not installed: "
                                        + made.stderr.strip()[-300:])
        SlicerRuntime.update_settings(python=python, checkpoint=checkpoint, device="cpu")

    def waitIdle(self, controller: object, timeout: float = 600.0) -> None:
        t0 = time.time()
        while controller.busy and time.time() - t0 < timeout:
            slicer.app.processEvents()  # the effect's timer pumps the results
            time.sleep(0.02)
        slicer.app.processEvents()
        self.assertFalse(controller.busy, "MedSAM2 did not finish in time")

    # ---- the test ------------------------------------------------------------------
    def test_box_propagate_apply_undo(self) -> None:
        import SampleData

        self.configureWorker()
        volume = SampleData.SampleDataLogic().downloadCTChest()
        segmentation = slicer.mrmlScene.AddNewNodeByClass("vtkMRMLSegmentationNode")
        segmentation.CreateDefaultDisplayNodes()
        segmentation.SetReferenceImageGeometryParameterFromVolumeNode(volume)
        segmentId = segmentation.GetSegmentation().AddEmptySegment("heart")

        # the layout first: activating the effect observes the views the layout has then
        # (qMRMLSegmentEditorWidget::setActiveEffect -> setupViewObservations)
        layout = slicer.app.layoutManager()
        layout.setLayout(slicer.vtkMRMLLayoutNode.SlicerLayoutOneUpRedSliceView)
        red = layout.sliceWidget("Red")
        slicer.app.processEvents()

        editor = slicer.qMRMLSegmentEditorWidget()
        editor.setMRMLScene(slicer.mrmlScene)
        editorNode = slicer.mrmlScene.AddNewNodeByClass("vtkMRMLSegmentEditorNode")
        editor.setMRMLSegmentEditorNode(editorNode)
        editor.setSegmentationNode(segmentation)
        editor.setSourceVolumeNode(volume)
        editorNode.SetSelectedSegmentID(segmentId)
        editor.setActiveEffectByName("MedSAM2")
        effect = editor.activeEffect().self()
        controller = effect.ensureController()

        # a real drag: interactor events reach the effect through the editor's observers
        w, h = red.sliceLogic().GetSliceNode().GetDimensions()[:2]
        slicer.util.clickAndDrag(red, start=(int(w * 0.4), int(h * 0.4)),
                                 end=(int(w * 0.6), int(h * 0.6)), steps=5)
        self.waitIdle(controller)
        obj = controller.state.get(segmentId)
        self.assertIsNotNone(obj, "the box made no MedSAM2 object")
        key = next(iter(obj.prompted))
        self.assertEqual(obj.pending, {key})
        self.assertTrue(effect.pipelines, "the drag left no box in the Red view")

        effect.onPropagate(False)  # one run cancelled at once: it must end, not hang
        effect.onCancel()
        self.waitIdle(controller)
        self.assertFalse(controller.propagating)

        effect.onPropagate(False)
        self.waitIdle(controller)
        self.assertGreater(len(obj.pending), 1, "propagation added no slice")
        covered = sorted(obj.pending)

        effect.onApply(False)  # saves the editor's undo state, then writes
        slicer.app.processEvents()
        applied = slicer.util.arrayFromSegmentBinaryLabelmap(segmentation, segmentId, volume)
        axis = "kji".index(obj.axis)
        expected = np.take(obj.mask, covered, axis=axis)
        self.assertTrue(np.array_equal(np.take(applied, covered, axis=axis) > 0, expected))

        editor.undo()
        slicer.app.processEvents()
        undone = slicer.util.arrayFromSegmentBinaryLabelmap(segmentation, segmentId, volume)
        self.assertEqual(int(np.count_nonzero(undone)), 0, "Undo did not restore the segment")
        editor.setActiveEffectByName("")  # deactivates: no actor, no timer may remain
        slicer.app.processEvents()
        self.assertEqual(effect.pipelines, {}, "actors left in the view after deactivate")
        self.assertFalse(effect.timer.isActive(), "the effect's timer still runs")
        self.assertFalse(effect.focusTimer.isActive(), "the focus timer still runs")
