"""Propagate through time, the effect's logic end to end: slicer-core + a real local worker.

The real echo cine (5 frames) loaded as Slicer loads a cine (a volume sequence, a browser,
its proxy volume as the Segment Editor's source), a box dragged in a real slice view on
the frame shown, propagation through time streaming into a preview the browser shows
frame by frame, cancel mid-run, a correction that re-propagates only its frames, a second
segment over a range, Apply into the segmentation's sequence and its Undo. Masks are
compared with the server's and with ``medsam-server segment --time`` (random weights).
"""

from __future__ import annotations

import sys
import time

import numpy as np
import pytest
import SimpleITK as sitk
from conftest import cli, shared

slicer_harness = pytest.importorskip("slicer_harness")
slicer = pytest.importorskip("slicer")

from MedSAMSegmentLib.backend import LocalBackend  # noqa: E402
from MedSAMSegmentLib.editor import LogicEditorContext  # noqa: E402
from MedSAMSegmentLib.labelmaps import segment_array, to_oriented_image  # noqa: E402
from MedSAMSegmentLib.panel_state import PanelState  # noqa: E402
from MedSAMSegmentLib.panel_view import panel_view, time_view  # noqa: E402
from MedSAMSegmentLib.tasks import TaskRunner  # noqa: E402
from MedSAMSegmentLib.time_controller import TimeController, routes_to_time  # noqa: E402
from MedSAMSegmentLib.time_sequence import (  # noqa: E402
    segment_template,
    segmentation_sequence,
    sequence_masks,
    time_source,
    write_frames,
)
from MedSAMSegmentLib.views import slice_frame  # noqa: E402
from test_slicer_time import load_cine  # noqa: E402

FRAMES, KEY = 5, 1
BOX = (225.0, 95.0, 325.0, 225.0)  # SOURCES.md's approximate LV box
FIX = (235.0, 105.0, 315.0, 215.0)  # a correction on frame 3


@pytest.fixture(scope="module")
def cine(tmp_path_factory) -> str:
    img = sitk.ReadImage(str(shared("echo_a4c/echo_a4c_cine.nrrd")))
    path = tmp_path_factory.mktemp("cine5") / "cine.nrrd"
    sitk.WriteImage(img[:, :, :FRAMES], str(path))
    return str(path)


class Harness:
    def __init__(self, folder, checkpoint, cine: str) -> None:
        self.app = slicer_harness.make_scene()
        self.logic, self.browser, self.proxy, self.frames = load_cine(self.app, cine, folder,
                                                                      KEY)
        self.seg, self.node, self.editor = self.app.editor(self.proxy)
        self.lv = self.app.add_segment(self.seg, "LV", (0.9, 0.2, 0.2))
        self.other = self.app.add_segment(self.seg, "other", (0.2, 0.9, 0.2))
        self.node.SetSelectedSegmentID(self.lv)
        self.red, _ = self.app.slice_view("Red", "Axial", self.proxy)
        self.ref = slicer.vtkSlicerSegmentationsModuleLogic \
            .CreateOrientedImageDataFromVolumeNode(self.proxy)
        self.runner = TaskRunner()
        self.backend = LocalBackend(sys.executable, checkpoint, log_path=folder / "worker.log",
                                    device="cpu")
        self.messages: list[tuple[str, str]] = []
        self.ctl = TimeController(LogicEditorContext(self.editor), self.runner,
                                  lambda: self.backend, self.logic,
                                  on_message=lambda text, level: self.messages.append(
                                      (level, text)))

    def wait(self, timeout: float = 300.0, until=None) -> None:
        t0 = time.monotonic()
        while time.monotonic() - t0 < timeout:
            self.ctl.pump()
            if until() if until is not None else not self.runner.busy:
                self.ctl.pump()
                return
            time.sleep(0.02)
        raise AssertionError(f"worker still busy after {timeout} s; messages {self.messages}")

    def drag(self, box: tuple[float, float, float, float]) -> tuple:
        """View pixels whose drag covers ``box`` on the frame (as a user would draw it)."""
        frame = slice_frame(self.red, self.ref)
        assert (frame.axis, frame.index) == ("k", 0)  # the view shows the frame's plane
        inv = np.linalg.inv(frame.xy_to_array)
        return tuple((inv @ [box[0], box[1], 0, 1])[:2]), tuple((inv @ [box[2], box[3], 0, 1])[:2])

    def show(self, n: int) -> None:
        """Scrub the browser to frame n (as its slider does)."""
        self.browser.SetSelectedItemNumber(n)

    def preview(self, segment_id: str) -> np.ndarray:
        """The preview of the frame the browser shows, on the frame's grid."""
        return segment_array(self.ctl.preview.node, segment_id, self.ref)[0]

    def server_mask(self, object_id: int) -> np.ndarray:
        session = self.ctl.session
        return session.backend().client().object_mask(session.handle, object_id) != 0

    def last(self, level: str | None = None) -> str:
        msgs = [t for lv, t in self.messages if level is None or lv == level]
        return msgs[-1] if msgs else ""


