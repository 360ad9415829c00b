"""``medsam-server batch`` on real volumes with a seeded random-weight checkpoint.

Manifest A (boxes from references, labels 5 and 1, jitter 3 px, seed 7): three real CT
volumes, small so a run takes seconds, and one case whose reference is on another grid
(it must fail, be recorded, and not stop the batch):
- ``ct``: slices k = 12..15 of the abdomen CT and of its reference (liver 5, spleen 1);
- ``dicom``: four files of the DICOM series, its y-flipped reference resampled onto them;
- ``heart``: slices k = 76..79 of the chest CT, the pulmonary artery (label 1) as reference;
- ``heart_raw``: the whole chest CT with heart.nii.gz, which lies on a larger grid.
Runs of A use ``--threads 1`` everywhere, so the local run, the interrupted-then-resumed
run and the Ray run (2 actors of 1 CPU) must give identical outputs.

Manifest B (prompts files, ``--modality mr``): the MR crop with a reference (metrics), the
CT crop without one, a prompt outside its slice and a missing image (both recorded).
"""

from __future__ import annotations

import csv
import json
import os
import shutil
import signal
import subprocess
import sys
from pathlib import Path
from types import SimpleNamespace

import nrrd
import numpy as np
import pytest
import SimpleITK as sitk
import torch
from conftest import ERROR_PREFIX, cli, shared
from medsam_server.batch.cases import reference_boxes
from medsam_server.batch.evaluate import read_metrics_csv
from medsam_server.engine import engine as engine_module

CT = "totalseg_ct_abdomen_3mm/example_ct_sm.nii.gz"
CT_SEG = "totalseg_ct_abdomen_3mm/example_seg.nii.gz"
MR = "totalseg_mr_abdomen_3mm/example_mr_sm.nii.gz"
MR_SEG = "totalseg_mr_abdomen_3mm/example_seg_mr.nii.gz"
DICOM = "totalseg_ct_dicom_2mm/dicom"
DICOM_SEG = "totalseg_ct_dicom_2mm/example_seg_dicom.nii.gz"
HEART_CT = "totalseg_ct_heart_1p5mm/ct_cropped.nii.gz"
HEART = "totalseg_ct_heart_1p5mm/heart.nii.gz"
PULMONARY = "totalseg_ct_heart_1p5mm/pulmonary_artery.nii.gz"
OPTIONS_A = ["--boxes-from-reference", "--labels", "5", "1", "--box-jitter", "3", "--seed", "7",
             "--threads", "1", "--device", "cpu"]
OK_A = ["ct", "dicom", "heart"]
pytestmark = pytest.mark.filterwarnings("ignore:Please import:DeprecationWarning")


def read_rows(path: Path) -> list[dict[str, str]]:
    with open(path, newline="") as f:
        return list(csv.DictReader(f))


def header_of(path: Path) -> list[str]:
    return path.read_text().splitlines()[0].split(",")


@pytest.fixture(autouse=True)
def _isolated_env(monkeypatch, tmp_path):
    monkeypatch.delenv("MEDSAM2_CHECKPOINT", raising=False)
    monkeypatch.delenv("RAY_ADDRESS", raising=False)
    monkeypatch.setenv("MEDSAM2_CACHE_DIR", str(tmp_path / "cache"))


@pytest.fixture(scope="module", autouse=True)
def _restore_torch_threads():
    """--threads 1 in this process must not slow the modules that run after this one."""
    threads = torch.get_num_threads()
    yield
    torch.set_num_threads(threads)


# ---- data -------------------------------------------------------------------------------


