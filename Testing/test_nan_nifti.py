"""NaN in a float NIfTI: refused like in any other format, by every command, nothing written.

ITK's NIfTI reader turns NaN and ±inf into 0, so without a look at the file's own values
``segment`` would segment such a volume silently. The volumes are the real abdomen CT
(slices 12..17) stored as float32, with three voxels spoiled.
"""

from __future__ import annotations

from pathlib import Path

import numpy as np
import pytest
import SimpleITK as sitk
from conftest import cli, shared
from medsam_server.engine import engine as engine_module
from medsam_server.io.volumes import VolumeError, read_volume

CT = "totalseg_ct_abdomen_3mm/example_ct_sm.nii.gz"
N_VOXELS = 6 * 101 * 122


@pytest.fixture(scope="module")
def ct_float() -> sitk.Image:
    return sitk.Cast(sitk.ReadImage(str(shared(CT)))[:, :, 12:18], sitk.sitkFloat32)


def spoiled(ct_float: sitk.Image, folder: Path, name: str, bad: float) -> Path:
    arr = sitk.GetArrayFromImage(ct_float)
    arr[2, 40, 50:53] = bad
    image = sitk.GetImageFromArray(arr)
    image.CopyInformation(ct_float)
    path = folder / name
    sitk.WriteImage(image, str(path))
    return path


@pytest.fixture
def no_model(monkeypatch):
    def refuse(*args, **kwargs):  # noqa: ANN202
        raise AssertionError("the model was loaded for a volume holding NaN")

    monkeypatch.setattr(engine_module.Engine, "from_checkpoint", refuse)


def expected(path: Path) -> str:
    return (f"{path}: 3 of {N_VOXELS} voxels are NaN or infinite; replace them (e.g. with the "
            "background value) and try again")


@pytest.mark.parametrize("name,bad", [("nan.nii.gz", np.nan), ("nan.nii", np.nan),
                                      ("inf.nii.gz", np.inf), ("ninf.nii.gz", -np.inf),
                                      ("nan.nrrd", np.nan)])
def test_read_volume_refuses_non_finite_voxels_in_every_format(ct_float, tmp_path, name, bad):
    path = spoiled(ct_float, tmp_path, name, bad)
    with pytest.raises(VolumeError) as err:
        read_volume(path)
    assert str(err.value) == expected(path)  # the same message, NIfTI or not


def test_finite_float_nifti_reads_unchanged(ct_float, tmp_path):
    path = tmp_path / "ok.nii.gz"
    sitk.WriteImage(ct_float, str(path))
    np.testing.assert_array_equal(read_volume(path).array, sitk.GetArrayFromImage(ct_float))


@pytest.mark.parametrize("remote", [False, True])
def test_segment_refuses_and_writes_nothing(ct_float, tmp_path, random_checkpoint, no_model,
                                            remote):
    src = spoiled(ct_float, tmp_path, "nan.nii.gz", np.nan)
    out = tmp_path / "mask.seg.nrrd"
    # --server: the volume is checked here, before anything is sent (port 9: nobody there)
    where = ["--server", "http://127.0.0.1:9", "--token", "t" * 20] if remote else \
        ["--checkpoint", random_checkpoint]
    rc, so, se = cli("segment", src, "-o", out, "--slice", 2, "--box", 45, 27, 104, 85,
                     "--device", "cpu", *where)
    assert (rc, so, se) == (2, "", f"medsam-server: error: {expected(src)}\n")
    assert sorted(p.name for p in tmp_path.iterdir()) == ["nan.nii.gz"]


def test_evaluate_refuses_and_writes_nothing(ct_float, tmp_path):
    pred = spoiled(ct_float, tmp_path, "pred.nii.gz", np.nan)
    ref = tmp_path / "ref.nii.gz"
    sitk.WriteImage(sitk.Cast(ct_float > 0, sitk.sitkUInt8), str(ref))
    rc, so, se = cli("evaluate", pred, ref, "--csv", tmp_path / "m.csv")
    assert (rc, so, se) == (2, "", f"medsam-server: error: {expected(pred)}\n")
    assert not (tmp_path / "m.csv").exists()


def test_batch_records_the_case_and_writes_no_output(ct_float, tmp_path, random_checkpoint):
    src = spoiled(ct_float, tmp_path, "nan.nii.gz", np.nan)
    (tmp_path / "p.json").write_text('{"objects": [{"slice": 2, "box": [45, 27, 104, 85]}]}')
    (tmp_path / "m.csv").write_text("case,image,prompts\nspoiled,nan.nii.gz,p.json\n")
    out = tmp_path / "out"
    rc, so, se = cli("batch", tmp_path / "m.csv", "-o", out, "--checkpoint", random_checkpoint,
                     "--device", "cpu", "--quiet")
    assert rc == 1, se
    assert f"spoiled: failed: {expected(src)}" in se
    lines = (out / "results.csv").read_text().splitlines()
    assert lines[1].startswith("spoiled,failed,") and lines[1].endswith(expected(src))
    assert not list(out.glob("spoiled*"))