@pytest.fixture(scope="module")
def h(random_checkpoint, tmp_path_factory, cine):
    harness = Harness(tmp_path_factory.mktemp("time_controller"), random_checkpoint, cine)
    yield harness
    harness.ctl.close()
    harness.backend.close()
    harness.runner.shutdown()


def test_1_an_ordinary_volume_is_not_offered_time(h) -> None:
    plain = h.app.volume_from_array(np.zeros((2, 8, 8)), np.eye(4), "plain")
    _, _, logic = h.app.editor(plain)
    messages = []
    ctl = TimeController(LogicEditorContext(logic), h.runner, lambda: h.backend, h.logic,
                         on_message=lambda text, level: messages.append(text))
    assert time_source(h.app.scene, plain) is None
    assert not ctl.offered() and not ctl.routes_prompts() and not routes_to_time(
        h.app.scene, plain)
    v = time_view(panel_view(PanelState()), ctl.panel_state())
    assert not v.time_visible and "propagate_time" not in v.enabled
    assert not ctl.propagate() and "sequence browser" in messages[-1]
    # the cine's proxy is offered, and its frames are 2D: prompts go through time
    assert h.ctl.offered() and h.ctl.routes_prompts()
    t = h.ctl.panel_state()
    assert (t.offered, t.note, t.frames, t.frame_shown) == (True, "", FRAMES, KEY)
    v = time_view(panel_view(PanelState()), t)
    assert v.time_visible and v.time_range_max == FRAMES - 1 and v.time_last == FRAMES - 1
    assert not v.enabled["propagate_time"] and not v.enabled["propagate"]


def test_2_a_box_on_the_frame_shown_previews_that_frame(h) -> None:
    p0, p1 = h.drag(BOX)
    assert h.ctl.prompt_box(h.red, p0, p1)
    h.wait()
    obj = h.ctl.state.get(h.lv)
    assert obj.prompted == {KEY: "box"} and obj.pending == {KEY}
    sent = h.ctl.session.history[0]
    assert (sent.axis, sent.index) == ("t", KEY) and np.allclose(sent.box, BOX)
    assert h.ctl.session.handle.time and h.ctl.session.volume.modality == "none"
    np.testing.assert_array_equal(h.ctl.session.volume.array, h.frames)  # one upload
    server = h.server_mask(obj.object_id)
    assert server[KEY].any() and not server[[0, 2, 3, 4]].any()
    np.testing.assert_array_equal(h.preview(h.lv), server[KEY])
    h.show(0)  # a frame with no result: an empty preview, not the key frame's
    assert not h.preview(h.lv).any()
    h.show(KEY)
    assert not segment_array(h.seg, h.lv, h.ref).any()  # the segment is untouched
    assert "Frame 1: predicted IoU" in h.last("info")