@pytest.fixture(scope="module")
def data(tmp_path_factory) -> Path:
    root = tmp_path_factory.mktemp("batch_data")
    crop = slice(12, 16)
    sitk.WriteImage(sitk.ReadImage(str(shared(CT)))[:, :, crop], str(root / "ct.nii.gz"))
    sitk.WriteImage(sitk.ReadImage(str(shared(CT_SEG)))[:, :, crop], str(root / "ct_ref.nii.gz"))
    series = root / "dicom"
    series.mkdir()
    for f in sorted(shared(DICOM).iterdir())[8:12]:
        shutil.copy(f, series / f.name)
    reader = sitk.ImageSeriesReader()
    reader.SetFileNames(sitk.ImageSeriesReader.GetGDCMSeriesFileNames(str(series)))
    grid = reader.Execute()
    seg = sitk.ReadImage(str(shared(DICOM_SEG)))  # y-flipped: match by physical position
    sitk.WriteImage(sitk.Resample(seg, grid, sitk.Transform(), sitk.sitkNearestNeighbor, 0,
                                  seg.GetPixelID()), str(root / "dicom_ref.nii.gz"))
    heart = slice(76, 80)
    sitk.WriteImage(sitk.ReadImage(str(shared(HEART_CT)))[:, :, heart], str(root / "heart.nii.gz"))
    sitk.WriteImage(sitk.ReadImage(str(shared(PULMONARY)))[:, :, heart],
                    str(root / "heart_ref.nii.gz"))
    (root / "a.csv").write_text(
        "case,image,reference\n"
        "ct,ct.nii.gz,ct_ref.nii.gz\n"
        "dicom,dicom,dicom_ref.nii.gz\n"
        f"heart,heart.nii.gz,heart_ref.nii.gz\n"
        f"heart_raw,{shared(HEART_CT)},{shared(HEART)}\n")
    return root


def run_a(ckpt: Path, data: Path, out: Path, *extra: object) -> SimpleNamespace:
    rc, so, se = cli("batch", data / "a.csv", "-o", out, "--checkpoint", ckpt, *OPTIONS_A,
                     *extra)
    return SimpleNamespace(rc=rc, stdout=so, stderr=se, out=out)


@pytest.fixture(scope="module")
def local_a(random_checkpoint, data, tmp_path_factory):
    return run_a(random_checkpoint, data, tmp_path_factory.mktemp("local_a") / "out")


def assert_same_outputs(a: Path, b: Path, cases: list[str]) -> None:
    for case in cases:
        da, ha = nrrd.read(str(a / f"{case}.seg.nrrd"), index_order="C")
        db, hb = nrrd.read(str(b / f"{case}.seg.nrrd"), index_order="C")
        np.testing.assert_array_equal(da, db, err_msg=case)
        assert {k: str(v) for k, v in ha.items()} == {k: str(v) for k, v in hb.items()}
    assert read_metrics_csv(a / "metrics.csv") == read_metrics_csv(b / "metrics.csv")
    ra, rb = read_rows(a / "results.csv"), read_rows(b / "results.csv")
    assert [(r["case"], r["status"], r["slices_encoded"], r["message"]) for r in ra] == \
        [(r["case"], r["status"], r["slices_encoded"], r["message"]) for r in rb]


# ---- manifest A, local --------------------------------------------------------------------


def test_local_batch_writes_outputs_results_and_metrics(local_a, data):
    assert local_a.rc == 1, local_a.stderr  # one case failed, recorded
    out = local_a.out
    assert header_of(out / "results.csv") == ["case", "status", "seconds", "slices_encoded",
                                              "message"]
    rows = {r["case"]: r for r in read_rows(out / "results.csv")}
    assert list(rows) == ["ct", "dicom", "heart", "heart_raw"]
    for case in OK_A:
        assert rows[case]["status"] == "ok"
        assert float(rows[case]["seconds"]) > 0
        # 4 slices each; ct's two objects share the encoded slices
        assert rows[case]["slices_encoded"] == "4"
    failed = rows["heart_raw"]
    assert failed["status"] == "failed"
    assert "size 122x102x112" in failed["message"] and "size 233x167x191" in failed["message"]
    assert sorted(p.name for p in out.iterdir()) == [
        "batch.json", "ct.seg.nrrd", "dicom.seg.nrrd", "heart.seg.nrrd", "metrics.csv",
        "results.csv"]  # no temporary file, nothing for the failed case
    assert "heart_raw: failed:" in local_a.stderr
    assert "batch: 3 done, 1 failed, 0 skipped" in local_a.stderr


