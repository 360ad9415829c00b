"""The effect's logic end to end: slicer-core scene + a real local worker on loopback.

Everything the MedSAM2 effect does except its Qt adaptor: the sample CT loaded as
Slicer loads it, the Segment Editor's aligned source image uploaded, a box drawn in a
real axial slice view -> preview, propagation with progress, cancel mid-way, a
correction, a second segment, Apply into real segments with one Undo step, then the
worker killed and the session replayed with equal results. Masks are compared voxel
for voxel with the engine run in process on the same input (random-weight checkpoint).
"""

from __future__ import annotations

import os
import signal
import sys
import time

import numpy as np
import pytest
from conftest import shared

slicer_harness = pytest.importorskip("slicer_harness")
slicer = pytest.importorskip("slicer")

from MedSAMSegmentLib.annotation_log import AnnotationLog, read_log  # noqa: E402
from MedSAMSegmentLib.backend import LocalBackend  # noqa: E402
from MedSAMSegmentLib.controller import Controller  # noqa: E402
from MedSAMSegmentLib.editor import LogicEditorContext  # noqa: E402
from MedSAMSegmentLib.labelmaps import segment_array  # noqa: E402
from MedSAMSegmentLib.panel_state import panel_state  # noqa: E402
from MedSAMSegmentLib.tasks import TaskRunner  # noqa: E402
from MedSAMSegmentLib.views import jump_views, slice_frame  # noqa: E402

CT = "totalseg_ct_abdomen_3mm/example_ct_sm.nii.gz"
LIVER = (45, 27, 104, 85)  # (x0, y0, x1, y1) on slice 14, from the reference mask
LIVER_FIX = (50, 30, 100, 80)
SPLEEN = (11, 23, 27, 54)


class Harness:
    def __init__(self, tmp_path, checkpoint):
        self.app = slicer_harness.make_scene()
        self.ct = self.app.load_volume(shared(CT))
        self.seg, self.node, self.logic = self.app.editor(self.ct)
        self.liver = self.app.add_segment(self.seg, "liver", (0.8, 0.3, 0.2))
        self.spleen = self.app.add_segment(self.seg, "spleen", (0.3, 0.3, 0.9))
        self.node.SetSelectedSegmentID(self.liver)
        self.red, _ = self.app.slice_view("Red", "Axial", self.ct)
        self.ctx = LogicEditorContext(self.logic)
        self.image = self.ctx.source_image()
        self.runner = TaskRunner()
        self.backend = LocalBackend(sys.executable, checkpoint, log_path=tmp_path / "worker.log",
                                    device="cpu")
        self.messages: list[tuple[str, str]] = []
        self.log = AnnotationLog(tmp_path / "annotation.jsonl")
        self.ctl = Controller(self.ctx, self.runner, lambda: self.backend,
                              on_message=lambda text, level: self.messages.append((level, text)),
                              log_file=self.log)

    def wait(self, timeout: float = 300.0, until=None) -> None:
        """Pump like Slicer's timer does until the worker is idle (or ``until()``)."""
        t0 = time.monotonic()
        while time.monotonic() - t0 < timeout:
            self.ctl.pump()
            if until() if until is not None else not self.runner.busy:
                self.ctl.pump()
                return
            time.sleep(0.02)
        raise AssertionError(f"worker still busy after {timeout} s; messages {self.messages}")

    def show_slice(self, k: int) -> None:
        jump_views([self.red], self.image, "k", k)
        assert slice_frame(self.red, self.image).index == k

    def drag(self, k: int, box: tuple[int, int, int, int]) -> tuple:
        """The view pixels whose drag covers ``box`` on slice k (as a user would draw it)."""
        self.show_slice(k)
        inv = np.linalg.inv(slice_frame(self.red, self.image).xy_to_array)
        p0 = (inv @ [box[0], box[1], k, 1])[:2]
        p1 = (inv @ [box[2], box[3], k, 1])[:2]
        return tuple(p0), tuple(p1)

    def last(self, level: str | None = None) -> str:
        msgs = [t for lv, t in self.messages if level is None or lv == level]
        return msgs[-1] if msgs else ""


@pytest.fixture(scope="module")
def h(random_checkpoint, tmp_path_factory):
    harness = Harness(tmp_path_factory.mktemp("integration"), random_checkpoint)
    yield harness
    harness.ctl.close()
    harness.backend.close()
    harness.runner.shutdown()


