"""Propagate through time, the parts that need no scene: which frames to review, how the
frames are sent, what the panel's "Through time" group shows. time_controller.py uses them.
"""

from __future__ import annotations

from dataclasses import dataclass

import numpy as np

from .annotation import ObjectState
from .panel_view import TimePanelState
from .server_session import VolumeUpload
from .source_volume import guess_modality


class FramesError(ValueError):
    """Frames that cannot be sent (the message says why)."""


AREA_JUMP = 0.5  # review: a frame whose mask area differs from its neighbour's by this share


@dataclass(frozen=True)
class FrameFlag:
    """One frame to look at, and why."""

    frame: int
    reason: str  # "mask vanishes", "area jumps", or "" (lowest predicted IoU)
    iou: float
    pixels: int


def frames_upload(frames: np.ndarray, name: str, modality: str,
                  window: tuple[float, float] | None) -> VolumeUpload:
    """The time session's upload. uint8 frames (grey, or RGB) go as they are, modality
    "none", as ``segment --time`` reads them; other grey frames (cine MR/CT) are read by
    ``modality`` (auto: CT if there is air) like a volume."""
    if frames.dtype == np.uint8:
        return VolumeUpload(frames, (1.0, 1.0, 1.0), "none", None, name, time=True)
    if frames.ndim != 3:
        raise FramesError(f"colour frames must be uint8 RGB, these are {frames.dtype}")
    modality = guess_modality(frames) if modality == "auto" else modality
    return VolumeUpload(frames, (1.0, 1.0, 1.0), modality, window if modality == "ct" else None,
                        name, time=True)


def review_frames(obj: ObjectState, limit: int = 10) -> list[FrameFlag]:
    """Frames to check first: where the mask vanishes between frames that have it, where
    its area jumps (by ``AREA_JUMP`` of the larger), then the lowest predicted IoU."""
    done = sorted(obj.scores)
    area = {f: int(np.count_nonzero(obj.mask[f])) for f in done}
    present = [f for f in done if area[f]]
    flags: list[FrameFlag] = []
    for prev, f in zip(done, done[1:], strict=False):
        if f != prev + 1:
            continue
        iou = obj.scores[f][0]
        if not area[f] and present and present[0] < f < present[-1]:
            flags.append(FrameFlag(f, "mask vanishes", iou, 0))
        elif area[f] and area[prev] and \
                abs(area[f] - area[prev]) > AREA_JUMP * max(area[f], area[prev]):
            flags.append(FrameFlag(f, "area jumps", iou, area[f]))
    flagged = {fl.frame for fl in flags}
    rest = sorted((FrameFlag(f, "", obj.scores[f][0], area[f]) for f in present
                   if f not in flagged), key=lambda fl: (fl.iou, fl.frame))
    return (flags + rest)[:limit]


def time_panel_state(controller: object, source: object | None) -> TimePanelState:
    """The "Through time" group's state from a TimeController and its TimeSource."""
    if source is None:
        return TimePanelState()
    t = TimePanelState(offered=True, frames=source.num_frames, frame_shown=source.frame_shown,
                       propagating=controller.propagating, progress=controller.progress,
                       can_undo_apply=controller.applied is not None
                       and not controller.propagating)
    ctx = controller.ctx
    seg = ctx.segmentation_node()
    segment_id = ctx.selected_segment_id()
    segment = seg.GetSegmentation().GetSegment(segment_id) \
        if seg is not None and segment_id else None
    t.segment = segment.GetName() if segment is not None else ""
    obj = controller.object_of(segment_id)
    if obj is not None:
        t.prompted = sorted(obj.prompted)
        t.pending = len(obj.pending)
        flags = review_frames(obj)
        t.review = [f"frame {fl.frame} · {fl.reason + ' · ' if fl.reason else ''}"
                    f"IoU {fl.iou:.2f} · {fl.pixels} pixels" for fl in flags]
        t.review_frames = [fl.frame for fl in flags]
    return t
