"""A headless Slicer scene on slicer-core (Kitware's build of Slicer's non-Qt libraries).

Mirrors what the Slicer application sets up (see ../shared/SLICER_CORE.md): scene,
application logic, Colors/Volumes/Segmentations logics, slice orientation presets,
slice logics, a Segment Editor node and ``vtkSlicerSegmentEditorLogic``. Volumes are
read by Slicer's own readers (vtkSlicerVolumesLogic), so geometry is Slicer's.
"""

from __future__ import annotations

from dataclasses import dataclass, field

import numpy as np
import pytest

slicer = pytest.importorskip("slicer", reason="slicer-core is not installed (make setup)")
vtk = pytest.importorskip("vtk")


@dataclass
class Scene:
    scene: object
    app_logic: object
    logics: dict
    slice_logics: dict = field(default_factory=dict)

    # ---- volumes -------------------------------------------------------------------
    def load_volume(self, path: str, name: str = "ct", labelmap: bool = False):
        node = self.logics["Volumes"].AddArchetypeVolume(str(path), name, 1 if labelmap else 0,
                                                         None)
        assert node is not None, f"Slicer could not read {path}"
        return node

    def volume_from_array(self, array: np.ndarray, ijk_to_ras: np.ndarray, name: str = "vol"):
        """A scalar volume with voxels ``array`` (k, j, i) and an IJK->RAS matrix."""
        node = self.scene.AddNewNodeByClass("vtkMRMLScalarVolumeNode", name)
        image = vtk.vtkImageData()
        k, j, i = array.shape
        image.SetDimensions(i, j, k)
        image.AllocateScalars(vtk.VTK_SHORT, 1)
        from vtk.util import numpy_support
        numpy_support.vtk_to_numpy(image.GetPointData().GetScalars())[:] = \
            np.ascontiguousarray(array, dtype=np.int16).ravel()
        node.SetAndObserveImageData(image)
        m = vtk.vtkMatrix4x4()
        for r in range(4):
            for c in range(4):
                m.SetElement(r, c, float(ijk_to_ras[r, c]))
        node.SetIJKToRASMatrix(m)
        node.CreateDefaultDisplayNodes()
        return node

    # ---- views ---------------------------------------------------------------------
    def slice_view(self, name: str, orientation: str, volume=None, size=(400, 300)):
        """A slice node + logic like a Slicer view; fitted to ``volume`` if given."""
        sl = self.slice_logics.get(name)
        if sl is None:
            sl = slicer.vtkMRMLSliceLogic()
            sl.SetMRMLApplicationLogic(self.app_logic)
            sl.SetMRMLScene(self.scene)
            self.app_logic.GetSliceLogics().AddItem(sl)
            node = sl.AddSliceNode(name)
            self.slice_logics[name] = sl
        node = sl.GetSliceNode()
        node.SetDefaultOrientation(orientation)
        node.SetOrientation(orientation)
        sl.ResizeSliceNode(*size)
        if volume is not None:
            sl.GetSliceCompositeNode().SetBackgroundVolumeID(volume.GetID())
            sl.FitSliceToAll()
        return node, sl

    # ---- segment editor ------------------------------------------------------------
    def editor(self, source, segmentation=None):
        """(segmentation node, editor node, vtkSlicerSegmentEditorLogic) for ``source``."""
        if segmentation is None:
            segmentation = self.scene.AddNewNodeByClass("vtkMRMLSegmentationNode", "seg")
            segmentation.CreateDefaultDisplayNodes()
            segmentation.SetReferenceImageGeometryParameterFromVolumeNode(source)
        editor_node = self.scene.AddNewNodeByClass("vtkMRMLSegmentEditorNode")
        logic = slicer.vtkSlicerSegmentEditorLogic()
        logic.SetMRMLScene(self.scene)
        logic.SetMRMLApplicationLogic(self.app_logic)
        logic.SetSegmentEditorNode(editor_node)
        logic.SetSegmentationNode(segmentation)
        logic.SetSourceVolumeNode(source)
        return segmentation, editor_node, logic

    def add_segment(self, segmentation, name: str, color=(0.9, 0.6, 0.2)) -> str:
        seg_id = segmentation.GetSegmentation().AddEmptySegment(name, name, list(color))
        return seg_id

    def close(self) -> None:
        """Take the scene apart in the order Slicer does, before Python frees the objects.

        Left to the garbage collector, the colour logic can be freed first; its destructor
        removes nodes from the scene, whose events then reach slice logics being freed
        (a segfault at interpreter exit, seen here). Detaching every logic first avoids it.
        """
        if self.scene is None:
            return
        for sl in self.slice_logics.values():
            sl.SetMRMLScene(None)
        self.app_logic.GetSliceLogics().RemoveAllItems()
        for lg in self.logics.values():
            lg.SetMRMLScene(None)
        self.app_logic.SetMRMLScene(None)
        self.scene.Clear(1)
        self.slice_logics.clear()
        self.logics.clear()
        self.scene = None


_OPEN: list[Scene] = []  # closed at the end of the session (conftest) or by their fixture


def close_all() -> None:
    while _OPEN:
        _OPEN.pop().close()


def make_scene() -> Scene:
    scene = slicer.vtkMRMLScene()
    app_logic = slicer.vtkSlicerApplicationLogic()
    app_logic.SetMRMLScene(scene)
    app_logic.GetColorLogic().SetMRMLScene(scene)
    app_logic.GetColorLogic().AddDefaultColorNodes()
    app_logic.SetSliceLogics(vtk.vtkCollection())
    app_logic.SetViewLogics(vtk.vtkCollection())
    slicer.vtkMRMLSliceViewDisplayableManagerFactory.GetInstance().SetMRMLApplicationLogic(app_logic)
    logics = {}
    for name, lg in (("Colors", app_logic.GetColorLogic()),
                     ("Volumes", slicer.vtkSlicerVolumesLogic()),
                     ("Segmentations", slicer.vtkSlicerSegmentationsModuleLogic())):
        lg.SetMRMLScene(scene)
        lg.SetMRMLApplicationLogic(app_logic)
        app_logic.SetModuleLogic(name, lg)
        logics[name] = lg
    slicer.vtkMRMLSliceNode.AddDefaultSliceOrientationPresets(scene)
    made = Scene(scene, app_logic, logics)
    _OPEN.append(made)
    return made


def segment_mask(segmentation, segment_id: str, reference_image) -> np.ndarray:
    """A segment as bool (k, j, i) on the reference image grid (Slicer's own resampling)."""
    from MedSAMSegmentLib.labelmaps import segment_array

    return segment_array(segmentation, segment_id, reference_image)
