"""The MedSAM2 preview: a separate, semi-transparent segmentation beside the user's.

As Slicer's auto-complete effects do, results are shown in their own segmentation node
until Apply, so nothing the user has is touched by a preview. One preview segment per
MedSAM2 object, named and coloured like the segment it will be applied to. The node is
hidden from the data tree and saved with no scene (it is a view, not data).
"""

from __future__ import annotations

import numpy as np
import slicer

from .labelmaps import bounding_box, to_oriented_image

PREVIEW_OPACITY = 0.6
PREVIEW_ROLE = "MedSAM2Preview"  # attribute marking our node (and whose segmentation it previews)


class Preview:
    """Owns the preview node of one segmentation; created on first ``show``."""

    def __init__(self, scene: slicer.vtkMRMLScene,
                 segmentation_node: slicer.vtkMRMLSegmentationNode) -> None:
        self.scene = scene
        self.segmentation_node = segmentation_node
        self.node: slicer.vtkMRMLSegmentationNode | None = None
        self.opacity = PREVIEW_OPACITY

    def _ensure_node(self) -> slicer.vtkMRMLSegmentationNode:
        if self.node is not None and self.scene.IsNodePresent(self.node):
            return self.node
        seg = self.segmentation_node
        node = self.scene.AddNewNodeByClass("vtkMRMLSegmentationNode",
                                            f"{seg.GetName()} MedSAM2 preview")
        node.SetAttribute(PREVIEW_ROLE, seg.GetID())
        node.SetHideFromEditors(True)
        node.SetSaveWithScene(False)
        geometry = slicer.vtkSegmentationConverter.GetReferenceImageGeometryParameterName()
        node.GetSegmentation().SetConversionParameter(
            geometry, seg.GetSegmentation().GetConversionParameter(geometry))
        node.CreateDefaultDisplayNodes()
        display = node.GetDisplayNode()
        display.SetOpacity(self.opacity)
        display.SetVisibility2DOutline(True)
        display.SetVisibility2DFill(True)
        display.SetOpacity2DFill(0.5)
        if seg.GetParentTransformNode() is not None:
            node.SetAndObserveTransformNodeID(seg.GetParentTransformNode().GetID())
        self.node = node
        return node

    def show(self, segment_id: str, mask: np.ndarray,
             reference: slicer.vtkOrientedImageData) -> None:
        """Make the preview of ``segment_id`` exactly ``mask`` (bool, source grid)."""
        node = self._ensure_node()
        segmentation = node.GetSegmentation()
        source = self.segmentation_node.GetSegmentation().GetSegment(segment_id)
        segment = segmentation.GetSegment(segment_id)
        if segment is None:
            segment = slicer.vtkSegment()
            segmentation.AddSegment(segment, segment_id)
        if source is not None:  # follow renames and colour changes of the target segment
            segment.SetName(f"{source.GetName()} (MedSAM2)")
            segment.SetColor(source.GetColor())
        box = bounding_box(mask)
        if box is None:
            values, box = np.zeros((1, 1, 1), dtype=np.uint8), (slice(0, 1),) * 3
        else:
            values = mask[box]
        image = to_oriented_image(values, reference, box)
        slicer.vtkSlicerSegmentationsModuleLogic.SetBinaryLabelmapToSegment(
            image, node, segment_id, slicer.vtkSlicerSegmentationsModuleLogic.MODE_REPLACE)

    def segment_ids(self) -> list[str]:
        if self.node is None or not self.scene.IsNodePresent(self.node):
            return []
        segmentation = self.node.GetSegmentation()
        return [segmentation.GetNthSegmentID(n) for n in range(segmentation.GetNumberOfSegments())]

    def remove(self, segment_id: str) -> None:
        if self.node is not None and self.scene.IsNodePresent(self.node):
            self.node.GetSegmentation().RemoveSegment(segment_id)

    def set_opacity(self, opacity: float) -> None:
        self.opacity = float(opacity)
        if self.node is not None and self.node.GetDisplayNode() is not None:
            self.node.GetDisplayNode().SetOpacity(self.opacity)

    def clear(self) -> None:
        """Remove the preview node from the scene."""
        if self.node is not None and self.scene.IsNodePresent(self.node):
            self.scene.RemoveNode(self.node)
        self.node = None
