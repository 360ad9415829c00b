"""View -> slice axis and XY -> RAS -> IJK boxes, on real Slicer slice nodes (slicer-core).

Pure cases use matrices worked out by hand; Slicer cases load volumes with Slicer's
own reader, place real vtkMRMLSliceNode views (axial, sagittal, coronal, oblique) and
check against Slicer's own ``vtkSlicerSegmentEditorLogic.XyzToIjk``.
"""

from __future__ import annotations

import numpy as np
import pytest
from conftest import shared
from MedSAMSegmentLib.geometry import (
    GeometryError,
    box_on_slice,
    point_on_slice,
    slice_index_to_array,
    view_slice,
)

CT = "totalseg_ct_abdomen_3mm/example_ct_sm.nii.gz"


# ---------------------------------------------------------------- pure, by hand
def _matrix(cols: list[list[float]], origin: list[float]) -> np.ndarray:
    """XY -> array matrix from the images of screen x, screen y (per pixel) and the origin."""
    m = np.eye(4)
    m[:3, 0], m[:3, 1] = cols[0], cols[1]
    m[:3, 2] = np.cross(cols[0], cols[1])
    m[:3, 3] = origin
    return m


def test_axial_identity_view_gives_axis_k_and_the_drawn_box():
    # screen x -> +i, screen y -> +j, half a voxel per pixel, plane k = 7
    m = _matrix([[0.5, 0, 0], [0, 0.5, 0]], [0, 0, 7])
    frame = view_slice(m, (200, 100), shape=(10, 50, 100))
    assert (frame.axis, frame.index) == ("k", 7)
    assert box_on_slice(frame, (20, 10), (60, 50), (10, 50, 100)) == (10.0, 5.0, 30.0, 25.0)


def test_flipped_screen_gives_the_same_normalised_box():
    # radiological left-right flip and y upwards: the same voxels, drawn the other way round
    m = _matrix([[-0.5, 0, 0], [0, -0.5, 0]], [99, 49, 3])
    frame = view_slice(m, (200, 100), shape=(10, 50, 100))
    assert (frame.axis, frame.index) == ("k", 3)
    box = box_on_slice(frame, (138, 48), (178, 88), (10, 50, 100))
    assert box == (10.0, 5.0, 30.0, 25.0)
    # dragging from the other corner gives the same box
    assert box_on_slice(frame, (178, 88), (138, 48), (10, 50, 100)) == box


def test_permuted_view_maps_screen_axes_to_slice_columns_and_rows():
    # a sagittal-like view: screen x -> -j, screen y -> +k, plane i = 12
    m = _matrix([[0, -1, 0], [0, 0, 1]], [12, 40, 0])
    frame = view_slice(m, (64, 16), shape=(20, 64, 30))
    assert (frame.axis, frame.index) == ("i", 12)
    # axis i: x = column = j, y = row = k
    assert box_on_slice(frame, (10, 2), (30, 12), (20, 64, 30)) == (10.0, 2.0, 30.0, 12.0)
    assert slice_index_to_array("i", 12, 10.0, 2.0) == (12.0, 10.0, 2.0)


def test_oblique_and_rotated_views_are_refused():
    tilt = np.deg2rad(10)
    oblique = _matrix([[0.5, 0, 0], [0, 0.5 * np.cos(tilt), 0.5 * np.sin(tilt)]], [0, 0, 5])
    with pytest.raises(GeometryError, match="not aligned"):
        view_slice(oblique, (200, 100), (10, 50, 100))
    rot = np.deg2rad(20)
    rotated = _matrix([[0.5 * np.cos(rot), 0.5 * np.sin(rot), 0],
                       [-0.5 * np.sin(rot), 0.5 * np.cos(rot), 0]], [0, 0, 5])
    with pytest.raises(GeometryError, match="rotated within the slice"):
        view_slice(rotated, (200, 100), (10, 50, 100))


def test_a_tiny_drift_below_half_a_voxel_is_still_aligned():
    m = _matrix([[0.5, 0, 1e-4], [0, 0.5, 0]], [0, 0, 5])  # 0.02 voxel over 200 px
    assert view_slice(m, (200, 100), (10, 50, 100)).index == 5


