"""``medsam-server`` run in-process on real volumes with a seeded random-weight checkpoint.

The weights are random, so mask *content* means nothing: the full runs check the output
grid, the labels, the header and the post-processing (one 26-connected component), not
anatomy. A slice costs one to several seconds on a 2-core CPU, so there are five full runs,
all in module-scoped fixtures: the whole CT (30 slices), an 8-slice crop of the MR, 6 files
of the DICOM series (512² slices), a 6-slice crop of the CT with two objects, and a 6-slice
crop of the CT segmented along axis j. Crops keep their physical grid (SimpleITK slicing).
Everything else must fail before the model is loaded, which a guard on
``Engine.from_checkpoint`` checks.
"""

from __future__ import annotations

import json
import os
import shutil
from pathlib import Path
from types import SimpleNamespace

import nrrd
import numpy as np
import pytest
import SimpleITK as sitk
import torch
from conftest import ERROR_PREFIX, cli, shared
from medsam_server.cli.main import main
from medsam_server.engine import engine as engine_module
from medsam_server.engine.features import FeatureCache
from medsam_server.engine.model import read_state_dict
from medsam_server.io.volumes import read_volume
from skimage.measure import label as cc_label

CT = "totalseg_ct_abdomen_3mm/example_ct_sm.nii.gz"
MR = "totalseg_mr_abdomen_3mm/example_mr_sm.nii.gz"
DICOM = "totalseg_ct_dicom_2mm/dicom"


def segment(ckpt: Path, src: object, out: Path, *extra: object, quiet: bool = True
            ) -> tuple[int, str, str]:
    flags = ["--quiet"] if quiet else []
    return cli("segment", src, "-o", out, "--checkpoint", ckpt, "--device", "cpu", *flags,
               *extra)


def assert_same_grid(img: sitk.Image, ref: sitk.Image) -> None:
    assert img.GetSize() == ref.GetSize()
    np.testing.assert_allclose(img.GetSpacing(), ref.GetSpacing(), atol=1e-5)
    np.testing.assert_allclose(img.GetOrigin(), ref.GetOrigin(), atol=1e-4)
    np.testing.assert_allclose(img.GetDirection(), ref.GetDirection(), atol=1e-6)


def n_components(mask: np.ndarray) -> int:
    return int(cc_label(mask != 0, connectivity=3).max())


@pytest.fixture(autouse=True)
def _isolated_env(monkeypatch, tmp_path):
    """No user checkpoint or cache leaks in; a fresh empty cache per test."""
    monkeypatch.delenv("MEDSAM2_CHECKPOINT", raising=False)
    monkeypatch.setenv("MEDSAM2_CACHE_DIR", str(tmp_path / "cache"))


@pytest.fixture(scope="module")
def runs(tmp_path_factory) -> Path:
    return tmp_path_factory.mktemp("cli_runs")


def _run_once(folder: Path, argv_out: Path, fn):  # noqa: ANN202
    with pytest.MonkeyPatch.context() as mp:
        mp.delenv("MEDSAM2_CHECKPOINT", raising=False)
        mp.setenv("MEDSAM2_CACHE_DIR", str(folder / "cache"))
        rc, out, err = fn()
    return SimpleNamespace(rc=rc, stdout=out, stderr=err, out=argv_out, folder=folder)


# ---- the five full runs ---------------------------------------------------------------


@pytest.fixture(scope="module")
def ct_run(random_checkpoint, liver_box, runs):
    folder = runs / "ct"
    folder.mkdir()
    out = folder / "liver.seg.nrrd"
    key, box = liver_box
    return _run_once(folder, out, lambda: segment(
        random_checkpoint, shared(CT), out, "--slice", key, "--box", *box, "--name", "Liver"))


