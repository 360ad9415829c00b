"""``medsam-server batch --time``: 2D + time cases of the real echo clip (grey cine NRRD, a
video made from the colour clip) segmented as ``segment --time`` segments them, written as
label sequences, scored per frame against a reference, resumed, run on Ray; bad cases fail
alone with one line, bad options stop the batch up front."""

from __future__ import annotations

import csv
import json
import os
import subprocess
import sys
from pathlib import Path

import numpy as np
import pytest
import SimpleITK as sitk
from conftest import ERROR_PREFIX, cli, shared
from medsam_server.batch.evaluate import frames_metrics, mask_metrics, volume_metrics
from medsam_server.engine import Engine, Prompt, Session
from medsam_server.engine import engine as engine_module
from medsam_server.io.frames import frames_u8, read_frames
from medsam_server.io.sequences import read_label_sequence
from medsam_server.io.volumes import read_volume

BOX = [225, 95, 325, 225]  # SOURCES.md's approximate LV box on the cropped frames
FRAMES = 3
OPTIONS = ["--precision", "fp32", "--device", "cpu", "--threads", "1", "--quiet"]


@pytest.fixture(scope="module")
def data(tmp_path_factory) -> Path:
    """Cases: the grey cine (with a reference), a video of the colour clip, and three bad
    ones: a key frame past the end, a prompt on axis j, a 4D image."""
    av = pytest.importorskip("av")
    pydicom = pytest.importorskip("pydicom")
    d = tmp_path_factory.mktemp("time-batch")
    cine = sitk.ReadImage(str(shared("echo_a4c/echo_a4c_cine.nrrd")))[:, :, :FRAMES]
    sitk.WriteImage(cine, str(d / "cine.nrrd"))
    ref = np.zeros(sitk.GetArrayFromImage(cine).shape, np.uint8)
    ref[:, 120:200, 240:310] = 1  # a rough LV on every frame; frame 2 shifted
    ref[2] = np.roll(ref[2], 6, axis=1)
    ref_img = sitk.GetImageFromArray(ref)
    ref_img.CopyInformation(cine)
    sitk.WriteImage(ref_img, str(d / "cine_ref.nrrd"))
    rgb = pydicom.dcmread(shared("echo_a4c/echo_a4c_us_multiframe.dcm")).pixel_array
    with av.open(str(d / "echo.mp4"), "w") as container:
        stream = container.add_stream("mpeg4", rate=25)
        stream.width, stream.height, stream.pix_fmt = 512, 384, "yuv420p"
        for frame in np.ascontiguousarray(rgb[:FRAMES, 31:415, 84:596]):
            container.mux(stream.encode(av.VideoFrame.from_ndarray(frame, format="rgb24")))
        container.mux(stream.encode())
    sitk.WriteImage(sitk.Image([4, 4, 3, 2], sitk.sitkUInt8), str(d / "four.nii.gz"))
    for name, frame, axis in (("p", 1, "k"), ("late", 7, "k"), ("axis_j", 1, "j")):
        (d / f"{name}.json").write_text(json.dumps({"objects": [
            {"label": 1, "name": "LV", "slice": frame, "axis": axis, "box": BOX}]}))
    (d / "m.csv").write_text("case,image,prompts,reference\n"
                             "cine,cine.nrrd,p.json,cine_ref.nrrd\n"
                             "video,echo.mp4,p.json,\n"
                             "late,cine.nrrd,late.json,\n"
                             "axis,cine.nrrd,axis_j.json,\n"
                             "four,four.nii.gz,p.json,\n")
    return d


@pytest.fixture(scope="module")
def engine(random_checkpoint) -> Engine:
    return Engine.from_checkpoint(random_checkpoint, "cpu", 1, precision="fp32")


def in_process(engine: Engine, path: Path, direction: str) -> np.ndarray:
    """What segment --time computes for one object: frames_u8 of read_frames, box on frame 1."""
    session = Session(engine, frames_u8(read_frames(path), "ct", None))
    session.add_prompt(1, "k", 1, Prompt(box=tuple(map(float, BOX))))
    session.propagate(1, "k", direction=direction)
    return session.mask(1).astype(np.uint8)


def results(out: Path) -> dict[str, dict[str, str]]:
    with open(out / "results.csv", newline="") as f:
        return {r["case"]: r for r in csv.DictReader(f)}


def metrics(out: Path) -> list[tuple[str, int, float, float]]:
    with open(out / "metrics.csv", newline="") as f:
        return [(r["case"], int(r["label"]), float(r["dsc"]), float(r["nsd"]))
                for r in csv.DictReader(f)]


@pytest.fixture(scope="module")
def local_run(data, random_checkpoint, tmp_path_factory) -> Path:
    out = tmp_path_factory.mktemp("time-batch-out") / "out"
    rc, so, se = cli("batch", data / "m.csv", "-o", out, "--checkpoint", random_checkpoint,
                     "--time", "--direction", "forward", "--format", "seq.nrrd", *OPTIONS)
    assert rc == 1, se  # three bad cases failed, the batch went on
    assert "batch: 2 done, 3 failed, 0 skipped" in se
    return out


