"""Propagate through time on slicer-core: the real echo cine loaded as a volume sequence
(Slicer's vtkMRMLVolumeSequenceStorageNode), browsed by a vtkMRMLSequenceBrowserNode; a box
on one frame, propagation through time, the results written into a segmentation sequence
bound to the same browser, its items equal to the CLI's frames, and taken back in one step."""

from __future__ import annotations

import numpy as np
import pytest
import SimpleITK as sitk
from conftest import cli, shared

slicer_harness = pytest.importorskip("slicer_harness")
slicer = pytest.importorskip("slicer")

from medsam_server.io.sequences import write_label_sequence  # noqa: E402
from medsam_server.io.volumes import read_volume  # noqa: E402
from MedSAMSegmentLib.labelmaps import segment_array  # noqa: E402
from MedSAMSegmentLib.time_sequence import (  # noqa: E402
    frame_range,
    frames_array,
    frames_with,
    restore_frames,
    segment_template,
    segmentation_sequence,
    sequence_masks,
    time_source,
    write_frames,
)

BOX = (225.0, 95.0, 325.0, 225.0)  # SOURCES.md's approximate LV box on the cine's frames
FRAMES, KEY = 3, 1


@pytest.fixture(scope="module")
def cine(tmp_path_factory) -> str:
    img = sitk.ReadImage(str(shared("echo_a4c/echo_a4c_cine.nrrd")))
    path = tmp_path_factory.mktemp("cine") / "cine.nrrd"
    sitk.WriteImage(img[:, :, :FRAMES], str(path))
    return str(path)


def load_cine(app, cine: str, folder, key: int):  # noqa: ANN001, ANN201
    """The cine as Slicer loads a cine: a volume sequence read by
    vtkMRMLVolumeSequenceStorageNode, a browser on frame ``key``, its proxy volume.
    Returns (sequences logic, browser, proxy, frames array)."""
    frames = read_volume(cine)
    path = write_label_sequence(folder / "echo.seq.nrrd", frames.array, frames,
                                frame_time_ms=33.333)  # a uint8 4D NRRD of the frames
    scene = app.scene
    logic = slicer.vtkSlicerSequencesLogic()
    logic.SetMRMLScene(scene)
    logic.SetMRMLApplicationLogic(app.app_logic)
    sequence = scene.AddNewNodeByClass("vtkMRMLSequenceNode", "echo")
    storage = scene.AddNewNodeByClass("vtkMRMLVolumeSequenceStorageNode")
    storage.SetFileName(str(path))
    assert storage.ReadData(sequence) == 1
    assert sequence.GetNumberOfDataNodes() == frames.array.shape[0]
    browser = scene.AddNewNodeByClass("vtkMRMLSequenceBrowserNode", "echo browser")
    browser.SetAndObserveMasterSequenceNodeID(sequence.GetID())
    browser.SetSelectedItemNumber(key)
    logic.UpdateProxyNodesFromSequences(browser)
    proxy = browser.GetProxyNode(sequence)
    assert proxy is not None and proxy.IsA("vtkMRMLScalarVolumeNode")
    return logic, browser, proxy, frames.array


@pytest.fixture
def browsed(cine, tmp_path):  # noqa: ANN201
    """The cine as Slicer loads a cine: a volume sequence, a browser, its proxy volume."""
    app = slicer_harness.make_scene()
    scene = app.scene
    logic, browser, proxy, array = load_cine(app, cine, tmp_path, KEY)
    segmentation = scene.AddNewNodeByClass("vtkMRMLSegmentationNode", "echo segmentation")
    segmentation.SetReferenceImageGeometryParameterFromVolumeNode(proxy)
    lv = segmentation.GetSegmentation().AddEmptySegment("LV", "LV")
    other = segmentation.GetSegmentation().AddEmptySegment("other", "other")
    return scene, logic, browser, proxy, segmentation, lv, other, array


