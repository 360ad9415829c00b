"""Propagate through time (MRML layer): a source volume that is a sequence browser's proxy.

A cine, an echo recording or a 4D CT loaded as a volume sequence shows one frame at a time
through the browser's proxy volume. The frames go to the server as one time session (the
frame index first, capability "time"); the results are written into a segmentation
sequence bound to the same browser, the way the Sequences module documents 4D
segmentation: the segmentation node is that sequence's proxy, saving of changes is on,
and each frame has its own item, so the browser shows each frame's result and the scene
saves and reloads it.

Nothing here touches Qt. Writes keep what they replace (``FramesBefore``) so the whole
propagation can be taken back in one step (Slicer's own undo covers the frame shown only).
"""

from __future__ import annotations

import hashlib
from collections.abc import Iterable, Mapping
from dataclasses import dataclass, field

import numpy as np
import slicer
import vtk
from vtk.util import numpy_support

from .labelmaps import segment_array, to_oriented_image
from .preview import Preview


@dataclass
class TimeSource:
    """The browser that plays the source volume, and the volume sequence behind it."""

    browser: slicer.vtkMRMLSequenceBrowserNode
    sequence: slicer.vtkMRMLSequenceNode  # the source volume's frames
    proxy: slicer.vtkMRMLScalarVolumeNode  # the source volume the editor sees

    @property
    def num_frames(self) -> int:
        return int(self.sequence.GetNumberOfDataNodes())

    def index_values(self) -> list[str]:
        return [self.sequence.GetNthIndexValue(n) for n in range(self.num_frames)]

    @property
    def frame_shown(self) -> int:
        return int(self.browser.GetSelectedItemNumber())


def time_source(scene: slicer.vtkMRMLScene,
                volume_node: slicer.vtkMRMLScalarVolumeNode | None) -> TimeSource | None:
    """The browser whose proxy ``volume_node`` is (None: an ordinary volume)."""
    if volume_node is None or volume_node.GetID() is None:
        return None
    browsers = scene.GetNodesByClass("vtkMRMLSequenceBrowserNode")
    try:
        for n in range(browsers.GetNumberOfItems()):
            browser = browsers.GetItemAsObject(n)
            if browser.IsProxyNodeID(volume_node.GetID()):
                sequence = browser.GetSequenceNode(volume_node)
                if sequence is not None and sequence.GetNumberOfDataNodes() > 0:
                    return TimeSource(browser, sequence, volume_node)
    finally:
        browsers.UnRegister(None)  # GetNodesByClass hands over a new reference
    return None


def frame_range(num_frames: int, key: int, first: int | None = None,
                last: int | None = None) -> tuple[int, int]:
    """(first, last) frames, inclusive: all frames by default, or a range holding ``key``."""
    lo = 0 if first is None else int(first)
    hi = num_frames - 1 if last is None else int(last)
    if not 0 <= lo <= hi < num_frames:
        raise ValueError(f"frames {lo}..{hi} are not a range of the {num_frames} frames "
                         f"(0..{num_frames - 1})")
    if not lo <= key <= hi:
        raise ValueError(f"the box is on frame {key}, outside the range {lo}..{hi}: "
                         "propagation starts from the frame with the box")
    return lo, hi


def frames_array(source: TimeSource) -> np.ndarray:
    """The frames as the server takes them: (frames, rows, columns) grey, or
    (frames, rows, columns, 3) uint8 RGB. Each item must be one slice of one size."""
    frames = []
    for n in range(source.num_frames):
        image = source.sequence.GetNthDataNode(n).GetImageData()
        scalars = image.GetPointData().GetScalars() if image is not None else None
        if scalars is None:
            raise ValueError(f"frame {n} of {source.sequence.GetName()} has no voxels")
        i, j, k = image.GetDimensions()
        if k != 1:
            raise ValueError(f"frame {n} of {source.sequence.GetName()} has {k} slices: "
                             "propagation through time takes 2D frames")
        comps = scalars.GetNumberOfComponents()
        values = numpy_support.vtk_to_numpy(scalars)
        if comps == 3 and values.dtype == np.uint8:
            frames.append(values.reshape(j, i, 3))
        elif comps == 1:
            frames.append(values.reshape(j, i))
        else:
            raise ValueError(f"frame {n} has {comps} {values.dtype} components per pixel; "
                             "frames are grey or uint8 RGB")
        if frames[-1].shape != frames[0].shape:
            raise ValueError(f"frame {n} is {frames[-1].shape[:2]}, frame 0 is "
                             f"{frames[0].shape[:2]}: the frames differ in size")
    return np.stack(frames)


