"""The effect's 2D box/point actors, rendered offscreen over a real Slicer slice node."""

from __future__ import annotations

import numpy as np
import pytest

slicer_harness = pytest.importorskip("slicer_harness")
vtk = pytest.importorskip("vtk")

from MedSAMSegmentLib.BoxPipeline import BOX_COLOR, NEGATIVE_COLOR, POSITIVE_COLOR, BoxPipeline  # noqa: E402

W, H = 200, 150


def render(actors) -> np.ndarray:
    from vtk.util import numpy_support

    window = vtk.vtkRenderWindow()
    window.SetOffScreenRendering(1)
    window.SetSize(W, H)
    renderer = vtk.vtkRenderer()
    window.AddRenderer(renderer)
    for actor in actors:
        renderer.AddViewProp(actor)
    window.Render()
    grab = vtk.vtkWindowToImageFilter()
    grab.SetInput(window)
    grab.ReadFrontBufferOff()
    grab.Update()
    rgb = numpy_support.vtk_to_numpy(grab.GetOutput().GetPointData().GetScalars())
    return rgb.reshape(H, W, -1)[:, :, :3]  # row 0 = bottom = view y 0


def is_color(pixels: np.ndarray, color) -> np.ndarray:
    return np.all(np.abs(pixels.astype(int) - np.array(color) * 255) < 40, axis=-1)


@pytest.fixture
def view():
    app = slicer_harness.make_scene()
    vol = app.volume_from_array(np.zeros((10, 40, 50), np.int16), np.diag([1.0, 1.0, 2.0, 1.0]))
    node, logic = app.slice_view("Box", "Axial", vol, size=(W, H))
    return node, logic


def test_box_is_drawn_where_dragged_and_follows_pan_and_slice(view):
    node, logic = view
    box = BoxPipeline(node)
    box.set_box((40, 30), (120, 100))
    img = render(box.actors())
    yellow = is_color(img, BOX_COLOR)
    rows, cols = np.nonzero(yellow)
    assert yellow.sum() > 200
    assert abs(cols.min() - 40) <= 2 and abs(cols.max() - 120) <= 2
    assert abs(rows.min() - 30) <= 2 and abs(rows.max() - 100) <= 2
    assert not yellow[65, 80]  # an outline, not a filled box

    # zoom out 2x: the box stays on the anatomy, so it shrinks on the screen
    xy_to_ras = node.GetXYToRAS()
    before = [xy_to_ras.GetElement(0, 0)]
    fov = list(node.GetFieldOfView())
    node.SetFieldOfView(fov[0] * 2, fov[1] * 2, fov[2])
    node.UpdateMatrices()
    assert node.GetXYToRAS().GetElement(0, 0) == pytest.approx(before[0] * 2)
    box.update()
    rows2, cols2 = np.nonzero(is_color(render(box.actors()), BOX_COLOR))
    assert (cols2.max() - cols2.min()) == pytest.approx((cols.max() - cols.min()) / 2, abs=2)

    # another slice: hidden; back on its slice: shown again
    offset = logic.GetSliceOffset()
    logic.SetSliceOffset(offset + 4.0)
    box.update()
    assert not box.box_actor.GetVisibility()
    logic.SetSliceOffset(offset)
    box.update()
    assert box.box_actor.GetVisibility()


def test_points_are_green_or_red_and_reset_by_a_new_box(view):
    node, _ = view
    box = BoxPipeline(node)
    box.add_point((50, 50), positive=True)
    box.add_point((150, 100), positive=False)
    img = render(box.actors())
    assert is_color(img[47:54, 47:54], POSITIVE_COLOR).any()
    assert is_color(img[97:104, 147:154], NEGATIVE_COLOR).any()
    assert not is_color(img, BOX_COLOR).any()
    box.set_box((10, 10), (60, 60))
    assert box.points_ras == [] and not box.marker_actor.GetVisibility()
    box.clear()
    assert not box.box_actor.GetVisibility()