def test_3_cancel_stops_within_a_frame(h) -> None:
    assert h.ctl.propagate()
    h.wait(until=lambda: len(h.ctl.last_run) >= 1)
    at_cancel = len(h.ctl.last_run)
    assert at_cancel < FRAMES  # premise: frames were still to come when cancelled
    h.ctl.cancel()
    h.wait(timeout=120)
    assert "cancelled" in h.last("info"), h.messages
    assert len(h.ctl.last_run) < FRAMES and not h.ctl.propagating and h.ctl.progress is None
    assert h.ctl.state.get(h.lv).unpropagated == {KEY}  # the next run redoes it


def test_4_propagation_through_time_equals_the_server_and_the_cli(h, cine, random_checkpoint,
                                                                   tmp_path) -> None:
    progress = []
    h.ctl.on_change = lambda: progress.append(h.ctl.progress)
    assert h.ctl.propagate()
    assert not h.ctl.propagate() and "already running" in h.last("warning")
    h.wait()
    h.ctl.on_change = lambda: None
    assert sorted(h.ctl.last_run) == list(range(FRAMES)) and "Propagated 5 frame(s)" in h.last()
    shown = [p for p in progress if p is not None and p[1]]
    assert {p[1] for p in shown} == {FRAMES} and max(p[0] for p in shown) >= FRAMES - 1, progress
    obj = h.ctl.state.get(h.lv)
    assert obj.pending == set(range(FRAMES)) and not obj.unpropagated
    server = h.server_mask(obj.object_id)
    np.testing.assert_array_equal(obj.mask, server)
    out = tmp_path / "cli.nrrd"
    info = h.ctl.session.server_info  # the CLI computes as the worker does
    rc, _, err = cli("segment", cine, "--time", "--frame", KEY, "--box", *map(int, BOX),
                     "--checkpoint", random_checkpoint, "--precision", info.precision,
                     "--device", "cpu", "--quiet", "-o", out)
    assert rc == 0, err
    expected = sitk.GetArrayFromImage(sitk.ReadImage(str(out))) != 0
    assert expected.shape == server.shape and expected.any()
    np.testing.assert_array_equal(server, expected)
    # scrubbing the browser shows each frame's preview (Slicer's browser does it)
    for n in (3, 0, FRAMES - 1, KEY):
        h.show(n)
        np.testing.assert_array_equal(h.preview(h.lv), expected[n])
    assert h.ctl.panel_state().frame_shown == KEY


def test_5_a_correction_re_propagates_only_its_frames(h) -> None:
    obj = h.ctl.state.get(h.lv)
    before = obj.mask.copy()
    h.show(3)
    p0, p1 = h.drag(FIX)
    assert h.ctl.prompt_box(h.red, p0, p1)
    h.wait()
    assert obj.prompted == {KEY: "box", 3: "box"}
    assert h.ctl.propagate()
    h.wait()
    # from frame 3 forward to the end and back to the frame after the first prompt
    assert 3 in h.ctl.last_run and set(h.ctl.last_run) <= {2, 3, 4}, h.ctl.last_run
    np.testing.assert_array_equal(obj.mask[[0, 1]], before[[0, 1]])
    assert not np.array_equal(obj.mask[3], before[3])  # premise: the correction changed it
    np.testing.assert_array_equal(obj.mask, h.server_mask(obj.object_id))
    h.show(3)
    np.testing.assert_array_equal(h.preview(h.lv), obj.mask[3])


def test_6_a_range_leaves_the_other_frames_untouched_and_a_bad_range_changes_nothing(h) -> None:
    h.node.SetSelectedSegmentID(h.other)
    h.show(KEY)
    p0, p1 = h.drag(BOX)
    assert h.ctl.prompt_box(h.red, p0, p1)
    h.wait()
    other = h.ctl.state.get(h.other)
    for first, last, words in ((2, 4, "outside the range"), (0, FRAMES, "not a range")):
        assert not h.ctl.propagate(first, last) and words in h.last("warning")
        assert not h.ctl.propagating and other.pending == {KEY}
    assert h.ctl.propagate(0, 2)
    h.wait()
    assert sorted(h.ctl.last_run) == [0, 1, 2] and other.pending == {0, 1, 2}
    assert not other.mask[3:].any() and set(other.scores) == {0, 1, 2}
    h.show(4)
    assert not h.preview(h.other).any()
    np.testing.assert_array_equal(h.preview(h.lv), h.ctl.state.get(h.lv).mask[4])  # kept
    # the review lists frames: their panel rows and the browser jump
    queue = h.ctl.review_queue()
    assert {f.frame for f in queue} <= {0, 1, 2}
    t = h.ctl.panel_state()
    assert t.review_frames == [f.frame for f in queue] and t.review[0].startswith("frame ")
    assert h.ctl.jump_to(2) and h.browser.GetSelectedItemNumber() == 2
    assert not h.ctl.jump_to(FRAMES)
    h.ctl.discard()
    assert h.ctl.state.get(h.other) is None
    h.show(1)
    assert not h.preview(h.other).any()
    h.node.SetSelectedSegmentID(h.lv)