def test_cases_are_segmented_as_segment_time_does(local_run, data, engine):
    rows = results(local_run)
    assert [rows[c]["status"] for c in ("cine", "video")] == ["ok", "ok"]
    for case, image in (("cine", "cine.nrrd"), ("video", "echo.mp4")):
        expected = in_process(engine, data / image, "forward")
        assert not expected[0].any() and expected[1:].any()  # forward from frame 1, as asked
        written = read_label_sequence(local_run / f"{case}.seq.nrrd")
        np.testing.assert_array_equal(written.array, expected, err_msg=case)
        # labels on the frames' grid: the cine's own, the video's pixels then frames
        grid = read_frames(data / image).grid
        assert written.spacing == pytest.approx(grid.spacing) and written.size == grid.size
    assert int(rows["cine"]["slices_encoded"]) == FRAMES - 1  # frames 1 and 2 only


def test_bad_cases_fail_alone_with_one_line(local_run):
    rows = results(local_run)
    says = {"late": "frame 7 is outside 0..2", "axis": "frame axis is k, not j",
            "four": "4D"}
    for case, needle in says.items():
        assert rows[case]["status"] == "failed", case
        assert needle in rows[case]["message"] and "\n" not in rows[case]["message"], case
        assert not list(local_run.glob(f"{case}.*")), case


def test_metrics_per_frame_and_evaluate_time_agree(local_run, data):
    [(case, label, dsc, nsd)] = metrics(local_run)
    pred = read_label_sequence(local_run / "cine.seq.nrrd")
    ref = read_volume(data / "cine_ref.nrrd")
    assert pred.array[1:].any() and ref.array.any()  # the premise: both have the LV
    expected = volume_metrics("cine", pred, ref, [1], 2.0, frames=True)[0]
    assert (case, label) == ("cine", 1) and (dsc, nsd) == (expected.dsc, expected.nsd)
    three_d = volume_metrics("cine", pred, ref, [1], 2.0)[0]
    assert three_d.dsc == dsc and three_d.nsd != nsd  # NSD is not taken across frames
    rc, so, se = cli("evaluate", local_run / "cine.seq.nrrd", data / "cine_ref.nrrd", "--time",
                     "--csv", local_run.parent / "eval.csv")
    assert rc == 0, se
    with open(local_run.parent / "eval.csv", newline="") as f:
        [row] = list(csv.DictReader(f))
    assert (float(row["dsc"]), float(row["nsd"])) == (dsc, nsd)


def test_resume_scores_the_written_sequences_again(local_run, data, random_checkpoint):
    before = metrics(local_run)
    (local_run / "metrics.csv").unlink()
    rc, so, se = cli("batch", data / "m.csv", "-o", local_run, "--checkpoint",
                     random_checkpoint, "--time", "--direction", "forward", "--format",
                     "seq.nrrd", *OPTIONS)
    assert rc == 1 and "skipped 2 case(s)" in se, se
    assert metrics(local_run) == before  # read back from cine.seq.nrrd, scored the same way
    # the same folder with other settings is refused, naming them
    rc, so, se = cli("batch", data / "m.csv", "-o", local_run, "--checkpoint",
                     random_checkpoint, "--time", "--format", "seq.nrrd", *OPTIONS)
    assert rc == 2 and "direction: 'forward' then, None now" in se, se


@pytest.mark.parametrize("extra, needle", [
    (["--time", "--format", "dicom-seg"], "with --time use seq.nrrd"),
    (["--format", "seq.nrrd"], "it needs --time"),
    (["--time", "--axis", "j"], "frame axis is k, not j"),
])
def test_bad_options_stop_the_batch_up_front(extra, needle, data, random_checkpoint,
                                             monkeypatch, tmp_path):
    def refuse(*args, **kwargs):  # noqa: ANN202
        raise AssertionError("the model was loaded before the bad options were rejected")

    monkeypatch.setattr(engine_module.Engine, "from_checkpoint", refuse)
    out = tmp_path / "out"
    rc, so, se = cli("batch", data / "m.csv", "-o", out, "--checkpoint", random_checkpoint,
                     *extra)
    lines = se.strip().splitlines()
    assert rc == 2 and len(lines) == 1 and lines[0].startswith(ERROR_PREFIX), se
    assert needle in lines[0] and not out.exists()