def test_outputs_are_on_the_input_grids_with_reference_labels(local_a, data):
    images = {"ct": data / "ct.nii.gz", "heart": data / "heart.nii.gz"}
    for case, image in images.items():
        got, ref = sitk.ReadImage(str(local_a.out / f"{case}.seg.nrrd")), sitk.ReadImage(str(image))
        assert got.GetSize() == ref.GetSize()
        np.testing.assert_allclose(got.GetSpacing(), ref.GetSpacing(), atol=1e-5)
        np.testing.assert_allclose(got.GetOrigin(), ref.GetOrigin(), atol=1e-4)
        np.testing.assert_allclose(got.GetDirection(), ref.GetDirection(), atol=1e-6)
    dicom = sitk.ReadImage(str(local_a.out / "dicom.seg.nrrd"))
    assert dicom.GetSize() == (512, 512, 4)
    data_ct, header = nrrd.read(str(local_a.out / "ct.seg.nrrd"), index_order="C")
    # labels 1 and 5 in label order; each is the reference's own value
    assert (header["Segment0_Name"], header["Segment0_LabelValue"]) == ("label_1", "1")
    assert (header["Segment1_Name"], header["Segment1_LabelValue"]) == ("label_5", "5")
    assert set(np.unique(data_ct).tolist()) <= {0, 1, 5}
    _, header = nrrd.read(str(local_a.out / "heart.seg.nrrd"), index_order="C")
    assert header["Segment0_LabelValue"] == "1" and "Segment1_Name" not in header


def test_metrics_csv_equals_evaluate_on_the_outputs(local_a, data, tmp_path):
    assert header_of(local_a.out / "metrics.csv") == ["case", "label", "dsc", "nsd"]
    rows = read_metrics_csv(local_a.out / "metrics.csv")
    assert [(m.case, m.label) for m in rows] == [("ct", 1), ("ct", 5), ("dicom", 1),
                                                 ("dicom", 5), ("heart", 1)]
    again = []
    for case in OK_A:
        csv_out = tmp_path / f"{case}.csv"
        labels = ["1", "5"] if case != "heart" else ["1"]
        rc, so, se = cli("evaluate", local_a.out / f"{case}.seg.nrrd",
                         data / f"{case}_ref.nii.gz", "--labels", *labels, "--csv", csv_out)
        assert rc == 0, se
        again += [(case, m.label, m.dsc, m.nsd) for m in read_metrics_csv(csv_out)]
    assert [(m.case, m.label, m.dsc, m.nsd) for m in rows] == again
    # the summary of metrics.csv is printed at the end
    assert "DSC mean" in local_a.stdout and "all" in local_a.stdout


def test_rerun_skips_everything_done(local_a, random_checkpoint, data, monkeypatch):
    before = {p.name: p.stat().st_mtime_ns for p in local_a.out.glob("*.seg.nrrd")}
    calls = []
    real = engine_module.Engine.from_checkpoint
    monkeypatch.setattr(engine_module.Engine, "from_checkpoint",
                        lambda *a, **k: calls.append(1) or real(*a, **k))
    again = run_a(random_checkpoint, data, local_a.out, "--quiet")
    assert again.rc == 1, again.stderr  # heart_raw is tried again and fails again
    assert "skipped 3 case(s) whose output is already in" in again.stderr
    assert "batch: 0 done, 1 failed, 3 skipped" in again.stderr
    assert calls == [1]  # one model for the one case left
    assert {p.name: p.stat().st_mtime_ns for p in local_a.out.glob("*.seg.nrrd")} == before


def test_rerun_with_other_settings_is_refused(local_a, random_checkpoint, data):
    before = sorted((p.name, p.stat().st_mtime_ns) for p in local_a.out.iterdir())
    rc, so, se = cli("batch", data / "a.csv", "-o", local_a.out, "--checkpoint",
                     random_checkpoint, "--boxes-from-reference", "--labels", "5", "1",
                     "--box-jitter", "4", "--seed", "7", "--device", "cpu")
    assert rc == 2 and se.startswith(ERROR_PREFIX) and len(se.splitlines()) == 1, se
    assert "box_jitter: 3 then, 4 now" in se
    assert sorted((p.name, p.stat().st_mtime_ns) for p in local_a.out.iterdir()) == before


# ---- interrupted, then resumed -------------------------------------------------------------


