"""Where each external name the glue uses is defined: (source, path or class, regex).

source "Slicer", "CTK", "VTK": a file in that repository; the regex finds the defining line
(the first match that is not a comment), looked up at each ref by slicer_api_ledger.py --build.
source "Qt": Qt 5.15 has no source here (qt/qtbase is over the fetch limit); the entry names
the class and member, checked against the Qt 5.15 index of ../shared/tools/slicer_api.
source "Python": the standard library (nothing to cite in Slicer).
"""

AE = "Modules/Loadable/Segmentations/EditorEffects/qSlicerSegmentEditorAbstractEffect.h"
SE = "Modules/Loadable/Segmentations/EditorEffects/qSlicerSegmentEditorScriptedEffect.h"
ASE = ("Modules/Loadable/Segmentations/EditorEffects/Python/SegmentEditorEffects/"
       "AbstractScriptedSegmentEditorEffect.py")
SEI = "Modules/Loadable/Segmentations/EditorEffects/Python/SegmentEditorEffects/__init__.py"
DRAW = ("Modules/Loadable/Segmentations/EditorEffects/Python/SegmentEditorEffects/"
        "SegmentEditorDrawEffect.py")
SEW = "Modules/Loadable/Segmentations/Widgets/qMRMLSegmentEditorWidget.h"
SEN = "Modules/Loadable/Segmentations/MRML/vtkMRMLSegmentEditorNode.h"
SLM = "Base/Python/slicer/ScriptedLoadableModule.py"
UTIL = "Base/Python/slicer/util.py"
SEG = "Libs/MRML/Core/vtkMRMLSegmentationNode.h"
SLICE = "Libs/MRML/Core/vtkMRMLSliceNode.h"
CORE = "Base/QTCore/qSlicerCoreApplication.h"
MOD = "Base/QTCore/qSlicerAbstractCoreModule.h"
RWI = "Rendering/Core/vtkRenderWindowInteractor.h"
LAYOUT = "Libs/MRML/Widgets/qMRMLLayoutManager.h"
VIEW = "Libs/Visualization/VTK/Widgets/ctkVTKAbstractView.h"
PATH = "Libs/Widgets/ctkPathLineEdit.h"
SLIDER = "Libs/Widgets/ctkSliderWidget.h"
Source = tuple[str, str, str]


def s(path: str, regex: str) -> Source:
    return ("Slicer", path, regex)


def c(path: str, regex: str) -> Source:
    return ("CTK", path, regex)


def v(path: str, regex: str) -> Source:
    return ("VTK", path, regex)


def q(cls: str, member: str = "") -> Source:
    return ("Qt", cls, member)


def py(what: str) -> Source:
    return ("Python", what, "")


def decl(name: str) -> str:
    """A C++ method declaration or a Q_PROPERTY naming it."""
    macro = rf"|vtk{name[:3]}\w*Macro\(\s*{name[3:]}\b" if name[:3] in ("Get", "Set") else ""
    return rf"(\b{name}\s*\(|Q_PROPERTY\(.*\b{name}\b{macro})"


def cls(name: str) -> str:
    return rf"^class .*\b{name}\b"