@pytest.fixture(scope="module")
def ref(engine, h):
    """The engine in process, fed the same voxels and window the effect sends."""
    from medsam_server.engine.preprocess import window_to_uint8
    from medsam_server.engine.session import Session

    window = h.ct.GetDisplayNode().GetLevel(), h.ct.GetDisplayNode().GetWindow()
    array = slicer.util.arrayFromVolume(h.ct)
    return Session(engine, window_to_uint8(array, "ct", window))


def test_1_box_shows_that_slice_in_the_preview_equal_to_the_engine(h, ref):
    from medsam_server.engine.prompts import Prompt

    p0, p1 = h.drag(14, LIVER)
    assert h.ctl.prompt_box(h.red, p0, p1)
    h.wait()
    obj = h.ctl.state.get(h.liver)
    assert obj.prompted == {14: "box"} and obj.pending == {14}
    expected = ref.add_prompt(1, "k", 14, Prompt(box=LIVER)).mask
    preview = segment_array(h.ctl.preview.node, h.liver, h.image)
    assert np.array_equal(preview[14], expected) and preview.sum() == expected.sum()
    assert segment_array(h.seg, h.liver, h.image).sum() == 0  # the segment is untouched
    assert "predicted IoU" in h.last("info")
    assert h.backend.worker.is_running()


def test_2_cancel_stops_within_a_slice_and_keeps_what_was_done(h):
    assert h.ctl.propagate(first=4, last=24)
    h.wait(until=lambda: h.ctl.state.get(h.liver).pending != {14})
    at_cancel = len(h.ctl.state.get(h.liver).pending)
    h.ctl.cancel()
    h.wait(timeout=60)
    obj = h.ctl.state.get(h.liver)
    assert "cancelled" in h.last("info")
    # the server stops between slices: the slice being computed, and at most one more that
    # finished before the cancel reached it (the client polls every 0.5 s), still arrive
    assert at_cancel <= len(obj.pending) <= at_cancel + 2
    assert not h.ctl.propagating and h.ctl.progress is None


def test_3_propagate_with_progress_equals_the_engine(h, ref):
    progress = []
    h.ctl.on_change = lambda: progress.append(h.ctl.progress)
    assert h.ctl.propagate(first=4, last=24)
    h.wait()
    h.ctl.on_change = lambda: None
    ref.propagate(1, first=4, last=24)
    obj = h.ctl.state.get(h.liver)
    assert obj.pending == set(range(4, 25))
    assert np.array_equal(obj.mask[4:25], ref.mask(1)[4:25])
    assert np.array_equal(segment_array(h.ctl.preview.node, h.liver, h.image)[4:25],
                          ref.mask(1)[4:25])
    ticks = [p for p in progress if p is not None]
    assert ticks and ticks[-1][1] == 21 and ticks[-1][0] == 21
    assert [p[0] for p in ticks] == sorted(p[0] for p in ticks)
    assert "Propagated 21 slice(s)" in h.last("info")
    queue = h.ctl.review_queue()
    assert queue and all(a.iou <= b.iou for a, b in zip(queue, queue[1:], strict=False))
    state = panel_state(h.ctl, "local worker")
    assert state.segment == "liver" and state.pending == 21 and state.review_slices


def test_4_a_correction_re_propagates_only_from_there(h, ref):
    from medsam_server.engine.prompts import Prompt

    before = h.ctl.state.get(h.liver).mask.copy()
    p0, p1 = h.drag(18, LIVER_FIX)
    h.ctl.prompt_box(h.red, p0, p1)
    h.wait()
    ref.add_prompt(1, "k", 18, Prompt(box=LIVER_FIX))
    assert h.ctl.propagate(first=4, last=24)
    h.wait()
    report = ref.propagate(1, first=4, last=24)
    obj = h.ctl.state.get(h.liver)
    assert np.array_equal(obj.mask, ref.mask(1))
    untouched = sorted(set(range(4, 25)) - set(report.slices))
    assert untouched, "the correction converged: some slices were not recomputed"
    assert np.array_equal(obj.mask[untouched], before[untouched])