@pytest.fixture(scope="module")
def mr_crop(runs) -> Path:
    """Slices k = 6..13 of the MR: shape (8, 91, 117)."""
    img = sitk.ReadImage(str(shared(MR)))
    path = runs / "mr_k6-13.nii.gz"
    sitk.WriteImage(img[:, :, 6:14], str(path))
    return path


@pytest.fixture(scope="module")
def mr_run(random_checkpoint, mr_crop, runs):
    folder = runs / "mr"
    folder.mkdir()
    out = folder / "mr_mask.nii.gz"
    return _run_once(folder, out, lambda: segment(
        random_checkpoint, mr_crop, out, "--modality", "mr", "--slice", 4,
        "--box", 20, 25, 75, 70, quiet=False))


@pytest.fixture(scope="module")
def dicom_subset(runs) -> Path:
    """Six consecutive files (z = -780.5 .. -790.5 mm) of the 20-file series."""
    files = sorted(shared(DICOM).iterdir())
    assert len(files) == 20
    folder = runs / "dicom_series"
    folder.mkdir()
    for f in files[7:13]:
        shutil.copy(f, folder / f.name)
    return folder


@pytest.fixture(scope="module")
def dicom_run(random_checkpoint, dicom_subset, runs):
    folder = runs / "dicom"
    folder.mkdir()
    out = folder / "dicom_mask.nrrd"
    return _run_once(folder, out, lambda: segment(
        random_checkpoint, dicom_subset, out, "--slice", 3, "--box", 150, 180, 330, 360))


@pytest.fixture(scope="module")
def ct_k_crop(runs) -> Path:
    """Slices k = 12..17 of the CT (key slice 14 → 2), physical grid kept."""
    img = sitk.ReadImage(str(shared(CT)))
    path = runs / "ct_k12-17.nii.gz"
    sitk.WriteImage(img[:, :, 12:18], str(path))
    return path


@pytest.fixture(scope="module")
def ct_j_crop(runs) -> Path:
    """Rows j = 40..45 of the CT: shape (30, 6, 122), so axis-j slices are 30×122."""
    img = sitk.ReadImage(str(shared(CT)))
    path = runs / "ct_j40-45.nii.gz"
    sitk.WriteImage(img[:, 40:46, :], str(path))
    return path


PROMPT_OBJECTS = [
    {"label": 1, "name": "liver", "slice": 2, "box": [45, 27, 104, 85],
     "color": [0.8, 0.2, 0.1]},
    {"label": 2, "name": "spleen", "slice": 2, "axis": "k", "box": [5, 20, 50, 70],
     "color": [0.1, 0.3, 0.9]},
]


@pytest.fixture(scope="module")
def prompts_run(random_checkpoint, ct_k_crop, runs):
    folder = runs / "prompts"
    folder.mkdir()
    prompts = folder / "objects.json"
    prompts.write_text(json.dumps({"objects": PROMPT_OBJECTS}))
    out = folder / "two.seg.nrrd"
    return _run_once(folder, out, lambda: segment(
        random_checkpoint, ct_k_crop, out, "--prompts", prompts, quiet=False))


# Valid on an axis-j slice of the j-crop (30 rows × 122 columns); on an axis-k slice
# (6 × 122) its rows 8..25 lie below the slice, on an axis-i slice (30 × 6) its columns too.
J_BOX = (45, 8, 104, 25)


@pytest.fixture(scope="module")
def axis_j_run(random_checkpoint, ct_j_crop, runs):
    folder = runs / "axis_j"
    folder.mkdir()
    out = folder / "j.nii.gz"
    return _run_once(folder, out, lambda: segment(
        random_checkpoint, ct_j_crop, out, "--axis", "j", "--slice", 3, "--box", *J_BOX))


def test_ct_to_seg_nrrd_on_the_input_grid(ct_run):
    assert ct_run.rc == 0, ct_run.stderr
    assert ct_run.stderr == "", "--quiet must print nothing on success"
    assert ct_run.stdout == ""
    assert_same_grid(sitk.ReadImage(str(ct_run.out)), sitk.ReadImage(str(shared(CT))))
    assert sorted(p.name for p in ct_run.folder.iterdir() if p.is_file()) == [ct_run.out.name]