def test_views_outside_the_volume_and_boxes_off_the_image_are_refused():
    m = _matrix([[0.5, 0, 0], [0, 0.5, 0]], [0, 0, 12])
    with pytest.raises(GeometryError, match="outside the source volume"):
        view_slice(m, (200, 100), (10, 50, 100))
    frame = view_slice(_matrix([[0.5, 0, 0], [0, 0.5, 0]], [0, 0, 2]), (200, 100), (10, 50, 100))
    with pytest.raises(GeometryError, match="outside the source volume"):
        box_on_slice(frame, (-100, -100), (-20, -20), (10, 50, 100))
    with pytest.raises(GeometryError, match="too small"):
        box_on_slice(frame, (20, 20), (21, 60), (10, 50, 100))
    # partly outside: clipped to voxel centres 0..n-1
    assert box_on_slice(frame, (-40, -40), (60, 500), (10, 50, 100)) == (0.0, 0.0, 30.0, 49.0)
    with pytest.raises(GeometryError, match="outside"):
        point_on_slice(frame, (-10, 10), (10, 50, 100))
    assert point_on_slice(frame, (20, 10), (10, 50, 100)) == (10.0, 5.0)


# ---------------------------------------------------------------- real Slicer
slicer_harness = pytest.importorskip("slicer_harness")
slicer = pytest.importorskip("slicer")


@pytest.fixture(scope="module")
def app():
    return slicer_harness.make_scene()


def _image(app, volume, oversample: float | None = None, transform=None):
    """The source image on the segmentation's grid, as the Segment Editor makes it."""
    seg, _, logic = app.editor(volume)
    if oversample:
        g = slicer.vtkSlicerSegmentationGeometryLogic()
        g.SetInputSegmentationNode(seg)
        g.SetSourceGeometryNode(volume)
        g.SetOversamplingFactor(oversample)
        g.CalculateOutputGeometry()
        g.SetReferenceImageGeometryInSegmentationNode()
    if transform is not None:
        seg.SetAndObserveTransformNodeID(transform.GetID())
    assert logic.UpdateAlignedSourceVolume()
    return seg, logic.GetAlignedSourceVolume()


def _slicer_ijk(node, image, xy, transform=None) -> np.ndarray:
    out = [0, 0, 0]
    slicer.vtkSlicerSegmentEditorLogic.XyzToIjk([float(xy[0]), float(xy[1]), 0.0], out, node,
                                                image, transform)
    return np.array(out)


def _check_view(node, image, transform, expected_axis: str):
    """Our frame vs Slicer's own XyzToIjk at the view centre and three corners."""
    from MedSAMSegmentLib.views import slice_frame

    frame = slice_frame(node, image, transform)
    assert frame.axis == expected_axis
    ext = image.GetExtent()
    start = np.array([ext[0], ext[2], ext[4]])
    w, h = node.GetDimensions()[:2]
    for xy in ((w / 2, h / 2), (10, 10), (w - 10, 10), (10, h - 10)):
        ours = (frame.xy_to_array @ np.array([xy[0], xy[1], 0.0, 1.0]))[:3] + start
        theirs = _slicer_ijk(node, image, xy, transform)
        # Slicer rounds with int(x + 0.5) (truncation); we keep the continuous position.
        # Exactly half-way between voxels float error may tip it either way.
        expected = np.trunc(ours + 0.5)
        tie = np.abs(np.abs(ours - np.trunc(ours)) - 0.5) < 1e-6
        ok = (expected == theirs) | (tie & (np.abs(expected - theirs) <= 1))
        assert ok.all(), (xy, ours, theirs)
    column = "ijk".index(expected_axis)
    centre = frame.xy_to_array @ np.array([w / 2, h / 2, 0.0, 1.0])
    assert frame.index == int(np.floor(centre[column] + 0.5))
    return frame


@pytest.mark.parametrize("orientation, axis", [("Axial", "k"), ("Sagittal", "i"),
                                               ("Coronal", "j")])
def test_standard_views_on_a_ct_loaded_by_slicer(app, orientation, axis):
    ct = app.load_volume(shared(CT))
    _, image = _image(app, ct)
    node, _ = app.slice_view(f"V{orientation}", orientation, ct)
    _check_view(node, image, None, axis)


def _volume(app, ijk_to_ras: np.ndarray, name: str):
    arr = np.arange(12 * 16 * 20, dtype=np.int16).reshape(12, 16, 20)  # (k, j, i)
    return app.volume_from_array(arr, ijk_to_ras, name)