SOURCES: dict[str, list[Source]] = {
    # ---- the effect adaptor (qSlicerSegmentEditorAbstractEffect, scripted effect) ----
    **{f".{n}": [s(AE, decl(n))] for n in (
        "addActor2D", "removeActor2D", "confirmCurrentSegmentVisible", "cursorOff", "cursorOn", "modifySegmentByLabelmap",
        "parameterSetNode", "saveStateForUndo", "sourceVolumeImageData", "active",
        "perSegment", "requireSegments")},
    # the glue passes layouts too: the QLayout* overloads
    ".addOptionsWidget": [s(AE, r"addOptionsWidget\(QWidget\*"), s(AE, r"addOptionsWidget\(QLayout\*")],
    ".addLabeledOptionsWidget": [s(AE, r"addLabeledOptionsWidget\(QString label, QWidget\*"),
                                 s(AE, r"addLabeledOptionsWidget\(QString label, QLayout\*")],
    ".NotConfirmed": [s(AE, r"\bNotConfirmed\b\s*[,=]")],
    ".ConfirmedWithDialog": [s(AE, r"\bConfirmedWithDialog\b\s*[,=}]?\s*$")],
    ".ModificationModeAdd": [s(AE, r"\bModificationModeAdd\b\s*[,=]")],
    ".ModificationModeRemove": [s(AE, r"\bModificationModeRemove\b\s*[,=]")],
    ".setPythonSource": [s(SE, decl("setPythonSource"))],
    ".self": [s(SE, decl("self"))],
    ".scriptedEffect": [s(ASE, r"self\.scriptedEffect\s*=")],
    ".register": [s(ASE, r"def register\(")],
    ".className": [s(DRAW, r"viewWidget\.className\(\)")],
    "effects.qSlicerSegmentEditorScriptedEffect": [s(SE, cls("qSlicerSegmentEditorScriptedEffect"))],
    "slicer.qSlicerSegmentEditorAbstractEffect": [s(AE, cls("qSlicerSegmentEditorAbstractEffect"))],
    "SegmentEditorEffects.AbstractScriptedSegmentEditorEffect": [
        s(SEI, r"AbstractScriptedSegmentEditorEffect")],
    "AbstractScriptedSegmentEditorEffect.__init__": [s(ASE, r"def __init__\(self, scriptedEffect")],
    # ---- segment editor widget, node, segmentation -----------------------------------
    **{f".{n}": [s(SEW, decl(n))] for n in (
        "setMRMLScene", "setMRMLSegmentEditorNode", "setSegmentationNode", "setSourceVolumeNode",
        "setActiveEffectByName", "activeEffect", "undo")},
    "slicer.qMRMLSegmentEditorWidget": [s(SEW, cls("qMRMLSegmentEditorWidget"))],
    **{f".{n}": [s(SEN, decl(n))] for n in (
        "GetSelectedSegmentID", "SetSelectedSegmentID", "GetSourceVolumeNode")},
    "slicer.vtkMRMLSegmentEditorNode": [s(SEN, cls("vtkMRMLSegmentEditorNode"))],
    ".GetSegmentation": [s(SEG, decl("GetSegmentation"))],
    ".SetReferenceImageGeometryParameterFromVolumeNode": [
        s(SEG, decl("SetReferenceImageGeometryParameterFromVolumeNode"))],
    ".CreateDefaultDisplayNodes": [s(SEG, decl("CreateDefaultDisplayNodes"))],
    ".AddEmptySegment": [s("Libs/vtkSegmentationCore/vtkSegmentation.h", decl("AddEmptySegment"))],
    "slicer.vtkOrientedImageData": [s("Libs/vtkSegmentationCore/vtkOrientedImageData.h",
                                      cls("vtkOrientedImageData"))],
    # ---- views, layout, application --------------------------------------------------
    ".sliceLogic": [s("Libs/MRML/Widgets/qMRMLSliceWidget.h", decl("sliceLogic"))],
    ".scene": [s(AE, decl("scene"))],
    ".name": [s(AE, r"Q_PROPERTY\(QString name\b")],
    ".title": [s(AE, r"Q_PROPERTY\(QString title\b"), s(MOD, r"Q_PROPERTY\(QString title\b")],
    ".helpText": [s(MOD, r"Q_PROPERTY\(QString helpText\b")],
    ".sliceView": [s("Libs/MRML/Widgets/qMRMLSliceWidget.h", decl("sliceView"))],
    ".GetSliceNode": [s("Libs/MRML/Logic/vtkMRMLSliceLogic.h", decl("GetSliceNode"))],
    ".GetXYToRAS": [s(SLICE, decl("GetXYToRAS"))],
    ".GetDimensions": [s(SLICE, decl("GetDimensions"))],
    ".IsA": [v("Common/Core/vtkObjectBase.h", decl("IsA"))],
    ".interactor": [c(VIEW, decl("interactor"))],
    ".scheduleRender": [c(VIEW, decl("scheduleRender"))],
    ".sliceWidget": [s(LAYOUT, decl("sliceWidget"))],
    ".sliceViewNames": [s(LAYOUT, decl("sliceViewNames"))],
    ".setLayout": [s(LAYOUT, decl("setLayout"))],
    "slicer.vtkMRMLLayoutNode.SlicerLayoutOneUpRedSliceView": [
        s("Libs/MRML/Core/vtkMRMLLayoutNode.h", r"\bSlicerLayoutOneUpRedSliceView\b\s*=")],
    "slicer.app.layoutManager": [s("Base/QTGUI/qSlicerApplication.h", decl("layoutManager"))],
    "slicer.modules.sequences.logic": [
        s("Base/QTCore/qSlicerAbstractCoreModule.h", decl("logic")),
        s("Modules/Loadable/Sequences/qSlicerSequencesModule.cxx",
          r"return vtkSlicerSequencesLogic::New\(\);")],
    "slicer.app.slicerUserSettingsFilePath": [s(CORE, decl("slicerUserSettingsFilePath"))],
    "slicer.app.processEvents": [q("QCoreApplication", "processEvents")],
    "slicer.app.connect": [q("QObject", "connect")],
    "signal startupCompleted()": [s("Base/QTGUI/qSlicerApplication.h", r"void startupCompleted\(\)")],
    "slicer.mrmlScene": [s("Base/Python/slicer/__init__.py", r"mrmlScene")],
    "slicer.mrmlScene.AddNewNodeByClass": [s("Libs/MRML/Core/vtkMRMLScene.h",
                                             decl("AddNewNodeByClass"))],
    "slicer.mrmlScene.Clear": [s("Libs/MRML/Core/vtkMRMLScene.h", decl("Clear"))],
    "slicer.vtkMRMLScene": [s("Libs/MRML/Core/vtkMRMLScene.h", cls("vtkMRMLScene"))],
    **{f"slicer.util.{n}": [s(UTIL, rf"^def {n}\(")] for n in (
        "arrayFromSegmentBinaryLabelmap", "clickAndDrag", "confirmOkCancelDisplay", "mainWindow",
        "selectModule")},
    ".downloadCTChest": [s("Modules/Scripted/SampleData/SampleData.py", r"def downloadCTChest\(")],
    # ---- scripted module -------------------------------------------------------------
    **{f"slicer.ScriptedLoadableModule.{n}": [s(SLM, rf"^class {n}\b")] for n in (
        "ScriptedLoadableModule", "ScriptedLoadableModuleWidget", "ScriptedLoadableModuleTest")},
    "ScriptedLoadableModule.__init__": [s(SLM, r"def __init__\(self, parent")],
    "ScriptedLoadableModuleWidget.setup": [s(SLM, r"def setup\(self\)")],
    ".layout": [s(SLM, r"self\.layout = ")],
    **{f".{n}": [s(MOD, rf"Q_PROPERTY\(\S+ {n}\b")] for n in (
        "categories", "contributors", "acknowledgementText", "dependencies")},
    # ---- CTK -------------------------------------------------------------------------
    "ctk.ctkCollapsibleButton": [c("Libs/Widgets/ctkCollapsibleButton.h", cls("ctkCollapsibleButton"))],
    ".collapsed": [c("Libs/Widgets/ctkCollapsibleButton.h", r"Q_PROPERTY\(bool collapsed\b")],
    "ctk.ctkPathLineEdit": [c(PATH, cls("ctkPathLineEdit"))],
    "ctk.ctkPathLineEdit.Files": [c(PATH, r"^\s*Files\s*=")],
    "ctk.ctkPathLineEdit.Executable": [c(PATH, r"^\s*Executable\s*=")],
    ".currentPath": [c(PATH, r"Q_PROPERTY\(QString currentPath\b")],
    ".filters": [c(PATH, r"Q_PROPERTY\(Filters filters\b")],
    ".nameFilters": [c(PATH, r"Q_PROPERTY\(QStringList nameFilters\b")],
    "signal currentPathChanged(QString)": [c(PATH, r"void currentPathChanged\(const QString&")],
    "ctk.ctkSliderWidget": [c(SLIDER, cls("ctkSliderWidget"))],
    "signal valueChanged(double)": [c(SLIDER, r"void valueChanged\(double")],
    ".singleStep": [c(SLIDER, r"Q_PROPERTY\(double singleStep\b")],
    ".minimum": [c(SLIDER, r"Q_PROPERTY\(double minimum\b")],
    ".maximum": [c(SLIDER, r"Q_PROPERTY\(double maximum\b")],
    ".value": [c(SLIDER, r"Q_PROPERTY\(double value\b"), q("QSpinBox", "value"),
               q("QProgressBar", "value"), q("QSettings", "value")],
    # ---- VTK -------------------------------------------------------------------------
    **{f".{n}": [v(RWI, rf"(vtkGetMacro|vtkGetVector2Macro|vtkGetStringMacro)\({n[3:]}\b|\b{n}\s*\(")]
       for n in ("GetAltKey", "GetControlKey", "GetShiftKey", "GetKeySym", "GetEventPosition")},
    ".SetEventPosition": [v(RWI, r"\bSetEventPosition\s*\(")],
    "vtk.vtkRenderWindowInteractor": [v(RWI, cls("vtkRenderWindowInteractor"))],
    **{f"vtk.vtkCommand.{e}": [v("Common/Core/vtkCommand.h", rf"_vtk_add_event\({e}\)")] for e in (
        "EnterEvent", "KeyPressEvent", "LeftButtonPressEvent", "LeftButtonReleaseEvent",
        "MouseMoveEvent")},
    **{f"vtk.{n}": [v(p, cls(n))] for n, p in (
        ("vtkActor2D", "Rendering/Core/vtkActor2D.h"),
        ("vtkCellArray", "Common/DataModel/vtkCellArray.h"),
        ("vtkPoints", "Common/Core/vtkPoints.h"), ("vtkPolyData", "Common/DataModel/vtkPolyData.h"),
        ("vtkPolyDataMapper2D", "Rendering/Core/vtkPolyDataMapper2D.h"),
        ("vtkUnsignedCharArray", "Common/Core/vtkUnsignedCharArray.h"))},
    ".GetElement": [v("Common/Math/vtkMatrix4x4.h", decl("GetElement"))],
    ".GetPointData": [v("Common/DataModel/vtkDataSet.h", decl("GetPointData"))],
    ".GetProperty": [v("Rendering/Core/vtkActor2D.h", decl("GetProperty"))],
    ".SetMapper": [v("Rendering/Core/vtkActor2D.h", decl("SetMapper"))],
    ".InsertCellPoint": [v("Common/DataModel/vtkCellArray.h", decl("InsertCellPoint"))],
    ".InsertNextCell": [v("Common/DataModel/vtkCellArray.h", r"InsertNextCell\(int npts\)")],
    ".Reset": [v("Common/DataModel/vtkCellArray.h", decl("Reset")),
               v("Common/Core/vtkPoints.h", decl("Reset"))],
    ".InsertNextPoint": [v("Common/Core/vtkPoints.h", r"InsertNextPoint\(double x, double y")],
    ".SetNumberOfPoints": [v("Common/Core/vtkPoints.h", decl("SetNumberOfPoints"))],
    ".SetPoint": [v("Common/Core/vtkPoints.h", r"SetPoint\(vtkIdType id, double x, double y")],
    ".InsertNextTuple3": [v("Common/Core/vtkDataArray.h", decl("InsertNextTuple3"))],
    ".SetNumberOfComponents": [v("Common/Core/vtkAbstractArray.h", decl("SetNumberOfComponents"))],
    ".Modified": [v("Common/Core/vtkObject.h", decl("Modified"))],
    ".SetColor": [v("Rendering/Core/vtkProperty2D.h", r"vtkSetVector3Macro\(Color\b")],
    ".SetLineWidth": [v("Rendering/Core/vtkProperty2D.h", r"vtkSetClampMacro\(LineWidth\b")],
    ".SetPointSize": [v("Rendering/Core/vtkProperty2D.h", r"vtkSetClampMacro\(PointSize\b")],
    ".SetInputData": [v("Rendering/Core/vtkPolyDataMapper2D.h", decl("SetInputData"))],
    ".SetLines": [v("Common/DataModel/vtkPolyData.h", decl("SetLines"))],
    ".SetVerts": [v("Common/DataModel/vtkPolyData.h", decl("SetVerts"))],
    ".SetPoints": [v("Common/DataModel/vtkPointSet.h", decl("SetPoints"))],
    ".SetScalars": [v("Common/DataModel/vtkDataSetAttributes.h", decl("SetScalars"))],
    ".SetVisibility": [v("Rendering/Core/vtkProp.h", r"vtkSetMacro\(Visibility\b")],
    ".VisibilityOn": [v("Rendering/Core/vtkProp.h", r"vtkBooleanMacro\(Visibility\b")],
    ".VisibilityOff": [v("Rendering/Core/vtkProp.h", r"vtkBooleanMacro\(Visibility\b")],
    # ---- Qt (5.15, index) ------------------------------------------------------------
    **{f"qt.{n}": [q(n)] for n in (
        "QButtonGroup", "QCheckBox", "QComboBox", "QFormLayout", "QHBoxLayout", "QIcon", "QLabel",
        "QLayout", "QLineEdit", "QListWidget", "QProgressBar", "QPushButton", "QRadioButton",
        "QSettings", "QSpinBox", "QTimer", "QToolButton", "QVBoxLayout")},
    "qt.QDesktopServices.openUrl": [q("QDesktopServices", "openUrl")],
    "qt.QTimer.singleShot": [q("QTimer", "singleShot")],
    "qt.QUrl.fromLocalFile": [q("QUrl", "fromLocalFile")],
    "qt.QLineEdit.Password": [q("QLineEdit", "Password")],
    "qt.QSizePolicy.Expanding": [q("QSizePolicy", "Expanding")],
    "qt.QSizePolicy.Fixed": [q("QSizePolicy", "Fixed")],
    "qt.Qt.TextSelectableByMouse": [q("Qt", "TextSelectableByMouse")],
    "signal clicked()": [q("QAbstractButton", "clicked()")],
    "signal toggled(bool)": [q("QAbstractButton", "toggled(bool)")],
    "signal currentIndexChanged(int)": [q("QComboBox", "currentIndexChanged(int)")],
    "signal editingFinished()": [q("QLineEdit", "editingFinished()")],
    "signal itemDoubleClicked(QListWidgetItem*)": [
        q("QListWidget", "itemDoubleClicked(QListWidgetItem*)")],
    "signal timeout()": [q("QTimer", "timeout()")],
    **{f".{m}": [q(k, m)] for m, k in (
        ("addButton", "QButtonGroup"), ("addLayout", "QBoxLayout"), ("addRow", "QFormLayout"),
        ("addStretch", "QBoxLayout"), ("addWidget", "QBoxLayout"), ("blockSignals", "QObject"),
        ("checkable", "QAbstractButton"), ("checked", "QAbstractButton"), ("clear", "QListWidget"),
        ("count", "QListWidget"), ("currentData", "QComboBox"), ("currentRow", "QListWidget"),
        ("currentText", "QComboBox"), ("enabled", "QWidget"), ("findData", "QComboBox"),
        ("format", "QProgressBar"), ("isActive", "QTimer"), ("isVisible", "QWidget"),
        ("itemData", "QComboBox"), ("itemText", "QComboBox"), ("placeholderText", "QLineEdit"),
        ("setCurrentIndex", "QComboBox"), ("setCurrentRow", "QListWidget"),
        ("setEchoMode", "QLineEdit"), ("setInterval", "QTimer"), ("setMaximumHeight", "QWidget"),
        ("setSingleShot", "QTimer"), ("setSizePolicy", "QWidget"), ("setStyleSheet", "QWidget"),
        ("setText", "QLabel"), ("setTextInteractionFlags", "QLabel"), ("setValue", "QSettings"),
        ("start", "QTimer"), ("stop", "QTimer"), ("toolTip", "QWidget"), ("visible", "QWidget"),
        ("wordWrap", "QLabel"))},
    ".addItem": [q("QComboBox", "addItem"), q("QListWidget", "addItem")],
    ".setRange": [q("QSpinBox", "setRange"), q("QProgressBar", "setRange")],
    ".text": [q("QLabel", "text"), q("QAbstractButton", "text"), q("QLineEdit", "text")],
    "SampleData.SampleDataLogic": [s("Modules/Scripted/SampleData/SampleData.py",
                                     r"^class SampleDataLogic\b")],
}