def test_ct_seg_nrrd_header_names_the_segment(ct_run):
    header = nrrd.read_header(str(ct_run.out))
    assert header["Segment0_Name"] == "Liver"
    assert header["Segment0_LabelValue"] == "1"
    assert [float(c) for c in header["Segment0_Color"].split()] == pytest.approx([0.5, 0.68, 0.5])
    assert "Segment1_Name" not in header
    assert header["space"] == "left-posterior-superior"


def test_ct_mask_is_one_26_connected_component(ct_run):
    data, _ = nrrd.read(str(ct_run.out), index_order="C")
    assert data.shape == (30, 101, 122)
    assert set(np.unique(data).tolist()) <= {0, 1}
    assert data.any(), "random weights still give some mask on this seed"
    assert n_components(data) == 1


def test_mr_to_nifti_with_progress(mr_run, mr_crop):
    assert mr_run.rc == 0, mr_run.stderr
    mask = sitk.ReadImage(str(mr_run.out))
    assert_same_grid(mask, sitk.ReadImage(str(mr_crop)))
    arr = sitk.GetArrayFromImage(mask)
    assert arr.dtype == np.uint8 and arr.shape == (8, 91, 117)
    assert set(np.unique(arr).tolist()) <= {0, 1}
    # a tqdm bar over the 8 slices, then one summary line
    assert "segmenting" in mr_run.stderr and "8/8" in mr_run.stderr
    last = mr_run.stderr.strip().splitlines()[-1]
    assert last.startswith(f"wrote {mr_run.out} (Segment_1: {int(arr.sum())} voxels;"), last
    assert ERROR_PREFIX not in mr_run.stderr


def test_dicom_folder_to_nrrd_on_the_series_grid(dicom_run, dicom_subset):
    assert dicom_run.rc == 0, dicom_run.stderr
    assert dicom_run.stderr == ""
    mask = sitk.ReadImage(str(dicom_run.out))
    series = read_volume(dicom_subset)
    assert mask.GetSize() == series.size == (512, 512, 6)
    np.testing.assert_allclose(mask.GetSpacing(), series.spacing, atol=1e-5)
    np.testing.assert_allclose(mask.GetOrigin(), series.origin, atol=1e-4)
    np.testing.assert_allclose(mask.GetDirection(), series.direction, atol=1e-6)
    # SOURCES.md: 0.977 x 0.977 x 2.0 mm, identity direction; lowest file at z = -790.5
    np.testing.assert_allclose(series.spacing, (0.977, 0.977, 2.0), atol=1e-3)
    np.testing.assert_allclose(series.origin, (-249.51, -437.51, -790.5), atol=0.01)
    np.testing.assert_allclose(series.direction, np.eye(3).ravel(), atol=1e-6)
    arr = sitk.GetArrayFromImage(mask)
    assert set(np.unique(arr).tolist()) <= {0, 1}
    assert n_components(arr) <= 1


def test_two_objects_from_a_prompts_file(prompts_run, ct_k_crop):
    assert prompts_run.rc == 0, prompts_run.stderr
    data, header = nrrd.read(str(prompts_run.out), index_order="C")
    assert_same_grid(sitk.ReadImage(str(prompts_run.out)), sitk.ReadImage(str(ct_k_crop)))
    assert set(np.unique(data).tolist()) <= {0, 1, 2}
    assert 1 in data
    assert 2 in data or "claimed by two objects" in prompts_run.stderr
    assert n_components(data == 1) == 1  # the first object keeps its whole component
    for n, obj in enumerate(PROMPT_OBJECTS):
        assert header[f"Segment{n}_Name"] == obj["name"]
        assert header[f"Segment{n}_LabelValue"] == str(obj["label"])
        assert [float(c) for c in header[f"Segment{n}_Color"].split()] == obj["color"]
    assert "liver:" in prompts_run.stderr and "spleen:" in prompts_run.stderr


