"""What the effect's options frame shows, derived from the controller (pure)."""

from __future__ import annotations

from dataclasses import dataclass, field

from .annotation import axis_name
from .provenance import export_note


@dataclass
class PanelState:
    segment: str = ""
    prompted: list[int] = field(default_factory=list)
    pending: int = 0
    propagating: bool = False
    progress: tuple[int, int] | None = None
    busy: bool = False
    review: list[str] = field(default_factory=list)  # "slice 23 · IoU 0.61 · 1234 voxels"
    review_slices: list[int] = field(default_factory=list)
    model_window: str = ""
    backend: str = ""
    slices: int = 0  # along the object's axis (for the range spin boxes)
    export_note: str = ""  # what DICOM export of the segment will need (provenance.py)


def panel_state(controller: object | None, backend: str = "") -> PanelState:
    """The panel's state for the editor's selected segment."""
    s = PanelState(backend=backend)
    if controller is None:
        return s
    ctx = controller.ctx
    seg_node = ctx.segmentation_node()
    segment_id = ctx.selected_segment_id()
    segment = seg_node.GetSegmentation().GetSegment(segment_id) \
        if seg_node is not None and segment_id else None
    s.segment = segment.GetName() if segment is not None else ""
    # vtkSegment::GetTerminology (Slicer >= 5.10): the serialized terminology entry
    s.export_note = export_note(segment.GetTerminology()) if segment is not None else ""
    s.propagating = controller.propagating
    s.progress = controller.progress
    s.busy = controller.busy
    volume = controller.volume
    if volume is not None:
        up = volume.upload
        s.model_window = (f"CT, level {up.window[0]:g} / width {up.window[1]:g}"
                          if up.modality == "ct" and up.window is not None
                          else "CT, default soft-tissue window" if up.modality == "ct"
                          else "MR, normalised to its 0.5-99.5 percentiles")
    obj = controller.object_of(segment_id)
    if obj is not None and volume is not None:
        s.prompted = sorted(obj.prompted)
        s.pending = len(obj.pending)
        s.slices = volume.shape["kji".index(obj.axis)] if obj.axis else 0
        items = controller.review_queue()
        s.review = [f"slice {it.index} · IoU {it.iou:.2f} · {it.voxels} voxels" for it in items]
        s.review_slices = [it.index for it in items]
        if obj.axis:
            s.backend = (f"{axis_name(obj.axis)} slices. " + s.backend).strip()
    return s