def test_7_apply_writes_every_frame_keeping_other_segments_and_undo_restores(h) -> None:
    source = time_source(h.app.scene, h.proxy)
    sequence = segmentation_sequence(h.logic, source, h.seg)
    painted = np.zeros(h.frames.shape[1:], bool)
    painted[10:20, 30:50] = True  # the user's other segment on every frame
    write_frames(h.logic, source, sequence, segment_template(h.seg), h.other,
                 dict.fromkeys(range(FRAMES), painted))
    obj = h.ctl.state.get(h.lv)
    result = obj.mask.copy()
    h.show(KEY)
    h.editor.SaveStateForUndo()  # a Paint stroke on the frame shown, as the editor makes it
    h.editor.ModifySegmentByLabelmap(h.seg, h.other, to_oriented_image(painted[None], h.ref),
                                     h.editor.ModificationModeAdd, True, False)
    assert h.editor.CanUndo()  # premise: Slicer's Undo had something to undo
    assert h.ctl.apply() == FRAMES
    np.testing.assert_array_equal(sequence_masks(source, sequence, h.lv), result)
    np.testing.assert_array_equal(sequence_masks(source, sequence, h.other),
                                  np.stack([painted] * FRAMES))
    assert not obj.pending and not h.preview(h.lv).any()  # the preview emptied
    # Slicer's own Undo cannot take it back: the browser gave the segmentation the written
    # item of the frame shown, and the Segment Editor cleared its undo history for it
    assert not h.editor.CanUndo()
    # the effect's undo takes the whole write back in one step; other segments stay
    assert h.ctl.panel_state().can_undo_apply
    assert h.ctl.undo_apply()
    assert not sequence_masks(source, sequence, h.lv).any()
    np.testing.assert_array_equal(sequence_masks(source, sequence, h.other),
                                  np.stack([painted] * FRAMES))
    assert not h.ctl.undo_apply()


def test_8_undo_of_apply_is_refused_after_an_edit(h) -> None:
    source = time_source(h.app.scene, h.proxy)
    sequence = segmentation_sequence(h.logic, source, h.seg)
    obj = h.ctl.state.get(h.lv)
    obj.pending.update(range(FRAMES))  # the result again in the preview
    assert h.ctl.apply() == FRAMES
    edit = np.zeros(h.frames.shape[1:], bool)
    edit[0:5, 0:5] = True
    write_frames(h.logic, source, sequence, segment_template(h.seg), h.other, {4: edit})
    assert not h.ctl.undo_apply() and "4" in h.last("error")
    np.testing.assert_array_equal(sequence_masks(source, sequence, h.lv), obj.mask)


def test_9_close_takes_the_preview_out_of_the_browser(h) -> None:
    preview_sequence = h.ctl.preview.sequence
    assert preview_sequence is not None and h.browser.IsSynchronizedSequenceNodeID(
        preview_sequence.GetID(), True)
    node = h.ctl.preview.node
    h.ctl.close()
    assert not h.app.scene.IsNodePresent(node) and not h.app.scene.IsNodePresent(
        preview_sequence)
    assert h.ctl.preview is None and h.ctl.state is None