def test_axis_j_run_uses_the_axis_j_slice_shape(axis_j_run, ct_j_crop):
    assert axis_j_run.rc == 0, axis_j_run.stderr
    mask = sitk.ReadImage(str(axis_j_run.out))
    assert_same_grid(mask, sitk.ReadImage(str(ct_j_crop)))
    arr = sitk.GetArrayFromImage(mask)
    assert arr.shape == (30, 6, 122)
    assert set(np.unique(arr).tolist()) <= {0, 1}


# ---- bad input: exit 2, one line, nothing written, no model ---------------------------


@pytest.fixture
def no_model(monkeypatch):
    """Fail the test if the model is loaded at all."""
    def refuse(*args, **kwargs):  # noqa: ANN202
        raise AssertionError("the model was loaded before the bad input was rejected")

    monkeypatch.setattr(engine_module.Engine, "from_checkpoint", refuse)


@pytest.fixture
def fake_model(monkeypatch):
    """An engine that can start a session but not run: for errors found at prompt checks."""
    def fake(*args, **kwargs):  # noqa: ANN202
        return SimpleNamespace(new_cache=lambda: FeatureCache(0), device=torch.device("cpu"),
                               encoder_calls=0, image_size=512)

    monkeypatch.setattr(engine_module.Engine, "from_checkpoint", fake)


def assert_user_error(rc: int, stdout: str, stderr: str, out: Path, *needles: str) -> None:
    assert rc == 2, stderr
    lines = stderr.splitlines()
    assert len(lines) == 1, stderr
    assert lines[0].startswith(ERROR_PREFIX), stderr
    for needle in needles:
        assert needle.lower() in lines[0].lower(), (needle, lines[0])
    assert stdout == ""
    assert not out.exists()
    assert not [p for p in out.parent.glob("*") if out.name in p.name]  # no temp file


def _write(path: Path, arr: np.ndarray) -> Path:
    sitk.WriteImage(sitk.GetImageFromArray(arr), str(path))
    return path


def _bad_volume(kind: str, tmp: Path) -> Path:
    if kind == "missing":
        return tmp / "nope.nii.gz"
    if kind == "random bytes":
        path = tmp / "noise.nrrd"
        path.write_bytes(os.urandom(3000))
        return path
    if kind == "text as nifti":
        path = tmp / "notes.nii.gz"
        path.write_text("not an image\n")
        return path
    if kind == "2d":
        return _write(tmp / "slice.nii.gz", np.zeros((12, 10), np.int16))
    if kind == "4d":
        path = tmp / "dyn.nii.gz"
        sitk.WriteImage(sitk.Image([8, 8, 8, 3], sitk.sitkInt16), str(path))
        return path
    if kind == "nan nrrd":
        arr = np.zeros((4, 8, 8), np.float32)
        arr[1, 2, 3] = np.nan
        return _write(tmp / "nan.nrrd", arr)
    if kind == "empty folder":
        (tmp / "empty").mkdir()
        return tmp / "empty"
    raise AssertionError(kind)


@pytest.mark.parametrize("kind,needle", [
    ("missing", "no such file"),
    ("random bytes", "cannot read"),
    ("text as nifti", "cannot read"),
    ("2d", "2D"),
    ("4d", "4D"),
    ("nan nrrd", "NaN"),
    ("empty folder", "no files"),
])
def test_unusable_volume(tmp_path, random_checkpoint, no_model, kind, needle):
    src = _bad_volume(kind, tmp_path)
    out = tmp_path / "out" / "mask.nii.gz"
    out.parent.mkdir()
    rc, so, se = segment(random_checkpoint, src, out, "--slice", 1, "--box", 1, 1, 5, 5)
    assert_user_error(rc, so, se, out, needle, str(src))


