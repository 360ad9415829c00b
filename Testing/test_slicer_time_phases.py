"""Propagate through time with 3D frames, the effect's logic end to end: slicer-core + a
real local worker. A 4D CT (3 phases of 3 slices of the real abdomen CT, phase p moved by a
known shift along i) loaded as a volume sequence in a browser, its proxy the editor's source;
a box dragged in a real axial view on the key phase (the phase shown), propagation in 3D
then along t streaming into the per-phase preview, each phase equal to the server's 3D + time
result, Apply into each phase's item (another segment kept), Undo, and Cancel."""

from __future__ import annotations

import sys
import time

import numpy as np
import pytest
import SimpleITK as sitk
from conftest import shared

slicer_harness = pytest.importorskip("slicer_harness")
slicer = pytest.importorskip("slicer")

from MedSAMSegmentLib.backend import LocalBackend  # noqa: E402
from MedSAMSegmentLib.editor import LogicEditorContext  # noqa: E402
from MedSAMSegmentLib.labelmaps import segment_array  # noqa: E402
from MedSAMSegmentLib.panel_state import PanelState  # noqa: E402
from MedSAMSegmentLib.panel_view import panel_view, time_view  # noqa: E402
from MedSAMSegmentLib.tasks import TaskRunner  # noqa: E402
from MedSAMSegmentLib.time_controller import TimeController  # noqa: E402
from MedSAMSegmentLib.time_sequence import (  # noqa: E402
    segment_template,
    segmentation_sequence,
    sequence_masks,
    write_frames,
)
from MedSAMSegmentLib.views import slice_frame  # noqa: E402

SLICES = slice(13, 16)  # three slices through the liver
KEY_SLICE, BOX = 1, (45.0, 27.0, 104.0, 85.0)  # conftest's liver box, on the crop's slice 1
SHIFTS = (-3, 0, 3)  # phase p is the CT moved by SHIFTS[p] voxels along i
KEY = 1
MM = 3.0


class Harness:
    def __init__(self, folder, checkpoint) -> None:
        ct = sitk.GetArrayFromImage(sitk.ReadImage(str(shared(
            "totalseg_ct_abdomen_3mm/example_ct_sm.nii.gz"))))[SLICES]
        self.phases = np.stack([np.roll(ct, s, axis=2) for s in SHIFTS]).astype(np.int16)
        self.app = app = slicer_harness.make_scene()
        self.logic = slicer.vtkSlicerSequencesLogic()
        self.logic.SetMRMLScene(app.scene)
        self.logic.SetMRMLApplicationLogic(app.app_logic)
        sequence = app.scene.AddNewNodeByClass("vtkMRMLSequenceNode", "4D CT")
        for p, voxels in enumerate(self.phases):
            node = app.volume_from_array(voxels, np.diag([MM, MM, MM, 1.0]), f"phase {p}")
            sequence.SetDataNodeAtValue(node, str(p))
            app.scene.RemoveNode(node)
        self.browser = app.scene.AddNewNodeByClass("vtkMRMLSequenceBrowserNode", "4D browser")
        self.browser.SetAndObserveMasterSequenceNodeID(sequence.GetID())
        self.browser.SetSelectedItemNumber(KEY)
        self.logic.UpdateProxyNodesFromSequences(self.browser)
        self.proxy = self.browser.GetProxyNode(sequence)
        self.seg, self.node, editor = app.editor(self.proxy)
        self.liver = app.add_segment(self.seg, "liver")
        self.other = app.add_segment(self.seg, "other", (0.2, 0.9, 0.2))
        self.node.SetSelectedSegmentID(self.liver)
        self.red, sl = app.slice_view("Red", "Axial", self.proxy)
        sl.SetSliceOffset(KEY_SLICE * MM)  # the view shows slice 1 of the phase shown
        self.ref = slicer.vtkSlicerSegmentationsModuleLogic \
            .CreateOrientedImageDataFromVolumeNode(self.proxy)
        self.runner = TaskRunner()
        self.backend = LocalBackend(sys.executable, checkpoint, log_path=folder / "worker.log",
                                    device="cpu")
        self.messages: list[tuple[str, str]] = []
        self.ctl = TimeController(LogicEditorContext(editor), self.runner,
                                  lambda: self.backend, self.logic,
                                  on_message=lambda text, level: self.messages.append(
                                      (level, text)))

    def wait(self, timeout: float = 300.0, until=None) -> None:
        t0 = time.monotonic()
        while time.monotonic() - t0 < timeout:
            self.ctl.pump()
            if until() if until is not None else not self.runner.busy:
                time.sleep(0.3)  # past the redraw throttle: the last results are drawn
                self.ctl.pump()
                return
            time.sleep(0.02)
        raise AssertionError(f"worker still busy after {timeout} s; messages {self.messages}")

    def drag(self) -> tuple:
        frame = slice_frame(self.red, self.ref)
        assert (frame.axis, frame.index) == ("k", KEY_SLICE)
        inv = np.linalg.inv(frame.xy_to_array)
        return (tuple((inv @ [BOX[0], BOX[1], KEY_SLICE, 1])[:2]),
                tuple((inv @ [BOX[2], BOX[3], KEY_SLICE, 1])[:2]))

    def previews(self) -> np.ndarray:
        """Each phase's preview, as the browser shows it when scrubbed there."""
        out = []
        for p in range(len(SHIFTS)):
            self.browser.SetSelectedItemNumber(p)
            out.append(segment_array(self.ctl._phases.preview.node, self.liver, self.ref))
        self.browser.SetSelectedItemNumber(KEY)
        return np.stack(out)

    def server_masks(self) -> np.ndarray:
        server = self.ctl._phases.server
        obj = self.ctl._phases.objects[self.liver]
        return server.backend().client().object_mask(server.handle, obj.object_id) != 0