def phases_array(source: TimeSource) -> np.ndarray:
    """(phases, k, j, i), refused unless every phase lies on the proxy's grid (one session,
    one grid: a phase elsewhere would get its masks at the wrong place)."""
    grid = _grid(source.proxy)
    out = []
    for n in range(source.num_frames):
        node = source.sequence.GetNthDataNode(n)
        image = node.GetImageData() if node is not None else None
        scalars = image.GetPointData().GetScalars() if image is not None else None
        if scalars is None or scalars.GetNumberOfComponents() != 1:
            raise ValueError(f"phase {n} of {source.sequence.GetName()} has no grey voxels")
        if not all(np.allclose(a, b) for a, b in zip(_grid(node), grid, strict=True)):
            raise ValueError(f"phase {n} of {source.sequence.GetName()} is not on the grid of "
                             "the phase shown: 3D + time needs every phase on one grid")
        i, j, k = image.GetDimensions()
        out.append(numpy_support.vtk_to_numpy(scalars).reshape(k, j, i))
    return np.stack(out)


def _grid(node: slicer.vtkMRMLScalarVolumeNode) -> tuple:
    matrix = vtk.vtkMatrix4x4()
    node.GetIJKToRASMatrix(matrix)
    return (node.GetImageData().GetDimensions(),
            [matrix.GetElement(r, c) for r in range(3) for c in range(4)])


def segmentation_sequence(logic: slicer.vtkSlicerSequencesLogic, source: TimeSource,
                          segmentation_node: slicer.vtkMRMLSegmentationNode
                          ) -> slicer.vtkMRMLSequenceNode:
    """The segmentation's sequence in the source's browser, made on first use: the
    segmentation becomes its proxy, with saving of changes on (one item per frame)."""
    existing = source.browser.GetSequenceNode(segmentation_node)
    if existing is not None:
        return existing
    sequence = logic.AddSynchronizedNode(None, segmentation_node, source.browser)
    if sequence is None:
        raise ValueError(f"the browser {source.browser.GetName()} refused a sequence for "
                         f"{segmentation_node.GetName()}")
    source.browser.SetSaveChanges(sequence, True)
    return sequence


@dataclass
class FramesBefore:
    """Sequence items as they were before a write: copies, or None where there was none."""

    segment_id: str
    items: dict[str, slicer.vtkMRMLSegmentationNode | None] = field(default_factory=dict)


def segment_template(segmentation_node: slicer.vtkMRMLSegmentationNode
                     ) -> slicer.vtkSegmentation:
    """The proxy's segments as they are when the box is drawn (names, colours, terminology).

    Taken before propagating: the browser replaces the proxy's content with the item of
    the frame shown whenever it refreshes, so later the proxy may hold other segments.
    """
    template = slicer.vtkSegmentation()
    template.DeepCopy(segmentation_node.GetSegmentation())
    return template


def write_frames(logic: slicer.vtkSlicerSequencesLogic, source: TimeSource,
                 sequence: slicer.vtkMRMLSequenceNode, template: slicer.vtkSegmentation,
                 segment_id: str, masks: Mapping[int, np.ndarray]) -> FramesBefore:
    """Write ``masks`` (frame → (rows, columns) bool, or (k, j, i) for 3D frames) as
    ``segment_id`` into each frame's item; other segments of an item are kept, a frame's first item gets the template's
    segments, empty. Returns what it replaced (``restore_frames``)."""
    if template.GetSegment(segment_id) is None:
        raise ValueError(f"the segmentation has no segment {segment_id}")
    values = source.index_values()
    grid = slicer.vtkSlicerSegmentationsModuleLogic.CreateOrientedImageDataFromVolumeNode(
        source.proxy).GetDimensions()[::-1]
    for frame, mask in masks.items():
        if not 0 <= frame < len(values):
            raise ValueError(f"frame {frame} is not one of the {len(values)} frames")
        if _as_3d(mask).shape != grid:  # a wrong size would be written shifted or cut
            raise ValueError(f"the mask of frame {frame} is {np.shape(mask)}, the frames are "
                             f"{grid if grid[0] > 1 else grid[1:]}")
    # Saving of changes stays on: toggling it makes the browser deep-copy the item of the
    # frame shown into the proxy that shares its segmentation (a shallow copy while saving),
    # which empties both. Items are written whole, then the proxy follows them.
    return _write(logic, source, sequence, template, segment_id, masks, values)