def test_3d_frames_go_through_time_by_phases(h) -> None:
    """3D frames route to time_phases.TimePhases (test_slicer_time_phases.py runs it)."""
    app = slicer_harness.make_scene()
    logic = slicer.vtkSlicerSequencesLogic()
    logic.SetMRMLScene(app.scene)
    logic.SetMRMLApplicationLogic(app.app_logic)
    sequence = app.scene.AddNewNodeByClass("vtkMRMLSequenceNode", "4D CT")
    for n in range(2):
        phase = app.volume_from_array(np.full((3, 8, 8), n), np.eye(4), f"phase {n}")
        sequence.SetDataNodeAtValue(phase, str(n))
        app.scene.RemoveNode(phase)
    browser = app.scene.AddNewNodeByClass("vtkMRMLSequenceBrowserNode")
    browser.SetAndObserveMasterSequenceNodeID(sequence.GetID())
    logic.UpdateProxyNodesFromSequences(browser)
    proxy = browser.GetProxyNode(sequence)
    seg, node, editor = app.editor(proxy)
    node.SetSelectedSegmentID(app.add_segment(seg, "liver"))
    messages = []
    ctl = TimeController(LogicEditorContext(editor), h.runner, lambda: h.backend, logic,
                         on_message=lambda text, level: messages.append(text))
    assert ctl.offered() and ctl.routes_prompts()  # boxes go through time, by phases
    t = ctl.panel_state()
    assert t.note == "" and t.frames == 2 and t.segment == "liver"
    v = time_view(panel_view(PanelState(segment="liver", prompted=[1], slices=3)), t)
    assert v.time_visible and not v.time_note
    assert not v.enabled["propagate_time"] and not v.enabled["propagate"]
    assert not ctl.propagate() and messages[-1].startswith("Draw a box on phase 0")
    assert ctl.session is None and ctl._phases.server.handle is None  # nothing uploaded


def test_frames_review_flags_a_vanishing_mask_and_an_area_jump_first() -> None:
    from MedSAMSegmentLib.annotation import AnnotationState
    from MedSAMSegmentLib.time_frames import review_frames

    state = AnnotationState((6, 10, 10))
    obj = state.object_for("lv", "k")
    sizes = {0: 16, 1: 16, 2: 0, 3: 16, 4: 64, 5: 0}  # vanishes at 2, jumps at 4, ends at 5
    ious = {0: 0.9, 1: 0.5, 2: 0.8, 3: 0.7, 4: 0.95, 5: 0.6}
    for f, n in sizes.items():
        mask = np.zeros((10, 10), bool)
        mask.flat[:n] = True
        state.apply_slice(obj, "k", f, mask, ious[f], 1.0)
    flags = review_frames(obj)
    assert [(fl.frame, fl.reason) for fl in flags[:2]] == [(2, "mask vanishes"),
                                                          (4, "area jumps")]
    assert [fl.frame for fl in flags[2:]] == [1, 3, 0]  # then lowest IoU; the end is not flagged
    assert review_frames(obj, limit=1)[0].frame == 2


def test_frames_go_as_uint8_none_or_read_by_their_modality() -> None:
    from MedSAMSegmentLib.time_frames import FramesError, frames_upload

    grey = np.zeros((3, 4, 5), np.uint8)
    up = frames_upload(grey, "echo", "ct", (40.0, 400.0))
    assert (up.modality, up.window, up.time, up.array is grey) == ("none", None, True, True)
    rgb = np.zeros((3, 4, 5, 3), np.uint8)
    assert frames_upload(rgb, "echo", "auto", None).modality == "none"
    ct = np.full((3, 4, 5), -1000, np.int16)
    assert (frames_upload(ct, "cine", "auto", (40.0, 400.0)).modality,
            frames_upload(ct, "cine", "auto", (40.0, 400.0)).window) == ("ct", (40.0, 400.0))
    mr = np.full((3, 4, 5), 300, np.int16)
    assert (frames_upload(mr, "cine", "auto", (40.0, 400.0)).modality,
            frames_upload(mr, "cine", "auto", (40.0, 400.0)).window) == ("mr", None)
    with pytest.raises(FramesError, match="uint8 RGB"):
        frames_upload(np.zeros((3, 4, 5, 3), np.float32), "x", "auto", None)
