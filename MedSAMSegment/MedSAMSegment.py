"""MedSAMSegment: MedSAM2 box-to-volume segmentation for 3D Slicer's Segment Editor.

This module's panel holds the settings (local worker or remote server, install,
checkpoint); the work happens in the Segment Editor's "MedSAM2" effect, registered
at start-up the way extension effects are.
"""

import importlib.util
import logging
import os
import sys
import unittest

import qt
import slicer
from slicer.ScriptedLoadableModule import (
    ScriptedLoadableModule,
    ScriptedLoadableModuleTest,
    ScriptedLoadableModuleWidget,
)

LICENCES = (
    "The MedSAMSegment code is licensed Apache-2.0. The MedSAM2 model weights "
    "(<a href=\"https://huggingface.co/wanglab/MedSAM2\">wanglab/MedSAM2</a>, downloaded on "
    "first use, not bundled) are licensed "
    "<a href=\"https://creativecommons.org/licenses/by-sa/4.0/\">CC-BY-SA-4.0</a>; MedSAM2 is "
    "by Jun Ma, Bo Wang et al. (arXiv:2504.03600), built on Meta's SAM 2 (Apache-2.0).")


class MedSAMSegment(ScriptedLoadableModule):
    def __init__(self, parent: object) -> None:
        ScriptedLoadableModule.__init__(self, parent)
        parent.title = "MedSAMSegment"
        parent.categories = ["Segmentation"]
        parent.dependencies = ["Segmentations"]
        parent.contributors = ["MedSAMSegment developers"]
        parent.helpText = (
            "Draw a box on one slice and get the structure segmented through the whole "
            "volume by MedSAM2, then correct it and propagate again. Use it in the Segment "
            "Editor: effect <b>MedSAM2</b>. This panel sets up where the model runs (a local "
            "worker on this computer, or a team's server) and the model weights.")
        parent.acknowledgementText = LICENCES
        slicer.app.connect("startupCompleted()", self.registerEditorEffect)
        # Loaded after start-up (Extension Wizard): startupCompleted() has been emitted
        # already, so register as soon as this module is set up. A second registration of the
        # same effect name is refused by the effect factory, so both paths are safe.
        mainWindow = slicer.util.mainWindow()
        if mainWindow is not None and mainWindow.isVisible():
            qt.QTimer.singleShot(0, self.registerEditorEffect)

    def registerEditorEffect(self) -> None:
        if sys.version_info < (3, 10):  # noqa: UP036 -- older Slicers run Python 3.9
            logging.error("MedSAMSegment needs Slicer 5.10 or newer (Python >= 3.10); this "
                          "Slicer has Python %d.%d. The MedSAM2 effect is not registered.",
                          *sys.version_info[:2])
            return
        # setPythonSource(".../MedSAMSegmentLib/SegmentEditorEffect.py") instantiates the
        # attribute "SegmentEditorEffect" of the module named after the folder: it must be
        # the class, not the submodule (Slicer's SegmentEditorEffects star-imports for this).
        import MedSAMSegmentLib
        import qSlicerSegmentationsEditorEffectsPythonQt as effects
        from MedSAMSegmentLib.SegmentEditorEffect import SegmentEditorEffect

        MedSAMSegmentLib.SegmentEditorEffect = SegmentEditorEffect

        instance = effects.qSlicerSegmentEditorScriptedEffect(None)
        path = os.path.join(os.path.dirname(__file__), "MedSAMSegmentLib", "SegmentEditorEffect.py")
        instance.setPythonSource(path.replace("\\", "/"))
        instance.self().register()


class MedSAMSegmentWidget(ScriptedLoadableModuleWidget):
    def setup(self) -> None:
        ScriptedLoadableModuleWidget.setup(self)
        from MedSAMSegmentLib.SettingsPanel import SettingsPanel

        self.settingsPanel = SettingsPanel(self.layout)
        self.layout.addStretch(1)

    def cleanup(self) -> None:
        if getattr(self, "settingsPanel", None) is not None:
            self.settingsPanel.cleanup()


class MedSAMSegmentTest(ScriptedLoadableModuleTest):
    """Runs Testing/Python/MedSAMSegmentSelfTest.py (also registered with CTest)."""

    def runTest(self) -> None:
        path = os.path.join(os.path.dirname(__file__), "Testing", "Python",
                            "MedSAMSegmentSelfTest.py")
        spec = importlib.util.spec_from_file_location("MedSAMSegmentSelfTest", path)
        module = importlib.util.module_from_spec(spec)
        spec.loader.exec_module(module)
        suite = unittest.TestLoader().loadTestsFromModule(module)
        result = unittest.TextTestRunner(verbosity=2).run(suite)
        self.assertTrue(result.wasSuccessful(), "MedSAMSegment self-test failed")