SECXX = "Modules/Loadable/Segmentations/EditorEffects/qSlicerSegmentEditorScriptedEffect.cxx"
EFFECT_HOOKS = ("icon", "helpText", "clone", "activate", "deactivate", "setupOptionsFrame",
                "processInteractionEvents", "processViewNodeEvents", "setMRMLDefaults",
                "referenceGeometryChanged", "sourceVolumeNodeChanged", "updateGUIFromMRML",
                "updateMRMLFromGUI", "cleanup")
OWN = {"SegmentEditorEffect": ("activeSliceWidget", "ensureController", "finishBox", "onApply",
                               "onCancel", "onDiscard", "onFocusTimer", "onFromSegment", "onJump",
                               "onModality", "onOpacity", "onPreset", "onPropagate", "onTimer",
                               "onUseWindow", "onViewSettled", "pipelineForWidget", "render",
                               "showMessage", "ensureTimeController", "onPropagateTime",
                               "onUndoTime", "target"),
       "MedSAMSegment": ("registerEditorEffect",),
       "MedSAMSegmentSelfTest": ("configureWorker", "mouse", "waitIdle",
                                 "test_box_propagate_apply_undo")}
SOURCES.update({f"def SegmentEditorEffect.{n}": [s(SECXX, rf'declareMethod\(Self::\w+, "{n}"\)')]
                for n in EFFECT_HOOKS})
SOURCES["def SegmentEditorEffect.__init__"] = [s(ASE, r"def __init__\(self, scriptedEffect")]
SOURCES.update({f"def {k}.{n}": [py("our own method, not called by Slicer")]
                for k, names in OWN.items() for n in names})
SOURCES.update({
    "def MedSAMSegment.__init__": [s(SLM, r"def __init__\(self, parent")],
    "def MedSAMSegmentWidget.setup": [s(SLM, r"def setup\(self\)")],
    "def MedSAMSegmentWidget.cleanup": [s(SLM, r"def cleanup\(self\)")],
    "def MedSAMSegmentTest.runTest": [s(SLM, r"def runTest\(self\):")],
    "def MedSAMSegmentSelfTest.runTest": [s(SLM, r"def runTest\(self\):")],
    "def MedSAMSegmentSelfTest.setUp": [py("unittest.TestCase.setUp")],
    "def MedSAMSegmentSelfTest.tearDown": [py("unittest.TestCase.tearDown")],
})