def _write(logic: slicer.vtkSlicerSequencesLogic, source: TimeSource,
           sequence: slicer.vtkMRMLSequenceNode,
           template: slicer.vtkSegmentation, segment_id: str,
           masks: Mapping[int, np.ndarray], values: list[str]) -> FramesBefore:
    reference = slicer.vtkSlicerSegmentationsModuleLogic.CreateOrientedImageDataFromVolumeNode(
        source.proxy)
    before = FramesBefore(segment_id)
    for frame, mask in sorted(masks.items()):
        value = values[frame]
        item = sequence.GetDataNodeAtValue(value)
        scratch = slicer.vtkMRMLSegmentationNode()
        if item is not None:  # keep its other segments; keep a copy to restore
            kept = slicer.vtkMRMLSegmentationNode()
            kept.GetSegmentation().DeepCopy(item.GetSegmentation())
            before.items[value] = kept
            scratch.GetSegmentation().DeepCopy(item.GetSegmentation())
        else:  # this frame's first item: the proxy's segments, empty but the one written
            before.items[value] = None
            scratch.GetSegmentation().DeepCopy(template)
            empty = to_oriented_image(np.zeros((1, 1, 1), np.uint8), reference,
                                      (slice(0, 1), slice(0, 1), slice(0, 1)))
            for sid in scratch.GetSegmentation().GetSegmentIDs():
                slicer.vtkSlicerSegmentationsModuleLogic.SetBinaryLabelmapToSegment(
                    empty, scratch, sid, slicer.vtkSlicerSegmentationsModuleLogic.MODE_REPLACE)
        if scratch.GetSegmentation().GetSegment(segment_id) is None:
            scratch.GetSegmentation().CopySegmentFromSegmentation(template, segment_id)
        image = to_oriented_image(_as_3d(mask).astype(np.uint8), reference)
        slicer.vtkSlicerSegmentationsModuleLogic.SetBinaryLabelmapToSegment(
            image, scratch, segment_id, slicer.vtkSlicerSegmentationsModuleLogic.MODE_REPLACE)
        sequence.SetDataNodeAtValue(scratch, value)
    logic.UpdateProxyNodesFromSequences(source.browser)  # the frame shown, as written
    return before


def _as_3d(mask: np.ndarray) -> np.ndarray:
    """A frame's mask as (k, j, i) bool: a 2D frame's (rows, columns) is one slice."""
    mask = np.asarray(mask, bool)
    return mask[None] if mask.ndim == 2 else mask


def restore_frames(logic: slicer.vtkSlicerSequencesLogic, source: TimeSource,
                   sequence: slicer.vtkMRMLSequenceNode, before: FramesBefore) -> None:
    """Put back the items a ``write_frames`` replaced; in the items it created, the segment
    it wrote is emptied (the items stay: with saving of changes on, the browser saves the
    proxy back into the item of the frame shown, so a removed item would come back)."""
    reference = slicer.vtkSlicerSegmentationsModuleLogic.CreateOrientedImageDataFromVolumeNode(
        source.proxy)
    empty = to_oriented_image(np.zeros((1, 1, 1), np.uint8), reference,
                              (slice(0, 1), slice(0, 1), slice(0, 1)))
    for value, item in before.items.items():
        if item is None:
            current = sequence.GetDataNodeAtValue(value)
            if current is None:
                continue
            item = slicer.vtkMRMLSegmentationNode()
            item.GetSegmentation().DeepCopy(current.GetSegmentation())
            slicer.vtkSlicerSegmentationsModuleLogic.SetBinaryLabelmapToSegment(
                empty, item, before.segment_id,
                slicer.vtkSlicerSegmentationsModuleLogic.MODE_REPLACE)
        sequence.SetDataNodeAtValue(item, value)
    logic.UpdateProxyNodesFromSequences(source.browser)


def sequence_masks(source: TimeSource, sequence: slicer.vtkMRMLSequenceNode,
                   segment_id: str) -> np.ndarray:
    """(frames, rows, columns) bool: the segment in each frame's item (empty where none);
    (frames, k, j, i) for 3D frames."""
    reference = slicer.vtkSlicerSegmentationsModuleLogic.CreateOrientedImageDataFromVolumeNode(
        source.proxy)
    out = []
    for value in source.index_values():
        item = sequence.GetDataNodeAtValue(value)
        if item is None or item.GetSegmentation().GetSegment(segment_id) is None:
            out.append(np.zeros(reference.GetDimensions()[::-1], bool))
        else:
            out.append(segment_array(item, segment_id, reference))
    masks = np.stack(out)
    return masks[:, 0] if masks.shape[1] == 1 else masks


def frames_with(source: TimeSource, sequence: slicer.vtkMRMLSequenceNode,
                segment_id: str) -> list[int]:
    """Frames whose item holds voxels of the segment (what the review queue lists)."""
    masks = sequence_masks(source, sequence, segment_id)
    return [int(n) for n in np.flatnonzero(masks.reshape(len(masks), -1).any(axis=1))]


def frame_slices(source: TimeSource) -> int:
    """Slices per frame (1: 2D frames such as a cine or an echo clip; more: a 4D CT)."""
    image = source.proxy.GetImageData()
    return int(image.GetDimensions()[2]) if image is not None else 0