def test_a_box_propagated_through_time_fills_a_segmentation_sequence(
        browsed, cine, random_checkpoint, tmp_path) -> None:
    scene, logic, browser, proxy, segmentation, lv, other, cine_array = browsed
    plain = scene.AddNewNodeByClass("vtkMRMLScalarVolumeNode", "not a sequence")
    assert time_source(scene, plain) is None
    source = time_source(scene, proxy)
    assert source is not None and source.browser is browser and source.num_frames == FRAMES
    assert source.frame_shown == KEY
    frames = frames_array(source)
    np.testing.assert_array_equal(frames, cine_array)  # the frames the server gets
    assert frame_range(FRAMES, KEY) == (0, FRAMES - 1)
    with pytest.raises(ValueError, match="outside the range"):
        frame_range(FRAMES, KEY, 2, 2)

    # propagation through time, as the worker runs it (the engine of the local server)
    from medsam_server.engine import Engine, Prompt, Session

    session = Session(Engine.from_checkpoint(random_checkpoint, "cpu", precision="fp32"),
                      frames)
    session.add_prompt(1, "k", source.frame_shown, Prompt(box=BOX))
    session.propagate(1, "k", direction="both")
    masks = session.mask(1)

    sequence = segmentation_sequence(logic, source, segmentation)
    assert browser.GetProxyNode(sequence) is segmentation and browser.GetSaveChanges(sequence)
    assert segmentation_sequence(logic, source, segmentation) is sequence  # made once
    before = write_frames(logic, source, sequence, segment_template(segmentation), lv,
                          dict(enumerate(masks)))
    assert sequence.GetNumberOfDataNodes() == FRAMES
    assert [sequence.GetNthIndexValue(n) for n in range(FRAMES)] == source.index_values()

    # the items equal the CLI's frames (same checkpoint, box, key frame and directions)
    out = tmp_path / "cli.nrrd"
    rc, _, err = cli("segment", cine, "--time", "--frame", KEY, "--box", *map(int, BOX),
                     "--checkpoint", random_checkpoint, "--precision", "fp32", "--device",
                     "cpu", "--quiet", "-o", out)
    assert rc == 0, err
    expected = sitk.GetArrayFromImage(sitk.ReadImage(str(out))) != 0
    assert expected.any() and expected.shape == masks.shape
    np.testing.assert_array_equal(sequence_masks(source, sequence, lv), expected)
    assert frames_with(source, sequence, lv) == [int(n) for n in
                                                 np.flatnonzero(expected.any(axis=(1, 2)))]
    assert not sequence_masks(source, sequence, other).any()  # other segments untouched

    # the proxy shows the frame the browser is on; scrubbing shows each frame's result
    for n in (0, FRAMES - 1):
        browser.SetSelectedItemNumber(n)
        logic.UpdateProxyNodesFromSequences(browser)
        ref = slicer.vtkSlicerSegmentationsModuleLogic.CreateOrientedImageDataFromVolumeNode(proxy)
        np.testing.assert_array_equal(segment_array(segmentation, lv, ref)[0], expected[n])

    # the whole propagation is taken back in one step: the segment is empty on every frame,
    # the frame shown included
    restore_frames(logic, source, sequence, before)
    assert frames_with(source, sequence, lv) == []
    ref = slicer.vtkSlicerSegmentationsModuleLogic.CreateOrientedImageDataFromVolumeNode(proxy)
    assert not segment_array(segmentation, lv, ref).any()


def test_a_second_write_keeps_other_segments_and_can_be_restored(browsed) -> None:
    scene, logic, browser, proxy, segmentation, lv, other, _ = browsed
    source = time_source(scene, proxy)
    sequence = segmentation_sequence(logic, source, segmentation)
    rows, cols = frames_array(source).shape[1:3]
    a = np.zeros((rows, cols), bool)
    a[10:20, 30:50] = True
    b = np.zeros((rows, cols), bool)
    b[100:120, 200:210] = True
    template = segment_template(segmentation)  # taken when the box is drawn
    write_frames(logic, source, sequence, template, other, {0: a, 1: a, 2: a})
    before = write_frames(logic, source, sequence, template, lv, {0: b, 1: b})
    np.testing.assert_array_equal(sequence_masks(source, sequence, other)[[0, 2]], [a, a])
    np.testing.assert_array_equal(sequence_masks(source, sequence, lv)[[0, 1]], [b, b])
    assert frames_with(source, sequence, lv) == [0, 1]
    with pytest.raises(ValueError, match="not one of the 3 frames"):
        write_frames(logic, source, sequence, template, lv, {FRAMES: b})
    restore_frames(logic, source, sequence, before)
    assert frames_with(source, sequence, lv) == []  # frames 0 and 1 as they were
    np.testing.assert_array_equal(sequence_masks(source, sequence, other)[0], a)
    assert sequence.GetNumberOfDataNodes() == 3
