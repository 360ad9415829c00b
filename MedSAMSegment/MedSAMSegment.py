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

# the module's folder is on sys.path before this file runs (ctkFactoryScriptedItem::load)
from MedSAMSegmentLib.help_text import LICENCES, MODULE_HELP, python_too_old
from slicer.ScriptedLoadableModule import (
    ScriptedLoadableModule,
    ScriptedLoadableModuleTest,
    ScriptedLoadableModuleWidget,
)


class MedSAMSegment(ScriptedLoadableModule):
    def __init__(self, parent: object) -> None:
        ScriptedLoadableModule.__init__(self, parent)
        parent.title = "MedSAMSegment"
        parent.categories = ["Segmentation"]
        parent.dependencies = ["Segmentations"]
        parent.contributors = ["MedSAMSegment developers"]
        parent.helpText = MODULE_HELP
        parent.acknowledgementText = LICENCES
        slicer.app.connect("startupCompleted()", self.registerEditorEffect)
        # Loaded after start-up (Extension Wizard): startupCompleted() has been emitted
        # already, so register as soon as this module is set up. A second registration of the
        # same effect name is refused by the effect factory, so both paths are safe.
        mainWindow = slicer.util.mainWindow()
        if mainWindow is not None and mainWindow.isVisible():
            qt.QTimer.singleShot(0, self.registerEditorEffect)

    def registerEditorEffect(self) -> None:
        refused = python_too_old(sys.version_info)
        if refused is not None:
            logging.error(refused)
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
