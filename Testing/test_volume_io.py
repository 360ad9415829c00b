"""Tests for medsam_server.io.volumes on the real volumes in shared/data and on synthetic edge cases."""

from __future__ import annotations

import logging
from pathlib import Path

import nrrd
import numpy as np
import pytest
import SimpleITK as sitk
from medsam_server.io import volumes as volume_io
from medsam_server.io.volumes import Volume, VolumeError, read_volume, write_mask

DATA = Path(__file__).resolve().parents[1].parent / "shared" / "data"
CT_NII = DATA / "totalseg_ct_abdomen_3mm" / "example_ct_sm.nii.gz"
MR_NRRD = DATA / "pyradiomics_mr" / "brain1_image.nrrd"
MR_LABEL = DATA / "pyradiomics_mr" / "brain1_label.nrrd"
DICOM_DIR = DATA / "totalseg_ct_dicom_2mm" / "dicom"

IDENTITY = (1.0, 0.0, 0.0, 0.0, 1.0, 0.0, 0.0, 0.0, 1.0)


def need(path: Path) -> Path:
    if not path.exists():
        pytest.skip(f"test data {path} is missing (expected shared/data next to the repository)")
    return path


@pytest.fixture(scope="module")
def dicom_volume() -> Volume:
    return read_volume(need(DICOM_DIR))


@pytest.fixture(scope="module")
def brain_volume() -> Volume:
    return read_volume(need(MR_NRRD))


def assert_grid(image: sitk.Image, vol: Volume, atol: float) -> None:
    assert image.GetDimension() == 3
    assert image.GetSize() == vol.size
    np.testing.assert_allclose(image.GetSpacing(), vol.spacing, rtol=0, atol=atol)
    np.testing.assert_allclose(image.GetOrigin(), vol.origin, rtol=0, atol=atol)
    np.testing.assert_allclose(image.GetDirection(), vol.direction, rtol=0, atol=1e-6)


# ---------------------------------------------------------------- reading real data


def test_read_nifti_ct_matches_sources_md():
    vol = read_volume(need(CT_NII))
    assert vol.array.shape == (30, 101, 122)  # (k, j, i)
    assert vol.size == (122, 101, 30)
    assert vol.array.dtype == np.int16
    assert (vol.array.min(), vol.array.max()) == (-1100, 1207)
    np.testing.assert_allclose(vol.spacing, (3.0, 3.0, 3.0), atol=1e-6)
    np.testing.assert_allclose(vol.origin, (177.96, -11.32, 94.3), atol=0.01)
    np.testing.assert_allclose(vol.direction, (-1, 0, 0, 0, -1, 0, 0, 0, 1), atol=1e-6)
    assert vol.source == str(CT_NII)


def test_read_nrrd_mr_matches_sources_md(brain_volume):
    vol = brain_volume
    assert vol.array.shape == (25, 256, 256)
    assert vol.array.dtype == np.int16
    assert (vol.array.min(), vol.array.max()) == (0, 3057)
    np.testing.assert_allclose(vol.spacing, (0.78125, 0.78125, 6.5), atol=1e-9)
    np.testing.assert_allclose(vol.origin, (-99.609375, 99.609375, -78.0), atol=1e-9)
    assert vol.direction == (1.0, 0.0, 0.0, 0.0, -1.0, 0.0, 0.0, 0.0, 1.0)


def test_read_dicom_series_folder_matches_sources_md(dicom_volume):
    vol = dicom_volume
    assert vol.array.shape == (20, 512, 512)
    assert vol.array.dtype == np.int16
    assert (vol.array.min(), vol.array.max()) == (-1024, 1839)
    np.testing.assert_allclose(vol.spacing, (0.9765625, 0.9765625, 2.0), atol=1e-9)
    np.testing.assert_allclose(vol.origin, (-249.51171875, -437.51171875, -804.5), atol=1e-9)
    np.testing.assert_allclose(vol.direction, IDENTITY, atol=1e-9)


def test_mha_round_trip_keeps_voxels_and_oblique_geometry(tmp_path):
    rng = np.random.default_rng(0)
    arr = rng.normal(size=(4, 5, 6)).astype(np.float32)
    img = sitk.GetImageFromArray(arr)
    img.SetSpacing((0.5, 0.75, 2.5))
    img.SetOrigin((10.0, -20.0, 30.5))
    c, s = np.cos(0.3), np.sin(0.3)  # rotation about z: a non-axis-aligned direction
    img.SetDirection((c, -s, 0.0, s, c, 0.0, 0.0, 0.0, 1.0))
    path = tmp_path / "vol.mha"
    sitk.WriteImage(img, str(path))

    vol = read_volume(path)
    np.testing.assert_array_equal(vol.array, arr)
    assert vol.array.dtype == np.float32
    assert vol.spacing == img.GetSpacing()
    assert vol.origin == img.GetOrigin()
    np.testing.assert_allclose(vol.direction, img.GetDirection(), atol=1e-12)