def test_interrupted_batch_resumes_to_identical_outputs(local_a, random_checkpoint, data,
                                                        tmp_path, monkeypatch):
    out = tmp_path / "out"
    real = engine_module.Engine.track_step
    state = {"steps": 0}

    def track_step(self, *args, **kwargs):  # noqa: ANN202
        # Ctrl-C (a real SIGINT) on the second slice tracked after case ct was written
        if (out / "ct.seg.nrrd").exists():
            state["steps"] += 1
            if state["steps"] == 2:
                os.kill(os.getpid(), signal.SIGINT)
        return real(self, *args, **kwargs)

    handler = signal.getsignal(signal.SIGINT)
    with monkeypatch.context() as mp:
        mp.setattr(engine_module.Engine, "track_step", track_step)
        first = run_a(random_checkpoint, data, out)
    assert first.rc == 130, first.stderr
    assert "dicom: interrupted, nothing written for it" in first.stderr
    assert "interrupted: 1 done, 0 failed, 3 not run" in first.stderr
    assert sorted(p.name for p in out.iterdir()) == ["batch.json", "ct.seg.nrrd",
                                                     "metrics.csv", "results.csv"]
    assert [r["case"] for r in read_rows(out / "results.csv")] == ["ct"]
    assert signal.getsignal(signal.SIGINT) is handler  # restored

    second = run_a(random_checkpoint, data, out)
    assert second.rc == 1, second.stderr
    assert "skipped 1 case(s) whose output is already in" in second.stderr
    assert_same_outputs(local_a.out, out, OK_A)


# ---- boxes from references, by hand ------------------------------------------------------------


def _reference() -> np.ndarray:
    ref = np.zeros((5, 6, 7), np.uint8)  # (k, j, i)
    ref[1, 1:3, 2:5] = 3  # 6 voxels on slice k = 1
    ref[2, 3, 5] = 3  # 1 voxel on k = 2
    ref[4, 0:2, 0:2] = 7  # at the corner: a jittered box is clipped there
    return ref


@pytest.mark.parametrize("axis,index,box", [
    ("k", 1, (2, 1, 4, 2)),  # arr[1]: rows j 1..2, columns i 2..4
    ("j", 1, (2, 1, 4, 1)),  # areas per j: 3, 3, 1 -> the first largest; rows k, columns i
    ("i", 2, (1, 1, 2, 1)),  # areas per i: 2, 2, 2, 1 -> i = 2; rows k, columns j
])
def test_box_is_the_bounding_box_on_the_largest_slice(axis, index, box):
    [spec] = reference_boxes(_reference(), axis, [3, 9], 0, 0, "case")  # 9: absent, skipped
    assert (spec.label, spec.axis, spec.slice, spec.prompt.box) == (3, axis, index, box)
    assert spec.name == "label_3"


def test_jitter_grows_every_side_by_one_seeded_shift_and_clips():
    ref = _reference()
    ref[0, 5, 6] = 8  # one voxel in the last row and column
    shifts = set()
    for seed in range(12):
        a, b, c = reference_boxes(ref, "k", None, 2, seed, "case")
        assert reference_boxes(ref, "k", None, 2, seed, "case") == [a, b, c]  # seeded
        x0, y0, x1, y1 = a.prompt.box  # unjittered (2, 1, 4, 2)
        s = 2 - x0
        assert 0 <= s <= 2 and (y0, x1, y1) == (max(0, 1 - s), 4 + s, 2 + s)
        shifts.add(s)
        s7 = b.prompt.box[2] - 1  # (0, 0, 1, 1): clipped at 0
        assert 0 <= s7 <= 2 and b.prompt.box == (0, 0, 1 + s7, 1 + s7)
        s8 = 6 - c.prompt.box[0]  # (6, 5, 6, 5): clipped at the last column and row
        assert 0 <= s8 <= 2 and c.prompt.box == (6 - s8, 5 - s8, 6, 5)
    assert len(shifts) > 1


def test_no_reference_label_to_prompt():
    with pytest.raises(ValueError, match=r"no labels \[9\]"):
        reference_boxes(_reference(), "k", [9], 0, 0, "case")


# ---- manifest B: prompts files ------------------------------------------------------------


