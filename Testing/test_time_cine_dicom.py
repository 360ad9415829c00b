"""``segment --time`` on a DICOM folder holding a cine as one series of single-frame instances at
one position (cine MR exported one instance per frame): frames ordered by their headers, not
by file name or ITK's position sort; the same labels as the equivalent 3D NRRD; ambiguous or
3D + time folders refused with one line and nothing written.

The series are written here from the real ``dicom_smoke/MR_small.dcm`` instance, each frame
its pixels shifted by a known amount, so a wrong frame order shows in the pixels."""

from __future__ import annotations

import numpy as np
import pytest
import SimpleITK as sitk
from conftest import ERROR_PREFIX, cli, shared
from medsam_server.io.frames import read_frames
from medsam_server.io.volumes import VolumeError

pydicom = pytest.importorskip("pydicom")
nrrd = pytest.importorskip("nrrd")

SHIFT = 7  # columns each later frame's pattern moves by
SLOPE, INTERCEPT = 2.0, -10.0  # a rescale the reader must apply, as ITK does for a series
SPACING = ("0.5", "0.25")  # Pixel Spacing (row, column): unequal, so a swap shows
# file im{n}.dcm: (trigger time, instance number); time order 1, 3, 0, 2, number order 2, 3, 0, 1
TRIGGERS = (60.0, 0.0, 90.0, 30.0)
NUMBERS = (3, 4, 1, 2)
BOX = ("20", "16", "44", "48")


def base() -> np.ndarray:
    return pydicom.dcmread(shared("dicom_smoke/MR_small.dcm")).pixel_array


def write_cine(folder, instances: list[dict]) -> None:
    """One series, an instance per dict: ``shift`` moves the pattern, ``position`` and the
    DICOM keywords given override MR_small's (None deletes the attribute)."""
    folder.mkdir(parents=True, exist_ok=True)
    series = pydicom.uid.generate_uid()
    pixels = base()
    for n, spec in enumerate(instances):
        ds = pydicom.dcmread(shared("dicom_smoke/MR_small.dcm"))
        ds.SeriesInstanceUID = series
        ds.SOPInstanceUID = ds.file_meta.MediaStorageSOPInstanceUID = pydicom.uid.generate_uid()
        ds.PixelSpacing = list(SPACING)
        ds.RescaleSlope, ds.RescaleIntercept = str(SLOPE), str(INTERCEPT)
        ds.PixelData = np.roll(pixels, SHIFT * spec.get("shift", 0), axis=1).tobytes()
        for keyword, value in spec.items():
            if keyword == "shift":
                continue
            if value is None:
                if keyword in ds:
                    delattr(ds, keyword)
            else:
                setattr(ds, keyword, value)
        ds.save_as(folder / f"im{n}.dcm")


def expected_frames(count: int) -> np.ndarray:
    """Frame t in time order: the pattern shifted by SHIFT * t, rescaled."""
    return np.stack([np.roll(base(), SHIFT * t, axis=1) * SLOPE + INTERCEPT
                     for t in range(count)])


@pytest.fixture(scope="module")
def cine(tmp_path_factory):
    """Four frames; file names and instance numbers both in another order than time."""
    folder = tmp_path_factory.mktemp("cine") / "series"
    ranks = np.argsort(np.argsort(TRIGGERS))  # each file's place in time
    write_cine(folder, [{"TriggerTime": t, "InstanceNumber": n, "shift": int(r)}
                        for t, n, r in zip(TRIGGERS, NUMBERS, ranks, strict=True)])
    return folder


def test_frames_in_trigger_time_order_with_spacing_rescale_and_timing(cine):
    # the premise: neither file names nor instance numbers give the time order
    ranks = list(np.argsort(np.argsort(TRIGGERS)))
    assert ranks != sorted(ranks) and list(np.argsort(NUMBERS)) != list(np.argsort(TRIGGERS))
    frames = read_frames(cine)
    assert frames.kind == "dicom" and frames.count == 4 and not frames.colour
    np.testing.assert_array_equal(frames.pixels, expected_frames(4))
    assert frames.spacing_mm == (0.25, 0.5)  # (column, row) from Pixel Spacing (row, column)
    assert frames.frame_time_ms == pytest.approx(30.0) and frames.timing == "TriggerTime steps"
    assert "30 ms a frame (33.3 fps) from TriggerTime steps" in frames.describe()
    # labels go on the frames' grid as for a multi-frame file
    assert frames.grid.spacing == (0.25, 0.5, 1.0) and frames.grid.origin == (0.0, 0.0, 0.0)
    assert frames.grid.array.shape == (4, 64, 64)


def test_temporal_position_then_instance_number_order_the_frames(tmp_path):
    # no trigger times: Temporal Position Identifier, the time from the R-R interval
    write_cine(tmp_path / "tpi", [
        {"TriggerTime": None, "TemporalPositionIdentifier": tpi, "InstanceNumber": n,
         "NominalInterval": 800, "CardiacNumberOfImages": 4, "shift": tpi - 1}
        for tpi, n in ((3, 1), (1, 2), (4, 3), (2, 4))])
    frames = read_frames(tmp_path / "tpi")
    np.testing.assert_array_equal(frames.pixels, expected_frames(4))
    assert frames.frame_time_ms == pytest.approx(200.0)
    assert frames.timing == "NominalInterval / CardiacNumberOfImages"
    # one trigger time for all says nothing: Instance Number orders, Frame Time times
    write_cine(tmp_path / "numbers", [
        {"TriggerTime": 0, "InstanceNumber": n, "FrameTime": 25, "shift": n - 1}
        for n in (2, 3, 1)])
    frames = read_frames(tmp_path / "numbers")
    np.testing.assert_array_equal(frames.pixels, expected_frames(3))
    assert frames.frame_time_ms == 25.0 and frames.timing == "FrameTime"