def test_missing_output_folder(tmp_path, random_checkpoint, no_model):
    out = tmp_path / "no" / "such" / "mask.nii.gz"
    rc, so, se = segment(random_checkpoint, shared(CT), out, "--slice", 1, "--box", 1, 1, 5, 5)
    assert_user_error(rc, so, se, out, "does not exist")
    assert not (tmp_path / "no").exists()


def test_window_with_mr(tmp_path, random_checkpoint, no_model):
    out = tmp_path / "mask.nii.gz"
    rc, so, se = segment(random_checkpoint, shared(MR), out, "--modality", "mr",
                         "--window", 40, 400, "--slice", 1, "--box", 1, 1, 5, 5)
    assert_user_error(rc, so, se, out, "--window")


def test_ct_window_with_zero_width(tmp_path, random_checkpoint, no_model):
    out = tmp_path / "mask.nii.gz"
    rc, so, se = segment(random_checkpoint, shared(CT), out, "--window", 40, 0,
                         "--slice", 1, "--box", 1, 1, 5, 5)
    assert_user_error(rc, so, se, out, "width")


def test_slice_and_box_are_required(tmp_path, random_checkpoint, no_model):
    out = tmp_path / "mask.nii.gz"
    rc, so, se = segment(random_checkpoint, shared(CT), out, "--slice", 3)
    assert_user_error(rc, so, se, out, "--box")


@pytest.mark.parametrize("content,needle", [
    ("{not json", "cannot read prompts file"),
    ('{"objects": []}', "non-empty"),
    ('{"objects": [{"label": 1, "box": [1, 1, 5, 5]}]}', "missing field"),
    ('{"objects": [{"label": 0, "slice": 1, "box": [1, 1, 5, 5]}]}', "1..255"),
    ('{"objects": [{"slice": 1, "axis": "x", "box": [1, 1, 5, 5]}]}', "axis"),
    ('[{"label": 3, "slice": 1, "box": [1, 1, 5, 5]}, {"label": 3, "slice": 2, '
     '"box": [1, 1, 5, 5]}]', "share a label"),
    ('{"objects": ["liver"]}', "not a JSON object"),
])
def test_malformed_prompts_file(tmp_path, random_checkpoint, no_model, content, needle):
    prompts = tmp_path / "p.json"
    prompts.write_text(content)
    out = tmp_path / "mask.seg.nrrd"
    rc, so, se = segment(random_checkpoint, shared(CT), out, "--prompts", prompts)
    assert_user_error(rc, so, se, out, needle)


def test_missing_prompts_file_and_prompts_with_box(tmp_path, random_checkpoint, no_model):
    out = tmp_path / "mask.seg.nrrd"
    rc, so, se = segment(random_checkpoint, shared(CT), out, "--prompts", tmp_path / "nope.json")
    assert_user_error(rc, so, se, out, "cannot read prompts file")
    prompts = tmp_path / "p.json"
    prompts.write_text(json.dumps({"objects": PROMPT_OBJECTS}))
    rc, so, se = segment(random_checkpoint, shared(CT), out, "--prompts", prompts,
                         "--slice", 1, "--box", 1, 1, 5, 5)
    assert_user_error(rc, so, se, out, "not both")


def test_no_checkpoint_and_an_empty_cache(tmp_path, no_model):
    cache = tmp_path / "cache"  # MEDSAM2_CACHE_DIR, set by _isolated_env
    out = tmp_path / "mask.nii.gz"
    rc, so, se = cli("segment", shared(CT), "-o", out, "--slice", 14,
                     "--box", 45, 27, 104, 85, "--device", "cpu", "--quiet")
    assert_user_error(rc, so, se, out, str(cache / "MedSAM2_latest.pt"), "download",
                      "MEDSAM2_CHECKPOINT")