def test_5_a_second_segment_is_its_own_object(h, ref):
    from medsam_server.engine.prompts import Prompt

    h.node.SetSelectedSegmentID(h.spleen)
    p0, p1 = h.drag(14, SPLEEN)
    h.ctl.prompt_box(h.red, p0, p1)
    h.wait()
    assert h.ctl.propagate(first=12, last=16)
    h.wait()
    ref.add_prompt(2, "k", 14, Prompt(box=SPLEEN))
    ref.propagate(2, first=12, last=16)
    spleen = h.ctl.state.get(h.spleen)
    assert spleen.object_id == 2
    assert np.array_equal(spleen.mask, ref.mask(2))
    assert sorted(h.ctl.preview.segment_ids()) == sorted([h.liver, h.spleen])
    assert h.ctl.state.get(h.liver).prompted == {14: "box", 18: "box"}  # kept


def test_6_apply_all_writes_both_segments_as_one_undo_step(h):
    liver, spleen = h.ctl.state.get(h.liver), h.ctl.state.get(h.spleen)
    # the editor's default "overwrite other segments": spleen, applied second, takes its
    # voxels from the liver (random weights make the two masks overlap a lot)
    assert h.node.GetOverwriteMode() == h.node.OverwriteAllSegments
    expected = {h.liver: liver.mask & ~spleen.mask, h.spleen: spleen.mask.copy()}
    assert (liver.mask & spleen.mask).any()
    written = h.ctl.apply(replace=True, all_segments=True)
    assert written == 21 + 5
    for seg_id, mask in expected.items():
        assert np.array_equal(segment_array(h.seg, seg_id, h.image), mask)
        assert segment_array(h.ctl.preview.node, seg_id, h.image).sum() == 0  # preview emptied
    assert not h.ctl.state.has_pending()
    h.logic.Undo()
    assert segment_array(h.seg, h.liver, h.image).sum() == 0
    assert segment_array(h.seg, h.spleen, h.image).sum() == 0
    h.logic.Redo()
    assert np.array_equal(segment_array(h.seg, h.liver, h.image), expected[h.liver])
    assert np.array_equal(segment_array(h.seg, h.spleen, h.image), expected[h.spleen])


def tags_of(segmentation, segment_id: str) -> dict[str, str]:
    import vtk

    segment = segmentation.GetSegmentation().GetSegment(segment_id)
    out = {}
    for key in (PROVENANCE_KEYS):
        value = vtk.reference("")
        if segment.GetTag(key, value):
            out[key] = str(value)
    return out


PROVENANCE_KEYS = ("DICOM.SegmentAlgorithmType", "DICOM.SegmentAlgorithmName",
                   "MedSAM2.Checkpoint", "MedSAM2.CheckpointSha256", "MedSAM2.Precision",
                   "MedSAM2.ServerVersion", "MedSAM2.Prompts")


def test_6c_applied_segments_carry_ai_provenance_through_save_and_reload(h, tmp_path):
    info = h.ctl.session.server_info
    for seg_id in (h.liver, h.spleen):
        tags = tags_of(h.seg, seg_id)
        assert tags["DICOM.SegmentAlgorithmType"] == "SEMIAUTOMATIC"
        assert tags["DICOM.SegmentAlgorithmName"] == "MedSAM2"
        assert tags["MedSAM2.Checkpoint"] == info.model and info.model
        assert tags["MedSAM2.CheckpointSha256"] == info.checkpoint_sha256
        assert len(info.checkpoint_sha256) == 64
        assert tags["MedSAM2.Precision"] in ("fp32", "bf16")
        assert tags["MedSAM2.ServerVersion"] == info.version
        assert tags["MedSAM2.Prompts"] == str(h.ctl.state.get(seg_id).prompts)
    assert tags_of(h.seg, h.liver)["MedSAM2.Prompts"] == "2"  # two boxes (slices 14, 18)
    untouched = h.app.add_segment(h.seg, "kidney", (0.2, 0.8, 0.2))
    assert tags_of(h.seg, untouched) == {}
    # a hand edit (as Paint does, through the editor logic) keeps the tags
    before = tags_of(h.seg, h.liver)
    stroke = np.zeros(h.image.GetDimensions()[::-1], bool)
    stroke[14, 5:8, 5:8] = True
    from MedSAMSegmentLib.labelmaps import to_oriented_image

    h.logic.ModifySegmentByLabelmap(h.seg, h.liver, to_oriented_image(stroke, h.image),
                                    h.logic.ModificationModeAdd, True, False)
    assert tags_of(h.seg, h.liver) == before
    # kept through a .seg.nrrd save and reload
    path = tmp_path / "provenance.seg.nrrd"
    storage = h.app.scene.AddNewNodeByClass("vtkMRMLSegmentationStorageNode")
    storage.SetFileName(str(path))
    assert storage.WriteData(h.seg)
    loaded = h.app.scene.AddNewNodeByClass("vtkMRMLSegmentationNode")
    assert storage.ReadData(loaded)
    ids = {loaded.GetSegmentation().GetNthSegment(n).GetName():
           loaded.GetSegmentation().GetNthSegmentID(n)
           for n in range(loaded.GetSegmentation().GetNumberOfSegments())}
    assert tags_of(loaded, ids["liver"]) == before
    assert tags_of(loaded, ids["kidney"]) == {}
    h.seg.GetSegmentation().RemoveSegment(untouched)


