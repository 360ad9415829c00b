"""Writes through vtkSlicerSegmentEditorLogic, the preview node, and mask <-> labelmap.

Everything runs on slicer-core with the sample CT loaded by Slicer's reader. Expected
voxel sets are worked out with numpy from the masks themselves.
"""

from __future__ import annotations

import numpy as np
import pytest
from conftest import shared

slicer_harness = pytest.importorskip("slicer_harness")
slicer = pytest.importorskip("slicer")

from MedSAMSegmentLib.editor import LogicEditorContext, WriteError, write_result  # noqa: E402
from MedSAMSegmentLib.labelmaps import bounding_box, segment_array, to_oriented_image  # noqa: E402
from MedSAMSegmentLib.preview import Preview  # noqa: E402

CT = "totalseg_ct_abdomen_3mm/example_ct_sm.nii.gz"


@pytest.fixture
def ed():
    """A fresh scene: CT, segmentation with segments A and B, editor logic."""
    app = slicer_harness.make_scene()
    ct = app.load_volume(shared(CT))
    seg, node, logic = app.editor(ct)
    a = app.add_segment(seg, "A", (0.9, 0.2, 0.2))
    b = app.add_segment(seg, "B", (0.2, 0.2, 0.9))
    node.SetSelectedSegmentID(a)
    ctx = LogicEditorContext(logic)
    image = ctx.source_image()
    ref = slicer.vtkOrientedImageData()
    ref.CopyStructure(image)
    ref.CopyDirections(image)
    return app, ct, seg, node, logic, ctx, ref, a, b


def box_mask(shape, k, j, i) -> np.ndarray:
    m = np.zeros(shape, dtype=bool)
    m[k[0]:k[1], j[0]:j[1], i[0]:i[1]] = True
    return m


def test_labelmap_round_trip_with_crop(ed):
    app, ct, seg, node, logic, ctx, ref, a, b = ed
    shape = ref.GetDimensions()[::-1]
    m = box_mask(shape, (3, 9), (10, 40), (20, 70))
    box = bounding_box(m)
    assert box == (slice(3, 9), slice(10, 40), slice(20, 70))
    image = to_oriented_image(m[box], ref, box)
    assert image.GetExtent() == (20, 69, 10, 39, 3, 8)
    slicer.vtkSlicerSegmentationsModuleLogic.SetBinaryLabelmapToSegment(
        image, seg, a, slicer.vtkSlicerSegmentationsModuleLogic.MODE_REPLACE)
    assert np.array_equal(segment_array(seg, a, ref), m)
    assert bounding_box(np.zeros((2, 2, 2), bool)) is None


def test_replace_within_slices_leaves_other_slices_alone(ed):
    app, ct, seg, node, logic, ctx, ref, a, b = ed
    shape = ref.GetDimensions()[::-1]
    old = box_mask(shape, (5, 20), (30, 60), (30, 60))
    write_result(ctx, a, old, "k", set(range(shape[0])), ref, replace=True)
    assert np.array_equal(segment_array(seg, a, ref), old)
    new = box_mask(shape, (10, 15), (40, 80), (40, 80))
    logic.SaveStateForUndo()
    voxels = write_result(ctx, a, new, "k", set(range(8, 16)), ref, replace=True)
    got = segment_array(seg, a, ref)
    expected = old.copy()
    expected[8:16] = new[8:16]
    assert voxels == int(new[8:16].sum())
    assert np.array_equal(got, expected)
    # add mode: union on those slices, nothing removed
    logic.SaveStateForUndo()
    write_result(ctx, a, box_mask(shape, (0, 30), (0, 5), (0, 5)), "k", {2, 3}, ref, replace=False)
    got2 = segment_array(seg, a, ref)
    assert np.array_equal(got2[2:4, :5, :5], np.ones((2, 5, 5), bool))
    assert np.array_equal(np.delete(got2, [2, 3], axis=0), np.delete(expected, [2, 3], axis=0))
    # one Undo step per SaveStateForUndo: back to 'expected', then to 'old'
    logic.Undo()
    assert np.array_equal(segment_array(seg, a, ref), expected)
    logic.Undo()
    assert np.array_equal(segment_array(seg, a, ref), old)


def test_overwrite_modes_decide_what_happens_to_other_segments(ed):
    app, ct, seg, node, logic, ctx, ref, a, b = ed
    shape = ref.GetDimensions()[::-1]
    b_mask = box_mask(shape, (0, 30), (20, 50), (20, 50))
    a_mask = box_mask(shape, (0, 30), (35, 70), (35, 70))
    overlap = a_mask & b_mask
    for mode, b_keeps_overlap in ((node.OverwriteNone, True), (node.OverwriteAllSegments, False)):
        write_result(ctx, b, b_mask, "k", set(range(shape[0])), ref, replace=True)
        write_result(ctx, a, np.zeros(shape, bool), "k", set(range(shape[0])), ref, replace=True)
        node.SetOverwriteMode(mode)
        write_result(ctx, a, a_mask, "k", set(range(shape[0])), ref, replace=True)
        assert np.array_equal(segment_array(seg, a, ref), a_mask)
        expected_b = b_mask if b_keeps_overlap else b_mask & ~overlap
        assert np.array_equal(segment_array(seg, b, ref), expected_b), mode
    # visible-only: a hidden B is not touched
    write_result(ctx, b, b_mask, "k", set(range(shape[0])), ref, replace=True)
    seg.GetDisplayNode().SetSegmentVisibility(b, False)
    node.SetOverwriteMode(node.OverwriteVisibleSegments)
    write_result(ctx, a, a_mask, "k", {10}, ref, replace=True)
    assert np.array_equal(segment_array(seg, b, ref), b_mask)