@pytest.mark.filterwarnings("ignore::DeprecationWarning")  # surface-distance 0.1 on scipy
def test_frames_metrics_pool_each_frames_contours():
    pytest.importorskip("surface_distance")
    ref = np.zeros((3, 20, 20), bool)
    pred = np.zeros_like(ref)
    ref[0, 4:12, 4:12] = pred[0, 4:12, 8:16] = True  # overlapping squares, 4 px apart
    ref[1, 2:6, 2:6] = True  # a frame the prediction missed
    # frame 2: empty in both, left out
    one = mask_metrics(ref[0], pred[0], (0.5, 0.5), 1.0)  # the package's 2D NSD of frame 0
    assert 0 < one[1] < 1  # the premise: part of the contours lie within 1 mm
    dsc, nsd = frames_metrics(ref, pred, (0.5, 0.5), 1.0)
    assert dsc == pytest.approx(2 * 32 / (80 + 64))
    from surface_distance import metrics as sd

    d0 = sd.compute_surface_distances(ref[0], pred[0], [0.5, 0.5])
    d1 = sd.compute_surface_distances(ref[1], ref[1], [0.5, 0.5])
    total0 = d0["surfel_areas_gt"].sum() + d0["surfel_areas_pred"].sum()
    assert nsd == pytest.approx(one[1] * total0 / (total0 + d1["surfel_areas_gt"].sum()))
    assert frames_metrics(ref[:1], pred[:1], (0.5, 0.5), 1.0)[1] == pytest.approx(one[1])
    assert frames_metrics(ref, np.zeros_like(ref), (1, 1), 1.0) == (0.0, 0.0)


def test_ray_batch_equals_the_local_run(local_run, data, random_checkpoint, tmp_path):
    pytest.importorskip("ray", reason="Ray is an optional extra (make setup installs it)")
    manifest = data / "ok.csv"
    manifest.write_text("case,image,prompts,reference\ncine,cine.nrrd,p.json,cine_ref.nrrd\n"
                        "video,echo.mp4,p.json,\nlate,cine.nrrd,late.json,\n")
    out = tmp_path / "ray_out"
    env = {k: v for k, v in os.environ.items() if k != "RAY_ADDRESS"}
    proc = subprocess.run(
        [sys.executable, "-m", "medsam_server.cli", "batch", str(manifest), "-o", str(out),
         "--checkpoint", str(random_checkpoint), "--time", "--direction", "forward",
         "--format", "seq.nrrd", *OPTIONS, "--ray", "--workers", "1"],
        capture_output=True, text=True, env=env, timeout=600)
    assert proc.returncode == 1, proc.stderr[-3000:]
    assert "batch: 2 done, 1 failed, 0 skipped" in proc.stderr
    for case in ("cine", "video"):
        np.testing.assert_array_equal(read_label_sequence(out / f"{case}.seq.nrrd").array,
                                      read_label_sequence(local_run / f"{case}.seq.nrrd").array)
    assert metrics(out) == metrics(local_run)
    assert results(out)["late"]["message"] == results(local_run)["late"]["message"]


def test_a_folder_recorded_before_time_and_direction_resumes(tmp_path):
    from medsam_server.batch.cases import BatchError, BatchSettings, Case
    from medsam_server.batch.run import BatchLedger

    plain = BatchSettings(checkpoint_sha256="0" * 64)
    recorded = plain.as_json()
    assert "time" not in recorded and "direction" not in recorded  # as before they existed
    (tmp_path / "batch.json").write_text(json.dumps(recorded))
    cases = [Case("a", tmp_path / "a.nrrd", tmp_path / "p.json")]
    assert BatchLedger(tmp_path, cases, plain).plan() == cases  # same settings: it resumes
    timed = BatchSettings(checkpoint_sha256="0" * 64, time=True, format="seq.nrrd")
    with pytest.raises(BatchError, match="time: None then, True now"):
        BatchLedger(tmp_path, cases, timed).plan()
    (tmp_path / "batch.json").write_text(json.dumps(timed.as_json()))
    with pytest.raises(BatchError, match="time: True then, None now"):  # the other way round
        BatchLedger(tmp_path, cases, plain).plan()


def test_boxes_from_reference_on_the_frame_where_a_label_is_largest(data, engine,
                                                                    random_checkpoint, tmp_path):
    ref = sitk.GetArrayFromImage(sitk.ReadImage(str(data / "cine_ref.nrrd")))
    ref[1, 120:125, 200:240] = 1  # frame 1 now holds the largest area of label 1
    ref_img = sitk.GetImageFromArray(ref)
    ref_img.CopyInformation(sitk.ReadImage(str(data / "cine.nrrd")))
    sitk.WriteImage(ref_img, str(tmp_path / "ref.nrrd"))
    (tmp_path / "m.csv").write_text(f"case,image,reference\ncine,{data / 'cine.nrrd'},"
                                    f"{tmp_path / 'ref.nrrd'}\n")
    rc, so, se = cli("batch", tmp_path / "m.csv", "-o", tmp_path / "out", "--checkpoint",
                     random_checkpoint, "--time", "--boxes-from-reference", "--format",
                     "nii.gz", *OPTIONS)
    assert rc == 0, se
    written = sitk.ReadImage(str(tmp_path / "out" / "cine.nii.gz"))
    assert written.GetSpacing() == pytest.approx(ref_img.GetSpacing())  # the cine's grid
    session = Session(engine, frames_u8(read_frames(data / "cine.nrrd"), "ct", None))
    session.add_prompt(1, "k", 1, Prompt(box=(200.0, 120.0, 309.0, 199.0)))
    session.propagate(1, "k")
    expected = session.mask(1).astype(np.uint8)
    assert expected.any()
    np.testing.assert_array_equal(sitk.GetArrayFromImage(written), expected)