def test_7_a_killed_worker_is_restarted_and_the_session_replayed(h, ref):
    from medsam_server.engine.prompts import Prompt

    h.node.SetSelectedSegmentID(h.liver)
    pid = h.backend.worker.pid
    os.kill(pid, signal.SIGKILL)
    deadline = time.monotonic() + 10
    while h.backend.worker.is_running() and time.monotonic() < deadline:
        time.sleep(0.05)
    h.show_slice(10)
    inv = np.linalg.inv(slice_frame(h.red, h.image).xy_to_array)
    xy = tuple((inv @ [70, 50, 10, 1])[:2])
    assert h.ctl.prompt_point(h.red, xy, positive=True)
    h.wait(timeout=600)
    assert h.backend.worker.pid != pid
    warnings = [t for lv, t in h.messages if lv == "warning"]
    assert any("Replaying 3 prompt(s) and 3 propagation(s) of 2 segment(s)" in t
               for t in warnings), warnings
    assert any(t == "Session restored; the server's results equal yours." for _, t in h.messages)
    # and the new prompt ran on the restored session exactly as on the engine
    ref.add_prompt(1, "k", 10, Prompt(points=((70.0, 50.0),), labels=(1,)))
    assert np.array_equal(h.ctl.state.get(h.liver).mask[10], ref.mask(1)[10])


def test_8_the_annotation_log_has_the_whole_story(h):
    events = [(r["event"], r["segment"]) for r in read_log(h.log.path)]
    assert events[0] == ("box", "liver")
    assert ("propagate", "liver") in events and ("apply", "spleen") in events
    assert ("replay", "liver") in events and events[-1] == ("points", "liver")
    apply = next(r for r in read_log(h.log.path) if r["event"] == "apply")
    assert apply["seconds_since_first_prompt"] > 0 and apply["mode"] == "replace"
    cancelled = [r for r in read_log(h.log.path) if r["event"] == "propagate"]
    assert cancelled[0]["state"] == "cancelled" and cancelled[1]["state"] == "done"


def test_8b_a_propagation_cancelled_while_queued_keeps_its_prompts_pending(h):
    h.node.SetSelectedSegmentID(h.liver)
    p0, p1 = h.drag(12, LIVER)
    assert h.ctl.prompt_box(h.red, p0, p1)
    assert h.ctl.propagate(first=11, last=13)  # queued behind the prompt
    h.ctl.cancel()
    h.wait()
    obj = h.ctl.state.get(h.liver)
    assert "cancelled" in h.last("info") and not h.ctl.propagating
    assert 12 in obj.unpropagated  # the next Propagate still starts from it
    last = read_log(h.log.path)[-1]
    assert (last["event"], last["state"]) == ("propagate", "cancelled")


def test_8c_discard_of_a_never_applied_result_adds_no_tags(h):
    lesion = h.app.add_segment(h.seg, "lesion", (0.9, 0.9, 0.2))
    h.node.SetSelectedSegmentID(lesion)
    p0, p1 = h.drag(14, SPLEEN)
    assert h.ctl.prompt_box(h.red, p0, p1)
    h.wait()
    assert h.ctl.state.get(lesion).pending  # the premise: a result that was never applied
    h.ctl.discard()
    h.wait()
    assert h.ctl.state.get(lesion) is None and tags_of(h.seg, lesion) == {}
    h.seg.GetSegmentation().RemoveSegment(lesion)
    h.node.SetSelectedSegmentID(h.liver)


