"""The source image as the model sees it (MRML layer): voxels, fingerprint, intensity window.

The voxels are ``sourceVolumeImageData()`` of the Segment Editor -- the source volume
resampled onto the segmentation's grid -- so masks come back voxel for voxel on the
grid the editor writes. They are copied once per change; the source volume itself is
never modified. Change detection is cheap: node ids and modification times, not a
comparison of arrays.
"""

from __future__ import annotations

from dataclasses import dataclass

import numpy as np
import slicer
from vtk.util import numpy_support

from .server_session import VolumeUpload
from .views import array_shape

# MedSAM2 was trained on CT clipped to a window (default soft tissue, level 40 / width
# 400). Presets users expect, as (level, width) in HU.
CT_PRESETS: dict[str, tuple[float, float]] = {
    "Abdomen": (40.0, 400.0),
    "Lung": (-600.0, 1500.0),
    "Brain": (40.0, 80.0),
    "Mediastinum": (50.0, 350.0),
}


@dataclass(frozen=True)
class Fingerprint:
    """What identifies the image the model sees; any change means a new server session."""

    source_id: str
    source_mtime: int  # the volume's voxels
    segmentation_id: str
    geometry: str  # the segmentation's reference grid
    transforms_mtime: int  # parent transforms of the volume and the segmentation


def fingerprint(source_node: slicer.vtkMRMLScalarVolumeNode,
                segmentation_node: slicer.vtkMRMLSegmentationNode) -> Fingerprint:
    image = source_node.GetImageData()
    tmtime = 0
    for node in (source_node, segmentation_node):
        t = node.GetParentTransformNode()
        if t is not None:
            tmtime = max(tmtime, t.GetTransformToWorldMTime())
    return Fingerprint(
        source_node.GetID(), int(image.GetMTime()) if image is not None else -1,
        segmentation_node.GetID(),
        segmentation_node.GetSegmentation().GetConversionParameter("Reference image geometry"),
        int(tmtime))


@dataclass
class VolumeContext:
    """The source image the current session was made from (the controller keeps one)."""

    fingerprint: Fingerprint
    segmentation: slicer.vtkMRMLSegmentationNode  # the node the results are for
    reference: slicer.vtkOrientedImageData  # its grid (no voxels)
    shape: tuple[int, int, int]
    upload: VolumeUpload
    name: str


def image_to_numpy(image: slicer.vtkOrientedImageData) -> np.ndarray:
    """A (k, j, i) copy of a single-component image's voxels."""
    scalars = image.GetPointData().GetScalars() if image is not None else None
    if scalars is None:
        raise ValueError("the source volume has no voxels")
    if scalars.GetNumberOfComponents() != 1:
        raise ValueError(f"the source volume has {scalars.GetNumberOfComponents()} components "
                         "per voxel (colour?); MedSAM2 needs a single-component (grey) volume")
    arr = numpy_support.vtk_to_numpy(scalars)
    return arr.reshape(array_shape(image)).copy()


def display_window(source_node: slicer.vtkMRMLScalarVolumeNode) -> tuple[float, float] | None:
    """(level, width) the user sees the volume with, or None without a display node."""
    display = source_node.GetDisplayNode()
    if display is None:
        return None
    return float(display.GetLevel()), float(display.GetWindow())


def set_display_window(source_node: slicer.vtkMRMLScalarVolumeNode, level: float,
                       width: float) -> None:
    """Show the volume with a preset window (the display only; voxels stay as they are)."""
    display = source_node.GetDisplayNode()
    if display is None:
        raise ValueError("the source volume has no display node")
    display.AutoWindowLevelOff()
    display.SetWindowLevel(width, level)


def guess_modality(array: np.ndarray) -> str:
    """CT has air at about -1000 HU; MR intensities are not negative."""
    return "ct" if array.size and float(array.min()) < -200.0 else "mr"


def capture(image: slicer.vtkOrientedImageData, source_node: slicer.vtkMRMLScalarVolumeNode,
            modality: str = "auto") -> tuple[VolumeUpload, slicer.vtkOrientedImageData]:
    """What the server gets (voxels, spacing, CT window), and the grid (no voxels) masks use.

    ``modality`` "auto" guesses CT or MR from the voxels; CT is read through the window
    the view shows, MR is normalised by the server.
    """
    array = image_to_numpy(image)
    if modality == "auto":
        modality = guess_modality(array)
    window = display_window(source_node) if modality == "ct" else None
    reference = slicer.vtkOrientedImageData()
    reference.CopyStructure(image)
    reference.CopyDirections(image)
    upload = VolumeUpload(array, tuple(float(v) for v in image.GetSpacing()), modality, window,
                          source_node.GetName())
    return upload, reference


def window_change(source_node: slicer.vtkMRMLScalarVolumeNode, upload: VolumeUpload) -> str | None:
    """A note when the view's CT window is no longer the one the model was given."""
    now = display_window(source_node) if upload.modality == "ct" else None
    if upload.window is None or now is None or np.allclose(now, upload.window):
        return None
    return (f"The view's window (level {now[0]:g}, width {now[1]:g}) differs from the one "
            f"MedSAM2 uses (level {upload.window[0]:g}, width {upload.window[1]:g}); click "
            "'Use view window' to switch.")