def test_image_like_rebuilds_the_grid(brain_volume):
    img = brain_volume.image_like()
    assert_grid(img, brain_volume, atol=0)
    np.testing.assert_array_equal(sitk.GetArrayViewFromImage(img), brain_volume.array)
    with pytest.raises(VolumeError, match="shape"):
        brain_volume.image_like(np.zeros((2, 2, 2), np.uint8))


def test_4d_file_with_one_time_point_reads_as_3d(tmp_path):
    img = sitk.Image([4, 5, 6, 1], sitk.sitkInt16)
    img.SetSpacing((1.0, 2.0, 3.0, 1.0))
    path = tmp_path / "t1.nii.gz"
    sitk.WriteImage(img, str(path))
    vol = read_volume(path)
    assert vol.array.shape == (6, 5, 4)
    np.testing.assert_allclose(vol.spacing, (1.0, 2.0, 3.0))


def _write_dicom_series(folder: Path, uid: str, n: int, prefix: str) -> None:
    writer = sitk.ImageFileWriter()
    writer.KeepOriginalImageUIDOn()  # keep our SeriesInstanceUID instead of a fresh one
    for z in range(n):
        sl = sitk.GetImageFromArray(np.full((8, 6), z, np.int16))
        sl.SetMetaData("0008|0060", "CT")
        sl.SetMetaData("0020|000d", "1.2.826.0.1.3680043.2.1125.1")
        sl.SetMetaData("0020|000e", uid)
        sl.SetMetaData("0020|0013", str(z + 1))
        sl.SetMetaData("0020|0032", f"0\\0\\{2.0 * z}")
        sl.SetMetaData("0020|0037", "1\\0\\0\\0\\1\\0")
        writer.SetFileName(str(folder / f"{prefix}{z:03d}.dcm"))
        writer.Execute(sl)


def test_dicom_folder_with_two_series_reads_the_largest_and_logs_it(tmp_path, caplog):
    _write_dicom_series(tmp_path, "1.2.826.0.1.3680043.2.1125.11", 3, "small")
    _write_dicom_series(tmp_path, "1.2.826.0.1.3680043.2.1125.12", 5, "large")
    with caplog.at_level(logging.WARNING, logger=volume_io.__name__):
        vol = read_volume(tmp_path)
    assert vol.array.shape == (5, 8, 6)
    np.testing.assert_array_equal(vol.array[:, 0, 0], np.arange(5))  # slices in order
    assert vol.spacing[2] == pytest.approx(2.0)
    assert "2 DICOM series" in caplog.text
    assert "1.2.826.0.1.3680043.2.1125.12 (5 files)" in caplog.text
    assert "1.2.826.0.1.3680043.2.1125.11 (3 files)" in caplog.text


# ---------------------------------------------------------------- bad inputs


def expect_error(path: Path, *fragments: str) -> str:
    with pytest.raises(VolumeError) as info:
        read_volume(path)
    msg = str(info.value)
    assert str(path) in msg, msg
    assert "\n" not in msg, msg
    for fragment in fragments:
        assert fragment in msg, msg
    return msg


def test_missing_file(tmp_path):
    expect_error(tmp_path / "nope.nii.gz", "no such file")


def test_text_file_named_nifti(tmp_path):
    path = tmp_path / "fake.nii.gz"
    path.write_text("this is not an image\n")
    expect_error(path, "cannot read")


def test_2d_image_is_rejected(tmp_path):
    path = tmp_path / "slice.nii.gz"
    sitk.WriteImage(sitk.Image(10, 12, sitk.sitkInt16), str(path))
    expect_error(path, "2D", "10x12")


def test_4d_image_is_rejected(tmp_path):
    path = tmp_path / "dyn.nii.gz"
    sitk.WriteImage(sitk.Image([4, 4, 4, 3], sitk.sitkInt16), str(path))
    expect_error(path, "4D", "4x4x4x3")


@pytest.mark.parametrize("suffix", [".nii.gz", ".nrrd"])
def test_vector_image_is_rejected(tmp_path, suffix):
    path = tmp_path / f"rgb{suffix}"
    sitk.WriteImage(sitk.Image([4, 4, 4], sitk.sitkVectorFloat32, 3), str(path))
    expect_error(path, "3 values per voxel")