def test_uneven_trigger_times_report_their_mean_step(tmp_path):
    write_cine(tmp_path / "c", [{"TriggerTime": t, "shift": i}
                                for i, t in enumerate((0.0, 20.0, 80.0))])
    frames = read_frames(tmp_path / "c")
    assert frames.frame_time_ms == pytest.approx(40.0)
    assert frames.timing == "TriggerTime steps (uneven; their mean)"


def test_segment_time_on_the_folder_equals_the_equivalent_nrrd(cine, random_checkpoint,
                                                               tmp_path):
    volume = sitk.GetImageFromArray(expected_frames(4).astype(np.int16))
    volume.SetSpacing((0.25, 0.5, 1.0))
    sitk.WriteImage(volume, str(tmp_path / "frames.nrrd"))
    common = ["--time", "--frame", 1, "--box", *BOX, "--modality", "mr", "--checkpoint",
              random_checkpoint, "--precision", "fp32", "--device", "cpu"]
    rc, _, err = cli("segment", cine, *common, "-o", tmp_path / "cine.seq.nrrd")
    assert rc == 0, err
    assert "4 grey frames of 64x64, 0.25 x 0.5 mm pixels, 30 ms a frame" in err
    rc, _, err = cli("segment", tmp_path / "frames.nrrd", *common, "-o", tmp_path / "ref.nrrd")
    assert rc == 0, err
    reference = sitk.GetArrayFromImage(sitk.ReadImage(str(tmp_path / "ref.nrrd")))
    # the premise: something is segmented, and not the same on every frame (order matters)
    assert reference.any() and any((reference[t] != reference[0]).any() for t in range(1, 4))
    data, header = nrrd.read(str(tmp_path / "cine.seq.nrrd"), index_order="F")
    items = data.transpose(0, 3, 2, 1)[:, 0]  # (frame, i, j, 1) → (frame, rows, columns)
    np.testing.assert_array_equal(items, reference)
    assert header["axis 0 index values"].split() == ["0", "30", "60", "90"]
    assert np.allclose(np.abs(header["space directions"][1:]).max(axis=1), (0.25, 0.5, 1.0))
    # a label volume from the folder lies on the same grid as the NRRD's
    rc, _, err = cli("segment", cine, *common, "--quiet", "-o", tmp_path / "cine.nrrd")
    assert rc == 0, err
    written = sitk.ReadImage(str(tmp_path / "cine.nrrd"))
    assert written.GetSpacing() == (0.25, 0.5, 1.0)
    np.testing.assert_array_equal(sitk.GetArrayFromImage(written), reference)


def multi_slice(folder) -> None:
    """Two slice positions, each at three trigger times: 3D + time."""
    write_cine(folder, [{"TriggerTime": t, "ImagePositionPatient": [0, 0, z], "shift": i}
                        for i, t in enumerate((0, 30, 60)) for z in (0, 5)])


def test_read_frames_refuses_a_multi_slice_cine(tmp_path):
    multi_slice(tmp_path / "c")
    with pytest.raises(VolumeError, match="3D \\+ time.*--phase P"):
        read_frames(tmp_path / "c")


@pytest.mark.parametrize("case, says", [
    ("trigger_tie", "im1.dcm and im2.dcm both have TriggerTime 30"),
    ("trigger_tie_with_numbers", "im1.dcm and im2.dcm both have TriggerTime 30"),
    ("missing_trigger", "im2.dcm has no TriggerTime, other instances do"),
    ("no_key", "none of TriggerTime, TemporalPositionIdentifier, InstanceNumber"),
    ("mixed_orientation", "2 orientations (ImageOrientationPatient)"),
    ("mixed_spacing", "the frames differ in PixelSpacing"),
    ("multi_slice_without_phase", "name the key phase with --phase P"),
    ("one_position_with_phase", "2D + time: give the key frame with --frame F, without --phase"),
])
def test_bad_folders_exit_2_with_one_line_and_write_nothing(case, says, tmp_path):
    folder = tmp_path / "series"
    triggers = [0.0, 30.0, 60.0, 90.0]
    specs = [{"TriggerTime": t, "InstanceNumber": None, "shift": i}
             for i, t in enumerate(triggers)]
    args = ["--time", "--frame", 1]
    if case.startswith("trigger_tie"):
        specs[2]["TriggerTime"] = 30.0
        if case.endswith("numbers"):  # instance numbers would interleave two images a time
            for n, spec in enumerate(specs):
                spec["InstanceNumber"] = n + 1
    elif case == "missing_trigger":
        specs[2]["TriggerTime"] = None
    elif case == "no_key":
        for spec in specs:
            spec["TriggerTime"] = None
    elif case == "mixed_orientation":
        specs[3]["ImageOrientationPatient"] = [0, 1, 0, 0, 0, -1]
    elif case == "mixed_spacing":
        specs[3]["PixelSpacing"] = ["0.5", "0.5"]
    elif case == "one_position_with_phase":
        args = ["--time", "--phase", 1, "--slice", 0]
    if case == "multi_slice_without_phase":
        multi_slice(folder)
    else:
        write_cine(folder, specs)
    out = tmp_path / "out.seq.nrrd"
    rc, _, err = cli("segment", folder, *args, "--box", *BOX, "--checkpoint", "never-read.pt",
                     "-o", out)
    lines = err.strip().splitlines()
    assert rc == 2 and len(lines) == 1 and lines[0].startswith(ERROR_PREFIX), err
    assert says in lines[0], lines[0]
    assert not out.exists() and sorted(p.name for p in tmp_path.iterdir()) == ["series"]
