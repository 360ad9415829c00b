"""The Segment Editor as the effect's logic sees it (MRML layer), and writes through it.

``EditorContext`` is the seam between the Qt adaptor and everything testable. In
Slicer it is backed by the effect adaptor (``scriptedEffect``, see
SegmentEditorEffect.py); here by ``LogicEditorContext`` on a
``vtkSlicerSegmentEditorLogic`` -- the same C++ code: the adaptor's
``modifySegmentByLabelmap`` calls ``vtkSlicerSegmentEditorLogic::ModifySegmentByLabelmap``.

Writes go through that call only, so the editor's masking ("editable area", intensity
range) and "modify other segments" (overwrite) settings are honoured exactly as for
Paint, and one ``save_state_for_undo`` before them makes one Undo step.
"""

from __future__ import annotations

import numpy as np
import slicer

from .geometry import slice_region
from .labelmaps import bounding_box, to_oriented_image
from .provenance import tag_segment

ADD, REMOVE = "add", "remove"


class EditorContext:
    """What the effect's logic needs from the Segment Editor (interface)."""

    def scene(self) -> slicer.vtkMRMLScene:  # pragma: no cover - interface
        raise NotImplementedError

    def parameter_node(self) -> slicer.vtkMRMLSegmentEditorNode | None:  # pragma: no cover
        raise NotImplementedError

    def source_image(self) -> slicer.vtkOrientedImageData | None:  # pragma: no cover
        """The source volume on the segmentation's grid (``sourceVolumeImageData()``)."""
        raise NotImplementedError

    def save_state_for_undo(self) -> None:  # pragma: no cover - interface
        raise NotImplementedError

    def modify_segment(self, segment_id: str, labelmap: slicer.vtkOrientedImageData,
                       mode: str) -> None:  # pragma: no cover - interface
        raise NotImplementedError

    # ---- derived -------------------------------------------------------------------
    def segmentation_node(self) -> slicer.vtkMRMLSegmentationNode | None:
        node = self.parameter_node()
        return node.GetSegmentationNode() if node is not None else None

    def source_volume_node(self) -> slicer.vtkMRMLScalarVolumeNode | None:
        node = self.parameter_node()
        return node.GetSourceVolumeNode() if node is not None else None

    def selected_segment_id(self) -> str | None:
        node = self.parameter_node()
        segment_id = node.GetSelectedSegmentID() if node is not None else None
        return segment_id or None

    def select_segment(self, segment_id: str) -> None:
        self.parameter_node().SetSelectedSegmentID(segment_id)


class LogicEditorContext(EditorContext):
    """EditorContext on ``vtkSlicerSegmentEditorLogic`` (tests, scripts, the self-test)."""

    def __init__(self, logic: slicer.vtkSlicerSegmentEditorLogic) -> None:
        self.logic = logic

    def scene(self) -> slicer.vtkMRMLScene:
        return self.logic.GetMRMLScene()

    def parameter_node(self) -> slicer.vtkMRMLSegmentEditorNode | None:
        return self.logic.GetSegmentEditorNode()

    def source_image(self) -> slicer.vtkOrientedImageData | None:
        if not self.logic.UpdateAlignedSourceVolume():
            return None
        return self.logic.GetAlignedSourceVolume()

    def save_state_for_undo(self) -> None:
        self.logic.SaveStateForUndo()

    def modify_segment(self, segment_id: str, labelmap: slicer.vtkOrientedImageData,
                       mode: str) -> None:
        modes = {ADD: self.logic.ModificationModeAdd, REMOVE: self.logic.ModificationModeRemove}
        self.logic.ModifySegmentByLabelmap(self.segmentation_node(), segment_id, labelmap,
                                           modes[mode], True, False)


class WriteError(ValueError):
    """A result that cannot be written (the segment is gone, no source image...)."""


def write_result(ctx: EditorContext, segment_id: str, mask: np.ndarray, axis: str,
                 slices: set[int], reference: slicer.vtkOrientedImageData, *,
                 replace: bool, tags: dict[str, str] | None = None) -> int:
    """Write ``mask`` on ``slices`` into the segment; returns the voxels added.

    ``replace``: within those slices, the segment becomes the result (inside the
    editable area; elsewhere the segment keeps what it had); other slices are not
    touched. Otherwise the result is added to the segment. The caller saves the undo
    state once before writing one or more segments. ``tags`` (provenance.py) go on the
    segment once it is written.
    """
    segmentation = ctx.segmentation_node()
    if segmentation is None or segmentation.GetSegmentation().GetSegment(segment_id) is None:
        raise WriteError(f"segment {segment_id!r} no longer exists; its MedSAM2 result was kept "
                         "in the preview")
    if not slices:
        return 0
    covered = np.zeros(mask.shape, dtype=bool)
    for index in slices:
        covered[slice_region(axis, index)] = True
    # masking and overwrite use the editor's selected segment as "the edited segment"
    previous = ctx.selected_segment_id()
    ctx.select_segment(segment_id)
    try:
        if replace:
            box = bounding_box(covered)
            ctx.modify_segment(segment_id, to_oriented_image(covered[box], reference, box), REMOVE)
        result = mask & covered
        box = bounding_box(result)
        if box is not None:
            ctx.modify_segment(segment_id, to_oriented_image(result[box], reference, box), ADD)
    finally:
        if previous and previous != segment_id:
            ctx.select_segment(previous)
    if tags:
        tag_segment(segmentation.GetSegmentation().GetSegment(segment_id), tags)
    return int(np.count_nonzero(result))