@pytest.fixture(scope="module")
def prompts_run(random_checkpoint, data, tmp_path_factory):
    root = tmp_path_factory.mktemp("batch_prompts")
    mr = sitk.ReadImage(str(shared(MR)))
    sitk.WriteImage(mr[:, :, 8:12], str(root / "mr.nii.gz"))
    sitk.WriteImage(sitk.ReadImage(str(shared(MR_SEG)))[:, :, 8:12], str(root / "mr_ref.nii.gz"))
    objects = {
        "mr.json": [{"label": 5, "name": "liver", "slice": 2, "box": [20, 25, 75, 70]}],
        "ct.json": [{"label": 2, "name": "spleen", "slice": 2, "box": [5, 20, 50, 70]}],
        "dicom.json": [{"label": 1, "slice": 2, "box": [150, 180, 330, 360]}],
        "bad.json": [{"label": 1, "slice": 2, "box": [300, 300, 400, 400]}],
    }
    for name, objs in objects.items():
        (root / name).write_text(json.dumps({"objects": objs}))
    (root / "b.csv").write_text(
        "case,image,prompts,reference\n"
        "mr,mr.nii.gz,mr.json,mr_ref.nii.gz\n"
        f"ct,{data / 'ct.nii.gz'},ct.json,\n"
        f"dicom,{data / 'dicom'},dicom.json,\n"
        f"outside,{data / 'ct.nii.gz'},bad.json,\n"
        "missing,nope.nii.gz,ct.json,\n")
    out = root / "out"
    rc, so, se = cli("batch", root / "b.csv", "-o", out, "--checkpoint", random_checkpoint,
                     "--modality", "mr", "--format", "nii.gz", "--device", "cpu")
    return SimpleNamespace(rc=rc, stdout=so, stderr=se, out=out, root=root)


def test_prompts_files_batch(prompts_run):
    assert prompts_run.rc == 1, prompts_run.stderr
    rows = {r["case"]: r for r in read_rows(prompts_run.out / "results.csv")}
    assert [rows[c]["status"] for c in rows] == ["ok", "ok", "ok", "failed", "failed"]
    assert "object 1 (Segment_1)" in rows["outside"]["message"]
    assert "outside" in rows["outside"]["message"]
    assert "nope.nii.gz: no such file" in rows["missing"]["message"]
    assert (rows["mr"]["slices_encoded"], rows["dicom"]["slices_encoded"]) == ("4", "4")
    files = sorted(p.name for p in prompts_run.out.iterdir())
    assert files == ["batch.json", "ct.nii.gz", "dicom.nii.gz", "metrics.csv", "mr.nii.gz",
                     "results.csv"]
    mr = sitk.GetArrayFromImage(sitk.ReadImage(str(prompts_run.out / "mr.nii.gz")))
    assert mr.shape == (4, 91, 117) and set(np.unique(mr).tolist()) <= {0, 5}
    ct = sitk.GetArrayFromImage(sitk.ReadImage(str(prompts_run.out / "ct.nii.gz")))
    assert set(np.unique(ct).tolist()) <= {0, 2}
    # only mr has a reference: its one object's label is scored
    assert [(m.case, m.label) for m in read_metrics_csv(prompts_run.out / "metrics.csv")] == \
        [("mr", 5)]
    # tqdm bars on stderr: cases, and the slices of each case
    assert "cases: 100%" in prompts_run.stderr and "5/5" in prompts_run.stderr
    assert "slice" in prompts_run.stderr


# ---- bad input: exit 2, one line, nothing written, no model ---------------------------------


@pytest.fixture
def no_model(monkeypatch):
    def refuse(*args, **kwargs):  # noqa: ANN202
        raise AssertionError("the model was loaded before the bad input was rejected")

    monkeypatch.setattr(engine_module.Engine, "from_checkpoint", refuse)