# IJK -> RAS with a flipped axis, and with permuted axes (I runs S, J runs R, K runs A)
FLIPPED = np.array([[-2.0, 0, 0, 10], [0, 1.5, 0, -5], [0, 0, -3.0, 40], [0, 0, 0, 1]])
PERMUTED = np.array([[0, 1.5, 0, 0], [0, 0, 3.0, 0], [2.0, 0, 0, 0], [0, 0, 0, 1]])


@pytest.mark.parametrize("name, ijk_to_ras, expect", [
    ("flipped", FLIPPED, {"Axial": "k", "Sagittal": "i", "Coronal": "j"}),
    ("permuted", PERMUTED, {"Axial": "i", "Sagittal": "j", "Coronal": "k"}),
])
def test_flipped_and_permuted_volumes(app, name, ijk_to_ras, expect):
    vol = _volume(app, ijk_to_ras, name)
    _, image = _image(app, vol)
    for orientation, axis in expect.items():
        node, _ = app.slice_view(f"{name}{orientation}", orientation, vol)
        frame = _check_view(node, image, None, axis)
        # a box dragged over the view covers the voxels Slicer puts under its corners
        w, h = node.GetDimensions()[:2]
        p0, p1 = (w * 0.3, h * 0.35), (w * 0.6, h * 0.7)
        from MedSAMSegmentLib.geometry import IJK_COLUMN, IN_PLANE

        box = box_on_slice(frame, p0, p1, image.GetDimensions()[::-1])
        col, row = IN_PLANE[axis]
        corners = np.array([_slicer_ijk(node, image, p) for p in (p0, p1)])
        assert abs(box[0] - corners[:, IJK_COLUMN[col]].min()) <= 0.5
        assert abs(box[2] - corners[:, IJK_COLUMN[col]].max()) <= 0.5
        assert abs(box[1] - corners[:, IJK_COLUMN[row]].min()) <= 0.5
        assert abs(box[3] - corners[:, IJK_COLUMN[row]].max()) <= 0.5


def test_parent_transform_of_the_segmentation_is_followed(app):
    ct = app.load_volume(shared(CT), "ct_tf")
    transform = app.scene.AddNewNodeByClass("vtkMRMLLinearTransformNode")
    t = np.eye(4)
    t[:3, 3] = (12.0, -7.0, 9.0)  # segmentation shifted by 3-4 voxels on each axis
    import vtk

    m = vtk.vtkMatrix4x4()
    for r in range(4):
        for c in range(4):
            m.SetElement(r, c, t[r, c])
    transform.SetMatrixTransformToParent(m)
    _, image = _image(app, ct, transform=transform)
    node, _ = app.slice_view("TfAxial", "Axial", ct)
    frame = _check_view(node, image, transform, "k")
    from MedSAMSegmentLib.views import slice_frame

    plain = slice_frame(node, image, None)
    assert plain.index != frame.index or not np.allclose(plain.xy_to_array, frame.xy_to_array)
    # moving the segmentation +9 mm in S shows image slice k - 3 in the same view plane
    assert frame.index == plain.index - 3


def test_a_reference_grid_with_another_extent_and_spacing(app):
    ct = app.load_volume(shared(CT), "ct_over")
    _, image = _image(app, ct, oversample=2)
    assert image.GetSpacing()[0] == pytest.approx(1.5)
    node, _ = app.slice_view("OverAxial", "Axial", ct)
    frame = _check_view(node, image, None, "k")
    assert 0 <= frame.index < image.GetDimensions()[2]


def test_an_oblique_view_gets_a_clear_message(app):
    import vtk
    from MedSAMSegmentLib.views import slice_frame

    ct = app.load_volume(shared(CT), "ct_obl")
    _, image = _image(app, ct)
    node, _ = app.slice_view("Oblique", "Axial", ct)
    rot = vtk.vtkTransform()
    rot.RotateX(25)
    node.GetSliceToRAS().DeepCopy(rot.GetMatrix())
    node.UpdateMatrices()
    with pytest.raises(GeometryError, match="Rotate to volume plane"):
        slice_frame(node, image, None)


def test_jump_moves_only_views_of_that_axis_to_the_slice(app):
    from MedSAMSegmentLib.views import jump_views, slice_frame

    ct = app.load_volume(shared(CT), "ct_jump")
    _, image = _image(app, ct)
    red, _ = app.slice_view("JRed", "Axial", ct)
    green, _ = app.slice_view("JGreen", "Coronal", ct)
    before = slice_frame(green, image).index
    assert jump_views([red, green], image, "k", 21) == 1
    assert slice_frame(red, image).index == 21
    assert slice_frame(green, image).index == before