def bind_preview(logic: slicer.vtkSlicerSequencesLogic, source: TimeSource,
                 preview_node: slicer.vtkMRMLSegmentationNode) -> slicer.vtkMRMLSequenceNode:
    """The preview segmentation as a proxy of the source's browser, one item per frame with
    a result, so scrubbing or playing the browser shows each frame's preview (Slicer does
    it, whether the effect is active or not). Saving of changes is off (the preview is a
    view: edits of it are not kept) and a frame without an item shows an empty preview,
    not the previous frame's. Neither the sequence nor the preview is saved with the scene."""
    existing = source.browser.GetSequenceNode(preview_node)
    if existing is not None:
        return existing
    sequence = logic.AddSynchronizedNode(None, preview_node, source.browser)
    if sequence is None:
        raise ValueError(f"the browser {source.browser.GetName()} refused the preview's sequence")
    sequence.SetHideFromEditors(True)
    sequence.SetSaveWithScene(False)
    source.browser.SetSaveChanges(sequence, False)
    source.browser.SetMissingItemMode(sequence,
                                      slicer.vtkMRMLSequenceBrowserNode.MissingItemSetToDefault)
    return sequence


def unbind_preview(source: TimeSource, sequence: slicer.vtkMRMLSequenceNode | None) -> None:
    """Take the preview's sequence out of the browser and the scene."""
    if sequence is None or sequence.GetScene() is None:
        return
    source.browser.RemoveSynchronizedSequenceNode(sequence.GetID())
    sequence.GetScene().RemoveNode(sequence)


def items_digest(source: TimeSource, sequence: slicer.vtkMRMLSequenceNode,
                 frames: Iterable[int]) -> dict[int, dict[str, str]]:
    """Each frame's item as {segment id: digest of its mask} ({} without an item): whether
    a frame was edited since."""
    reference = slicer.vtkSlicerSegmentationsModuleLogic.CreateOrientedImageDataFromVolumeNode(
        source.proxy)
    values = source.index_values()
    out = {}
    for frame in frames:
        item = sequence.GetDataNodeAtValue(values[frame])
        segments = item.GetSegmentation().GetSegmentIDs() if item is not None else []
        out[frame] = {sid: hashlib.sha256(np.packbits(segment_array(item, sid, reference))).hexdigest()
                      for sid in segments}
    return out


def edited_frames(source: TimeSource, applied: AppliedWrite) -> list[int]:
    """Frames whose item changed since ``applied`` wrote it (restoring would lose that)."""
    now = items_digest(source, applied.sequence, applied.written)
    return [frame for frame, written in applied.written.items() if now[frame] != written]


@dataclass
class TimeContext:
    """The clip the current time session was made from."""

    key: tuple[str, str, int, str]  # browser, frames' sequence, frames, segmentation ids
    source: TimeSource
    segmentation: slicer.vtkMRMLSegmentationNode
    reference: slicer.vtkOrientedImageData  # one frame's grid (the proxy's)
    shape: tuple[int, ...]  # (frames, rows, columns), or (phases, k, j, i) for 3D frames


@dataclass
class AppliedWrite:
    """The last Apply through time, for ``undo_apply``."""

    segment_id: str
    sequence: slicer.vtkMRMLSequenceNode
    before: FramesBefore
    written: dict[int, dict[str, str]]  # items_digest right after the write


class TimePreview:
    """The preview of a clip: a hidden segmentation (preview.py) bound to the clip's browser
    (``bind_preview``), one item per frame with a result, written as results stream in."""

    def __init__(self, logic: slicer.vtkSlicerSequencesLogic, clip: TimeContext,
                 preview: Preview) -> None:
        self.logic, self.clip, self.preview = logic, clip, preview
        self.sequence: slicer.vtkMRMLSequenceNode | None = None
        self.template = slicer.vtkSegmentation()  # one segment per object, named and coloured

    @property
    def node(self) -> slicer.vtkMRMLSegmentationNode | None:
        return self.preview.node

    def write(self, segment_id: str, masks: Mapping[int, np.ndarray]) -> None:
        """Make the preview of ``segment_id`` on each frame of ``masks`` exactly that mask."""
        clip = self.clip
        if self.template.GetSegment(segment_id) is None:
            self.preview.show(segment_id, _as_3d(np.zeros(clip.shape[1:], bool)), clip.reference)
            self.template.CopySegmentFromSegmentation(self.preview.node.GetSegmentation(),
                                                      segment_id)
        if self.sequence is None:
            self.sequence = bind_preview(self.logic, clip.source, self.preview.node)
        write_frames(self.logic, clip.source, self.sequence, self.template, segment_id, masks)

    def drop(self) -> None:
        """Remove the preview, its sequence and its place in the browser."""
        unbind_preview(self.clip.source, self.sequence)
        self.preview.clear()
        self.sequence = None