@pytest.mark.parametrize("manifest,extra,needle", [
    ("case,picture\na,x.nii.gz\n", [], "missing image"),
    ("case,image,prompts\na,x.nii.gz,p.json\na,y.nii.gz,p.json\n", [], "listed twice"),
    ("case,image,prompts\n../a,x.nii.gz,p.json\n", [], "case name '../a'"),
    ("case,image,prompts\na,x.nii.gz,\n", [], "has no prompts file"),
    ("case,image,prompts\na,x.nii.gz,p.json,extra\n", [], "4 cells"),
    ("case,image,reference\na,x.nii.gz,r.nii.gz\n", [], "needs a 'prompts' column"),
    ("case,image,prompts\na,x.nii.gz,p.json\n", ["--boxes-from-reference"],
     "needs a 'reference' column"),
    ("case,image,prompts,reference\na,x.nii.gz,p.json,r.nii.gz\n", ["--boxes-from-reference"],
     "one source of prompts"),
    ("case,image,prompts\n", [], "lists no cases"),
    ("case,image,prompts\na,x.nii.gz,p.json\n", ["--labels", "1"], "need --boxes-from-reference"),
    ("case,image,prompts\na,x.nii.gz,p.json\n", ["--workers", "2"], "only apply with --ray"),
    ("case,image,prompts\na,x.nii.gz,p.json\n", ["--modality", "mr", "--window", "1", "2"],
     "--window"),
    ("case,image,prompts\na,x.nii.gz,p.json\n", ["--tolerance-mm", "-2"], "--tolerance-mm"),
])
def test_bad_batch_input(tmp_path, random_checkpoint, no_model, manifest, extra, needle):
    (tmp_path / "m.csv").write_text(manifest)
    out = tmp_path / "out"
    rc, so, se = cli("batch", tmp_path / "m.csv", "-o", out, "--checkpoint", random_checkpoint,
                     *extra)
    assert rc == 2, se
    assert len(se.splitlines()) == 1 and se.startswith(ERROR_PREFIX), se
    assert needle in se, se
    assert so == "" and not out.exists()


def test_ray_missing_says_how_to_install(tmp_path, random_checkpoint, no_model, monkeypatch):
    monkeypatch.setitem(sys.modules, "ray", None)  # import ray -> ImportError
    monkeypatch.delitem(sys.modules, "medsam_server.batch.ray_runner", raising=False)
    (tmp_path / "m.csv").write_text("case,image,prompts\na,x.nii.gz,p.json\n")
    out = tmp_path / "out"
    rc, so, se = cli("batch", tmp_path / "m.csv", "-o", out, "--checkpoint", random_checkpoint,
                     "--ray")
    assert rc == 2 and len(se.splitlines()) == 1, se
    assert "pip install 'medsam-server[ray]'" in se
    assert not out.exists()


def test_unreachable_ray_address_fails_fast(tmp_path, random_checkpoint, no_model):
    pytest.importorskip("ray", reason="Ray is an optional extra (make setup installs it)")
    (tmp_path / "m.csv").write_text("case,image,prompts\na,x.nii.gz,p.json\n")
    out = tmp_path / "out"
    rc, so, se = cli("batch", tmp_path / "m.csv", "-o", out, "--checkpoint", random_checkpoint,
                     "--ray", "127.0.0.1:1")  # nobody listens on port 1: refused at once
    assert rc == 2 and len(se.splitlines()) == 1, se
    assert "cannot reach Ray at 127.0.0.1:1" in se
    assert not out.exists()


# ---- Ray: a local Ray with 2 one-CPU actors (in a subprocess: Ray stays out of this one) ----


def test_ray_batch_equals_the_local_run(local_a, random_checkpoint, data, tmp_path):
    pytest.importorskip("ray", reason="Ray is an optional extra (make setup installs it)")
    out = tmp_path / "ray_out"
    env = {k: v for k, v in os.environ.items() if k != "RAY_ADDRESS"}
    proc = subprocess.run(
        [sys.executable, "-m", "medsam_server.cli", "batch", str(data / "a.csv"), "-o", str(out),
         "--checkpoint", str(random_checkpoint), *OPTIONS_A, "--ray", "--workers", "2",
         "--cpus-per-worker", "1", "--quiet"],
        capture_output=True, text=True, env=env, timeout=600)
    assert proc.returncode == 1, proc.stderr
    assert "ray: 2 worker(s) on cpu, 1 thread(s) each" in proc.stderr
    assert "batch: 3 done, 1 failed, 0 skipped" in proc.stderr
    assert_same_outputs(local_a.out, out, OK_A)
    assert sorted(p.name for p in out.iterdir()) == sorted(p.name for p in local_a.out.iterdir())