def test_9_bad_input_is_a_message_and_changes_nothing(h):
    import vtk

    before = {o.segment_id: o.mask.copy() for o in h.ctl.state.objects()}
    n = len(h.messages)
    # a tiny box
    h.show_slice(14)
    assert not h.ctl.prompt_box(h.red, (100, 100), (100.2, 140))
    assert "too small" in h.last("warning")
    # an oblique view
    obl, _ = h.app.slice_view("Obl", "Axial", h.ct)
    rot = vtk.vtkTransform()
    rot.RotateY(30)
    obl.GetSliceToRAS().DeepCopy(rot.GetMatrix())
    obl.UpdateMatrices()
    assert not h.ctl.prompt_box(obl, (50, 50), (150, 150))
    assert "Rotate to volume plane" in h.last("warning")
    # the liver is segmented along k: a coronal box for it is refused
    green, _ = h.app.slice_view("Green", "Coronal", h.ct)
    assert not h.ctl.prompt_box(green, (100, 100), (200, 160))
    assert "Discard" in h.last("warning")
    # no segment selected
    h.node.SetSelectedSegmentID("")
    assert not h.ctl.propagate()
    assert "select a segment" in h.last("warning")
    h.node.SetSelectedSegmentID(h.liver)
    # the source volume changes while results are pending: refused until Apply/Discard
    assert h.ctl.state.has_pending()
    slicer.util.arrayFromVolume(h.ct)[0, 0, 0] += 1
    slicer.util.arrayFromVolumeModified(h.ct)
    assert not h.ctl.prompt_box(h.red, *h.drag(14, LIVER))
    assert "changed" in h.last("warning") and "Discard them first" in h.last("warning")
    # and Apply refuses to write results made for the volume as it was
    assert h.ctl.apply() == 0
    assert "cannot be applied here" in h.last("error")
    assert len(h.messages) == n + 6
    for seg_id, mask in before.items():
        assert np.array_equal(h.ctl.state.get(seg_id).mask, mask)
    assert not h.runner.busy


def test_9b_a_closed_scene_drops_results_that_can_no_longer_be_applied(h, tmp_path):
    """A second, short-lived editor on its own scene: closing the scene discards its results."""
    app = slicer_harness.make_scene()
    ct = app.load_volume(shared(CT), "ct2")
    seg, node, logic = app.editor(ct)
    node.SetSelectedSegmentID(app.add_segment(seg, "x"))
    red, _ = app.slice_view("Red2", "Axial", ct)
    messages = []
    ctl = Controller(LogicEditorContext(logic), h.runner, lambda: h.backend,
                     on_message=lambda text, level: messages.append(text))
    inv = np.linalg.inv(slice_frame(red, ctl.ctx.source_image()).xy_to_array)
    k = slice_frame(red, ctl.ctx.source_image()).index
    p0, p1 = tuple((inv @ [45, 27, k, 1])[:2]), tuple((inv @ [104, 85, k, 1])[:2])
    assert ctl.prompt_box(red, p0, p1)
    while h.runner.busy:
        ctl.pump()
        time.sleep(0.02)
    ctl.pump()
    assert ctl.state.has_pending() and ctl.preview.node is not None
    app.scene.Clear(0)
    ctl.pump()
    assert ctl.state is None and ctl.volume is None
    assert "were discarded" in messages[-1]
    assert app.scene.GetNodesByClass("vtkMRMLSegmentationNode").GetNumberOfItems() == 0


def test_10_a_new_view_window_or_modality_resends_lazily(h):
    from MedSAMSegmentLib.source_volume import set_display_window

    up = h.ctl.volume.upload
    n = len(h.messages)
    h.ctl.use_view_window()  # the view's window has not changed: nothing to do
    assert h.ctl.volume.upload is up and len(h.messages) == n
    set_display_window(h.ct, -600.0, 1500.0)
    h.ctl.use_view_window()
    h.wait()
    assert h.ctl.volume.upload.window == (-600.0, 1500.0)
    assert h.ctl.session.volume.window == (-600.0, 1500.0)
    assert h.ctl.session.handle is None  # closed now, re-sent and replayed at the next call
    assert "level -600 / width 1500" in h.last("info")
    h.ctl.use_view_window(modality="mr")
    h.wait()
    assert h.ctl.session.volume.modality == "mr" and h.ctl.session.volume.window is None
    assert "MR, normalised" in h.last("info")
    assert h.ctl.state.get(h.liver).mask.any()  # results are kept