# NIfTI goes through nibabel's own read (ITK's reader turns NaN into 0): test_nan_nifti.py.
@pytest.mark.parametrize("suffix", [".nrrd", ".mha"])
@pytest.mark.parametrize("bad", [np.nan, np.inf])
def test_non_finite_voxels_are_counted(tmp_path, bad, suffix):
    arr = np.zeros((3, 4, 5), np.float32)
    arr[0, 0, :3] = bad
    path = tmp_path / f"nan{suffix}"
    sitk.WriteImage(sitk.GetImageFromArray(arr), str(path))
    expect_error(path, "3 of 60 voxels are NaN or infinite")


def test_single_dicom_slice_asks_for_the_folder():
    first = sorted(need(DICOM_DIR).iterdir())[0]
    expect_error(first, "single DICOM slice", "folder")


def test_empty_folder(tmp_path):
    expect_error(tmp_path, "no files")


def test_folder_without_dicom(tmp_path):
    (tmp_path / "notes.txt").write_text("no images here\n")
    expect_error(tmp_path, "no DICOM series")


# ---------------------------------------------------------------- writing masks


def asymmetric_mask(shape: tuple[int, int, int]) -> np.ndarray:
    """Labels whose position differs under any axis flip, so a wrong grid cannot pass."""
    k, j, i = shape
    mask = np.zeros(shape, np.uint8)
    mask[1 : k // 2, j // 8 : j // 3, i // 10 : i // 4] = 1
    mask[k // 2 :, j // 2 : j - 3, i // 2 : i - 5] = 2
    mask[0, 0, 0] = 3
    return mask


SEGMENTS = [
    (1, "tumour", (1.0, 0.0, 0.0)),
    (2, "liver", (0.2, 0.4, 0.6)),
    (3, "marker", (0.0, 0.0, 1.0)),
]


@pytest.mark.parametrize("suffix", [".nii.gz", ".nii", ".nrrd", ".seg.nrrd"])
@pytest.mark.parametrize("which", ["dicom_volume", "brain_volume"])
def test_write_mask_keeps_the_input_grid(tmp_path, request, suffix, which):
    vol: Volume = request.getfixturevalue(which)
    mask = asymmetric_mask(vol.array.shape)
    path = write_mask(tmp_path / f"mask{suffix}", mask, vol, segments=SEGMENTS)
    assert path == tmp_path / f"mask{suffix}"
    assert sorted(p.name for p in tmp_path.iterdir()) == [path.name]  # no temp files left

    back = sitk.ReadImage(str(path))
    # NIfTI stores geometry as float32; NRRD keeps full double precision.
    assert_grid(back, vol, atol=1e-4 if ".nii" in suffix else 1e-9)
    assert back.GetPixelID() == sitk.sitkUInt8
    np.testing.assert_array_equal(sitk.GetArrayViewFromImage(back), mask)

    # Same grid seen through our own reader, so the mask overlays the volume voxel for voxel.
    again = read_volume(path)
    np.testing.assert_array_equal(again.array, mask)
    np.testing.assert_allclose(again.direction, vol.direction, atol=1e-6)


def test_seg_nrrd_header_names_and_colours_segments(tmp_path, brain_volume):
    vol = brain_volume
    mask = np.zeros(vol.array.shape, np.uint8)
    mask[11:18, 100:121, 50:61] = 1  # k 11..17, j 100..120, i 50..60
    mask[3, 7, 9] = 2
    segments = [
        (1, "enhancing lesion", (1.0, 0.5, 0.25)),
        (2, "dot", (0.0, 1.0, 0.0)),
        (5, "absent", (0.1, 0.2, 0.3)),
    ]
    path = write_mask(tmp_path / "brain.seg.nrrd", mask, vol, segments=segments)
    header = nrrd.read_header(str(path))

    assert header["space"] == "left-posterior-superior"
    assert list(header["kinds"]) == ["domain"] * 3
    assert list(header["sizes"]) == [256, 256, 25]  # i, j, k
    np.testing.assert_allclose(header["space directions"], np.diag([0.78125, -0.78125, 6.5]))
    np.testing.assert_allclose(header["space origin"], vol.origin)

    assert header["Segment0_ID"] == "Segment_1"
    assert header["Segment0_Name"] == "enhancing lesion"
    assert header["Segment0_Color"] == "1 0.5 0.25"
    assert header["Segment0_LabelValue"] == "1"
    assert header["Segment0_Layer"] == "0"
    assert header["Segment0_Extent"] == "50 60 100 120 11 17"
    assert header["Segment0_NameAutoGenerated"] == "0"
    assert header["Segment0_ColorAutoGenerated"] == "0"
    assert header["Segment0_Tags"] == "|"
    assert header["Segment1_Name"] == "dot"
    assert header["Segment1_LabelValue"] == "2"
    assert header["Segment1_Extent"] == "9 9 7 7 3 3"
    assert header["Segment2_Name"] == "absent"
    assert header["Segment2_Extent"] == "0 -1 0 -1 0 -1"
    assert "Segment3_Name" not in header
    assert header["Segmentation_MasterRepresentation"] == "Binary labelmap"
    assert header["Segmentation_ContainedRepresentationNames"] == "Binary labelmap|"
    assert header["Segmentation_ReferenceImageExtentOffset"] == "0 0 0"


def test_seg_nrrd_default_segment(tmp_path, brain_volume):
    mask = np.zeros(brain_volume.array.shape, bool)
    mask[12, 128, 128] = True
    path = write_mask(tmp_path / "default.seg.nrrd", mask, brain_volume)
    header = nrrd.read_header(str(path))
    assert header["Segment0_Name"] == "Segment_1"
    assert header["Segment0_LabelValue"] == "1"
    assert header["Segment0_Color"] == "0.5 0.68 0.5"
    assert "Segment1_Name" not in header


def test_real_label_map_round_trips_through_seg_nrrd(tmp_path, brain_volume):
    label = sitk.GetArrayFromImage(sitk.ReadImage(str(need(MR_LABEL))))
    assert int(label.sum()) == 4137
    path = write_mask(
        tmp_path / "lesion.seg.nrrd", label, brain_volume, segments=[(1, "lesion", (0.9, 0.1, 0.1))]
    )
    back = sitk.ReadImage(str(path))
    assert_grid(back, brain_volume, atol=1e-9)
    np.testing.assert_array_equal(sitk.GetArrayViewFromImage(back), label)
    assert nrrd.read_header(str(path))["Segment0_Extent"].split()[4:] == ["11", "17"]


def test_seg_nrrd_refuses_labels_without_a_segment(tmp_path, brain_volume):
    mask = np.zeros(brain_volume.array.shape, np.uint8)
    mask[0, 0, 0] = 4
    with pytest.raises(VolumeError, match=r"labels \[4\]"):
        write_mask(tmp_path / "x.seg.nrrd", mask, brain_volume)
    assert list(tmp_path.iterdir()) == []


def test_write_rejects_bad_requests(tmp_path, brain_volume):
    good = np.zeros(brain_volume.array.shape, np.uint8)
    cases = [
        (tmp_path / "mask.png", good, "unknown output type"),
        (tmp_path / "missing" / "mask.nii.gz", good, "does not exist"),
        (tmp_path / "mask.nii.gz", good[:-1], "shape"),
        (tmp_path / "mask.nii.gz", good.astype(np.float32), "integer labels"),
        (tmp_path / "mask.nii.gz", good.astype(np.int32) + 256, "0..255"),
    ]
    for path, mask, fragment in cases:
        with pytest.raises(VolumeError, match=fragment) as info:
            write_mask(path, mask, brain_volume)
        assert str(path) in str(info.value)
    assert list(tmp_path.iterdir()) == []


def test_failed_write_leaves_nothing_and_keeps_the_old_file(tmp_path, brain_volume, monkeypatch):
    mask = np.zeros(brain_volume.array.shape, np.uint8)
    out = write_mask(tmp_path / "mask.seg.nrrd", mask, brain_volume)
    before = out.read_bytes()

    def broken_write(filename, *args, **kwargs):
        Path(filename).write_bytes(b"partial")  # a writer dying half-way
        raise OSError("disk full")

    monkeypatch.setattr(volume_io.nrrd, "write", broken_write)
    mask[1, 2, 3] = 1
    with pytest.raises(VolumeError, match="disk full"):
        write_mask(out, mask, brain_volume)
    assert out.read_bytes() == before
    assert [p.name for p in tmp_path.iterdir()] == ["mask.seg.nrrd"]


def test_write_overwrites_an_existing_file(tmp_path, brain_volume):
    path = tmp_path / "mask.nrrd"
    first = np.zeros(brain_volume.array.shape, np.uint8)
    write_mask(path, first, brain_volume)
    second = first.copy()
    second[5, 6, 7] = 1
    write_mask(path, second, brain_volume)
    np.testing.assert_array_equal(sitk.GetArrayFromImage(sitk.ReadImage(str(path))), second)