# Prompt errors on the CT (30 slices of 101×122) and, for the axis checks, its j-crop.
PROMPT_CASES = {
    "slice out of range": (CT, ["--slice", 30, "--box", 45, 27, 104, 85], "outside 0..29"),
    "negative slice": (CT, ["--slice", -1, "--box", 45, 27, 104, 85], "outside 0..29"),
    "empty box x0==x1": (CT, ["--slice", 14, "--box", 50, 27, 50, 85], "empty"),
    "empty box y0==y1": (CT, ["--slice", 14, "--box", 45, 30, 104, 30], "empty"),
    "box outside the slice": (CT, ["--slice", 14, "--box", 130, 10, 200, 50], "outside"),
    "box below the slice": (CT, ["--slice", 14, "--box", 10, -50, 60, -5], "outside"),
    "axis-j box on axis k": ("j-crop", ["--axis", "k", "--slice", 3, "--box", *J_BOX],
                             "122x6 slice"),
    "axis-j box on axis i": ("j-crop", ["--axis", "i", "--slice", 3, "--box", *J_BOX],
                             "6x30 slice"),
    "axis-j slice 6 of 6": ("j-crop", ["--axis", "j", "--slice", 6, "--box", *J_BOX],
                            "outside 0..5 along axis j"),
}


def _prompt_case(name: str, ct_j_crop: Path) -> tuple[Path, list]:
    src, args, _ = PROMPT_CASES[name]
    return (ct_j_crop if src == "j-crop" else shared(src)), args


@pytest.mark.parametrize("name", list(PROMPT_CASES))
def test_bad_prompt_is_a_user_error(tmp_path, random_checkpoint, ct_j_crop, fake_model, name):
    src, args = _prompt_case(name, ct_j_crop)
    out = tmp_path / "mask.nii.gz"
    rc, so, se = segment(random_checkpoint, src, out, *args)
    assert_user_error(rc, so, se, out, PROMPT_CASES[name][2])


@pytest.mark.parametrize("name", list(PROMPT_CASES))
def test_bad_prompt_is_rejected_before_the_model_loads(tmp_path, random_checkpoint, ct_j_crop,
                                                       no_model, name):
    # cli.cmd_segment says "cheap checks first: a typo costs no model load"; the volume
    # is in memory by then, so slice and box can be checked against its shape.
    src, args = _prompt_case(name, ct_j_crop)
    out = tmp_path / "mask.nii.gz"
    rc, so, se = segment(random_checkpoint, src, out, *args)
    assert_user_error(rc, so, se, out, PROMPT_CASES[name][2])


@pytest.mark.parametrize("name", ["mask.png", "mask.nii.gz.tmp", "mask"])
def test_unknown_output_type_is_rejected_before_the_model_loads(tmp_path, random_checkpoint,
                                                                 no_model, name):
    out = tmp_path / name
    rc, so, se = segment(random_checkpoint, shared(CT), out, "--slice", 14,
                         "--box", 45, 27, 104, 85)
    assert_user_error(rc, so, se, out, "unknown output type")