@pytest.fixture(scope="module")
def h(random_checkpoint, tmp_path_factory):
    harness = Harness(tmp_path_factory.mktemp("time_phases"), random_checkpoint)
    yield harness
    harness.ctl.close()
    harness.wait(60)
    harness.backend.close()
    harness.runner.shutdown()


def test_1_3d_frames_take_prompts_through_time(h) -> None:
    assert h.proxy.GetImageData().GetDimensions() == (122, 101, 3)  # the premise: 3D frames
    assert h.ctl.offered() and h.ctl.routes_prompts()
    t = h.ctl.panel_state()
    assert (t.note, t.frames, t.frame_shown, t.prompted) == ("", 3, KEY, [])
    v = time_view(panel_view(PanelState()), t)
    assert v.time_visible and not v.enabled["propagate_time"]
    assert not h.ctl.propagate() and "Draw a box on phase 1" in h.messages[-1][1]


def test_2_box_propagate_gives_the_servers_phases_then_apply_and_undo(h) -> None:
    # "other" painted on phase 0's item beforehand: Apply must keep it
    sequence = segmentation_sequence(h.logic, h.ctl.source(), h.seg)
    painted = np.zeros(h.phases.shape[1:], bool)
    painted[0, 5:9, 5:9] = True
    write_frames(h.logic, h.ctl.source(), sequence, segment_template(h.seg), h.other,
                 {0: painted})
    assert h.ctl.prompt_box(h.red, *h.drag())
    h.wait()
    assert h.ctl.object_of(h.liver).prompted and h.ctl.panel_state().prompted == [KEY]
    assert h.previews()[KEY, KEY_SLICE].any() and not h.previews()[KEY, 0].any()
    assert h.ctl.propagate()
    assert h.ctl.propagating
    h.wait()
    assert not h.ctl.propagating and "Propagated" in h.messages[-1][1], h.messages
    server = h.server_masks()
    assert server.shape == h.phases.shape
    # the premise: every phase holds the liver on several slices, moved with the CT
    assert all(server[p, z].any() for p in range(3) for z in range(3))
    assert not np.array_equal(server[0], server[2])
    previews = h.previews()
    np.testing.assert_array_equal(previews, server)
    assert h.ctl.panel_state().pending == 3
    assert h.ctl.apply() == 3
    written = sequence_masks(h.ctl.source(), sequence, h.liver)
    np.testing.assert_array_equal(written, server)
    np.testing.assert_array_equal(sequence_masks(h.ctl.source(), sequence, h.other)[0], painted)
    assert not h.previews().any()  # applied: the preview empties
    assert h.ctl.panel_state().can_undo_apply and h.ctl.undo_apply()
    assert not sequence_masks(h.ctl.source(), sequence, h.liver).any()
    np.testing.assert_array_equal(sequence_masks(h.ctl.source(), sequence, h.other)[0], painted)


def test_3_cancel_stops_the_propagation(h) -> None:
    h.node.SetSelectedSegmentID(h.other)
    assert h.ctl.prompt_box(h.red, *h.drag())
    h.wait()
    assert h.ctl.propagate()
    h.ctl.cancel()
    h.wait()
    assert not h.ctl.propagating and "cancelled" in h.messages[-1][1], h.messages
    assert h.ctl.propagate()  # it can run again, to its end
    h.wait()
    assert "Propagated" in h.messages[-1][1]


def test_write_frames_takes_3d_masks_of_the_grid_only(h) -> None:
    source = h.ctl.source()
    sequence = segmentation_sequence(h.logic, source, h.seg)
    with pytest.raises(ValueError, match="the frames are"):
        write_frames(h.logic, source, sequence, segment_template(h.seg), h.liver,
                     {2: np.ones((2, 101, 122), bool)})


def test_phases_off_the_grid_of_the_phase_shown_are_refused() -> None:
    from MedSAMSegmentLib.time_sequence import phases_array, time_source

    app = slicer_harness.make_scene()
    logic = slicer.vtkSlicerSequencesLogic()
    logic.SetMRMLScene(app.scene)
    sequence = app.scene.AddNewNodeByClass("vtkMRMLSequenceNode", "moved")
    for p, shift in enumerate((0.0, 5.0)):  # phase 1 lies 5 mm away
        ijk_to_ras = np.eye(4)
        ijk_to_ras[0, 3] = shift
        node = app.volume_from_array(np.full((3, 8, 8), p), ijk_to_ras, f"phase {p}")
        sequence.SetDataNodeAtValue(node, str(p))
        app.scene.RemoveNode(node)
    browser = app.scene.AddNewNodeByClass("vtkMRMLSequenceBrowserNode")
    browser.SetAndObserveMasterSequenceNodeID(sequence.GetID())
    logic.UpdateProxyNodesFromSequences(browser)
    source = time_source(app.scene, browser.GetProxyNode(sequence))
    assert source is not None and source.num_frames == 2  # the premise: a 4D sequence
    with pytest.raises(ValueError, match="phase 1 of moved is not on the grid"):
        phases_array(source)
    sequence.GetNthDataNode(1).SetOrigin(0.0, 0.0, 0.0)  # on the grid: both phases read
    np.testing.assert_array_equal(phases_array(source)[:, 0, 0, 0], [0, 1])