def test_editable_area_and_intensity_range_are_honoured(ed):
    app, ct, seg, node, logic, ctx, ref, a, b = ed
    shape = ref.GetDimensions()[::-1]
    b_mask = box_mask(shape, (10, 20), (20, 60), (20, 60))
    write_result(ctx, b, b_mask, "k", set(range(shape[0])), ref, replace=True)
    everything = np.ones(shape, dtype=bool)
    node.SetOverwriteMode(node.OverwriteNone)
    node.SetMaskMode(slicer.vtkMRMLSegmentationNode.EditAllowedInsideSingleSegment)
    node.SetMaskSegmentID(b)
    write_result(ctx, a, everything, "k", set(range(shape[0])), ref, replace=True)
    assert np.array_equal(segment_array(seg, a, ref), b_mask)
    # intensity range on top: only voxels of B between 0 and 200 HU
    node.SetSourceVolumeIntensityMask(True)
    node.SetSourceVolumeIntensityMaskRange(0, 200)
    write_result(ctx, a, everything, "k", set(range(shape[0])), ref, replace=True)
    hu = slicer.util.arrayFromVolume(ct)
    assert np.array_equal(segment_array(seg, a, ref), b_mask & (hu >= 0) & (hu <= 200))
    # the editor's selected segment is restored after a write to another one
    node.SetSelectedSegmentID(b)
    write_result(ctx, a, everything, "k", {12}, ref, replace=False)
    assert node.GetSelectedSegmentID() == b


def test_writing_to_a_deleted_segment_fails_and_changes_nothing(ed):
    app, ct, seg, node, logic, ctx, ref, a, b = ed
    shape = ref.GetDimensions()[::-1]
    write_result(ctx, b, box_mask(shape, (1, 3), (1, 3), (1, 3)), "k", {1, 2}, ref, replace=True)
    seg.GetSegmentation().RemoveSegment(a)
    with pytest.raises(WriteError, match="no longer exists"):
        write_result(ctx, a, np.ones(shape, bool), "k", {1}, ref, replace=True)
    assert segment_array(seg, b, ref).sum() == 8


def test_preview_is_a_separate_node_coloured_like_its_segment(ed):
    app, ct, seg, node, logic, ctx, ref, a, b = ed
    shape = ref.GetDimensions()[::-1]
    preview = Preview(app.scene, seg)
    m = box_mask(shape, (4, 6), (10, 20), (10, 20))
    preview.show(a, m, ref)
    assert preview.node is not None and preview.node is not seg
    assert preview.node.GetAttribute("MedSAM2Preview") == seg.GetID()
    assert not preview.node.GetSaveWithScene()
    assert np.array_equal(segment_array(preview.node, a, ref), m)
    pseg = preview.node.GetSegmentation().GetSegment(a)
    assert pseg.GetName() == "A (MedSAM2)"
    assert pseg.GetColor() == pytest.approx((0.9, 0.2, 0.2))
    # the user's segmentation is untouched by a preview
    assert segment_array(seg, a, ref).sum() == 0
    preview.show(a, np.zeros(shape, bool), ref)
    assert segment_array(preview.node, a, ref).sum() == 0
    preview.set_opacity(0.3)
    assert preview.node.GetDisplayNode().GetOpacity() == pytest.approx(0.3)
    preview.remove(a)
    assert preview.segment_ids() == []
    preview.clear()
    assert preview.node is None and app.scene.GetNodesByClass("vtkMRMLSegmentationNode") \
        .GetNumberOfItems() == 1


def test_fingerprint_changes_with_voxels_geometry_and_transforms_only(ed):
    from MedSAMSegmentLib.source_volume import display_window, fingerprint, set_display_window

    app, ct, seg, node, logic, ctx, ref, a, b = ed
    fp = fingerprint(ct, seg)
    assert fingerprint(ct, seg) == fp
    set_display_window(ct, 40.0, 400.0)  # the display is not the data
    ct.SetName("renamed")
    assert fingerprint(ct, seg) == fp
    assert display_window(ct) == (40.0, 400.0)
    slicer.util.arrayFromVolume(ct)[0, 0, 0] += 1
    slicer.util.arrayFromVolumeModified(ct)
    fp2 = fingerprint(ct, seg)
    assert fp2 != fp and fp2.source_mtime > fp.source_mtime
    transform = app.scene.AddNewNodeByClass("vtkMRMLLinearTransformNode")
    seg.SetAndObserveTransformNodeID(transform.GetID())
    fp3 = fingerprint(ct, seg)
    assert fp3 != fp2 and fp3.transforms_mtime > 0
    seg.SetReferenceImageGeometryParameterFromVolumeNode(
        app.volume_from_array(np.zeros((2, 3, 4), np.int16), np.eye(4), "other"))
    assert fingerprint(ct, seg).geometry != fp3.geometry