@pytest.mark.parametrize("kind", ["random", "truncated", "empty"])
def test_unusable_checkpoint(tmp_path, random_checkpoint, kind):
    bad = tmp_path / f"{kind}.pt"
    if kind == "random":
        bad.write_bytes(os.urandom(1 << 16))
    elif kind == "truncated":
        data = random_checkpoint.read_bytes()
        bad.write_bytes(data[: len(data) // 2])
    else:
        bad.write_bytes(b"")
    out = tmp_path / "mask.nii.gz"
    rc, so, se = segment(bad, shared(CT), out, "--slice", 14, "--box", 45, 27, 104, 85)
    assert_user_error(rc, so, se, out, str(bad))


def test_checkpoint_path_that_does_not_exist(tmp_path, no_model):
    out = tmp_path / "mask.nii.gz"
    rc, so, se = segment(tmp_path / "nope.pt", shared(CT), out, "--slice", 14,
                         "--box", 45, 27, 104, 85)
    assert_user_error(rc, so, se, out, "checkpoint not found", str(tmp_path / "nope.pt"))


# ---- the other commands ---------------------------------------------------------------


def test_checkpoints_table_names_releases_and_licence(tmp_path):
    rc, out, err = cli("checkpoints")
    assert rc == 0, err
    assert "MedSAM2_latest" in out and "* MedSAM2_latest" in out
    assert "MedSAM2_2411" in out
    assert "Licence: CC-BY-SA-4.0 (https://huggingface.co/wanglab/MedSAM2)" in out
    assert "not downloaded" in out
    assert not (tmp_path / "cache").exists() or not any((tmp_path / "cache").iterdir())


def test_checkpoints_table_shows_a_cached_file(tmp_path):
    cache = tmp_path / "other_cache"
    cache.mkdir()
    (cache / "MedSAM2_latest.pt").write_bytes(b"x" * 1234)
    rc, out, err = cli("checkpoints", "--cache-dir", cache)
    assert rc == 0, err
    row = next(line for line in out.splitlines() if "MedSAM2_latest" in line)
    assert str(cache / "MedSAM2_latest.pt") in row and "1.2 KB" in row


def test_make_test_checkpoint(tmp_path, random_checkpoint):
    path = tmp_path / "sub" / "test.pt"
    rc, out, err = cli("make-test-checkpoint", path, "--seed", 0)
    assert rc == 0, err
    assert "RANDOM" in err and str(path) in err
    sd, ref = read_state_dict(path), read_state_dict(random_checkpoint)
    assert sd.keys() == ref.keys()
    assert all(torch.equal(sd[k], ref[k]) for k in sd)


def test_version_and_usage_errors(capsys):
    with pytest.raises(SystemExit) as exc:
        main(["--version"])
    assert exc.value.code == 0
    assert capsys.readouterr().out.startswith("medsam-server ")
    with pytest.raises(SystemExit) as exc:
        main(["segment", "x.nii.gz", "-o", "y.nii.gz", "--modality", "pet"])
    assert exc.value.code == 2


# ---- checkpoints --json / --progress-json (what the Slicer settings panel reads) -------


@pytest.fixture
def hf_server():
    """test_checkpoints' stand-in for Hugging Face, serving 3 MB (48 network chunks)."""
    import hashlib
    import threading
    from http.server import ThreadingHTTPServer

    import test_checkpoints as tc

    data = os.urandom(3_000_000)
    httpd = ThreadingHTTPServer(("127.0.0.1", 0), tc._Handler)
    httpd.daemon_threads = True
    httpd.cfg = tc.ServerConfig(data=data, etag=hashlib.sha256(data).hexdigest())
    httpd.cfg.base_url = f"http://127.0.0.1:{httpd.server_address[1]}"
    thread = threading.Thread(target=httpd.serve_forever, daemon=True)
    thread.start()
    yield httpd.cfg
    httpd.shutdown()
    httpd.server_close()
    thread.join(5)


def json_lines(stdout: str) -> list[dict]:
    return [json.loads(line) for line in stdout.splitlines()]  # every line must be JSON


def test_checkpoints_json_lists_every_release(tmp_path):
    (tmp_path / "cache").mkdir()
    (tmp_path / "cache" / "MedSAM2_CTLesion.pt").write_bytes(b"x" * 10)
    rc, out, err = cli("checkpoints", "--json")
    assert rc == 0 and err == ""
    rows = {r["name"]: r for r in json.loads(out)}
    assert len(rows) == 5 and rows["MedSAM2_latest"]["default"] is True
    assert rows["MedSAM2_latest"]["path"] is None
    assert rows["MedSAM2_CTLesion"]["path"] == str(tmp_path / "cache" / "MedSAM2_CTLesion.pt")
    assert rows["MedSAM2_CTLesion"]["size"] == 10


def test_checkpoints_progress_json_download(tmp_path, hf_server, monkeypatch):
    import time

    start = time.monotonic()
    rc, out, err = cli("checkpoints", "--download", "MedSAM2_latest", "--progress-json",
                       "--base-url", hf_server.base_url)
    elapsed = time.monotonic() - start
    assert rc == 0, err
    assert err == ""  # no progress bar, no "downloaded" line: the events say it all
    events = json_lines(out)
    assert events[0]["event"] == "licence" and "CC-BY-SA-4.0" in events[0]["text"]
    final = tmp_path / "cache" / "MedSAM2_latest.pt"
    assert events[-1] == {"event": "done", "path": str(final)}
    assert final.read_bytes() == hf_server.data
    progress = [e for e in events if e["event"] == "progress"]
    assert [e["done"] for e in progress] == sorted(e["done"] for e in progress)
    assert progress[-1] == {"event": "progress", "done": 3_000_000, "total": 3_000_000}
    # 46 chunks of 64 KB arrive; at most ~5 lines a second reach stdout, plus the last
    assert len(progress) <= 2 + 5 * elapsed, (len(progress), elapsed)
    assert len(events) == len(progress) + 2

    # again, from the default host (looked up at call time): the licence was shown already
    monkeypatch.setattr("medsam_server.checkpoints.HF_BASE_URL", hf_server.base_url)
    rc, out, err = cli("checkpoints", "--download", "MedSAM2_latest", "--progress-json")
    assert rc == 0, err
    assert [e["event"] for e in json_lines(out)][-1] == "done"
    assert "licence" not in {e["event"] for e in json_lines(out)}


def test_checkpoints_progress_json_failure_is_a_user_error(tmp_path, hf_server):
    rc, out, err = cli("checkpoints", "--download", "MedSAM2_2411", "--progress-json",
                       "--base-url", hf_server.base_url)  # this server has only _latest
    assert rc == 2
    assert err.startswith(ERROR_PREFIX) and "HTTP 404" in err and len(err.splitlines()) == 1
    assert "done" not in {e["event"] for e in json_lines(out)}
    assert not (tmp_path / "cache" / "MedSAM2_2411.pt").exists()


@pytest.mark.parametrize("argv,needle", [
    (["--progress-json"], "--download"),
    (["--json", "--progress-json", "--download", "MedSAM2_latest"], "not both"),
])
def test_checkpoints_progress_json_misuse(argv, needle):
    rc, out, err = cli("checkpoints", *argv)
    assert rc == 2 and out == ""
    assert err.startswith(ERROR_PREFIX) and needle in err and len(err.splitlines()) == 1


def test_the_program_exits_at_once_with_its_output_whole(random_checkpoint, mr_crop, tmp_path):
    """As a program, a finished segment skips the interpreter's teardown (os._exit): the
    file is complete, the last message is flushed and the exit status is the command's."""
    import subprocess
    import sys

    out = tmp_path / "mr.nii.gz"
    done = subprocess.run([sys.executable, "-m", "medsam_server.cli", "segment", str(mr_crop),
                           "-o", str(out), "--checkpoint", str(random_checkpoint), "--device",
                           "cpu", "--modality", "mr", "--slice", "4", "--box", "30", "30",
                           "80", "70"], capture_output=True, text=True, timeout=600)
    assert done.returncode == 0, done.stderr
    assert f"wrote {out}" in done.stderr  # flushed before the exit
    assert read_volume(out).array.shape == (8, 91, 117)
    bad = subprocess.run([sys.executable, "-m", "medsam_server.cli", "segment", str(mr_crop),
                          "-o", str(tmp_path / "x.nii.gz"), "--slice", "99", "--box", "1", "1",
                          "5", "5"], capture_output=True, text=True, timeout=120)
    assert bad.returncode == 2 and "medsam-server: error:" in bad.stderr
