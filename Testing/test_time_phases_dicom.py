"""3D + time from DICOM (``segment --time --phase`` on a folder): phase series written here
from the real CT DICOM series (three slices, a 128 x 128 crop) with a known synthetic motion
per phase (a shift along i), in both layouts: a series per phase (subfolders), and one series
with several temporal positions. The reader must find the phases' order from their tags, not
from file or folder names, give the voxels the motion says, and refuse what it cannot read
unambiguously: exit 2, one line, nothing written."""

from __future__ import annotations

import copy
from pathlib import Path

import numpy as np
import pydicom
import pytest
import SimpleITK as sitk
from conftest import ERROR_PREFIX, cli, shared
from medsam_server.cli.phases import image_dimension
from medsam_server.io.dicom_phases import read_dicom_phases
from medsam_server.io.volumes import VolumeError, read_volume
from pydicom.uid import generate_uid

SLICES = slice(8, 11)  # three of the series' 20 slices (by position), through the liver
ROWS, COLS = slice(200, 328), slice(150, 278)  # a 128 x 128 crop: small files, fast reads
SHIFTS = (-3, 0, 3)  # phase p is the CT moved by SHIFTS[p] voxels along i
KEY_PHASE, KEY_SLICE, BOX = 1, 1, (30, 30, 100, 100)


@pytest.fixture(scope="module")
def source() -> list[tuple[pydicom.Dataset, np.ndarray]]:
    """The chosen slices, cropped: (header with its crop's position, stored values)."""
    files = sorted(shared("totalseg_ct_dicom_2mm/dicom").iterdir())
    datasets = sorted((pydicom.dcmread(f) for f in files),
                      key=lambda ds: float(ds.ImagePositionPatient[2]))[SLICES]
    out = []
    for ds in datasets:
        # the premise of the crop's arithmetic: axial slices, rows along y, columns along x
        assert [float(v) for v in ds.ImageOrientationPatient] == [1, 0, 0, 0, 1, 0]
        raw = ds.pixel_array[ROWS, COLS].copy()
        x, y, z = (float(v) for v in ds.ImagePositionPatient)
        ds.ImagePositionPatient = [x + COLS.start * float(ds.PixelSpacing[1]),
                                   y + ROWS.start * float(ds.PixelSpacing[0]), z]
        out.append((ds, raw))
    return out


def expected(source, shift: int) -> np.ndarray:
    """The phase the motion makes, in Hounsfield units, (k, j, i)."""
    hu = [raw.astype(np.int32) * int(ds.RescaleSlope) + int(ds.RescaleIntercept)
          for ds, raw in source]
    return np.roll(np.stack(hu), shift, axis=2)


def write_phase(folder: Path, source, shift: int, series_uid: str, tags: dict,
                prefix: str = "", drop: int | None = None, move_z: dict | None = None) -> None:
    """One phase's instances: the source moved by ``shift``, with ``tags`` set."""
    folder.mkdir(parents=True, exist_ok=True)
    for n, (ds0, raw) in enumerate(source):
        if n == drop:
            continue
        ds = copy.deepcopy(ds0)
        ds.set_pixel_data(np.roll(raw, shift, axis=1), "MONOCHROME2", int(ds.BitsStored))
        ds.SeriesInstanceUID = series_uid
        ds.SOPInstanceUID = ds.file_meta.MediaStorageSOPInstanceUID = generate_uid()
        for tag in ("TriggerTime", "TemporalPositionIdentifier", "NumberOfTemporalPositions"):
            if tag in ds:
                delattr(ds, tag)
        for tag, value in tags.items():
            setattr(ds, tag, value)
        if move_z and n in move_z:
            x, y, z = ds.ImagePositionPatient
            ds.ImagePositionPatient = [x, y, float(z) + move_z[n]]
        ds.save_as(folder / f"{prefix}{n:02d}.dcm", enforce_file_format=True)


def series_per_phase(root: Path, source, changes: dict | None = None) -> Path:
    """One subfolder per phase. Folder names and SeriesNumber run against the phase order
    (percentages in SeriesDescription are what orders them): reading either would be wrong."""
    for p, shift in enumerate(SHIFTS):
        change = dict((changes or {}).get(p, {}))
        tags = {"SeriesDescription": f"Thorax 4D, Gated, {10.0 * p:.1f}%",
                "SeriesNumber": 9 - p, **change.pop("tags", {})}
        write_phase(root / "abc"[2 - p], source, shift, generate_uid(), tags, **change)
    return root


def one_series(root: Path, source, tag: str) -> Path:
    """One series, every phase's instances in one folder, told apart by ``tag`` only;
    written last phase first, so file order is not phase order."""
    uid = generate_uid()
    for p in reversed(range(len(SHIFTS))):
        value = p + 1 if tag == "TemporalPositionIdentifier" else 100.0 * p + 40.0
        tags = {tag: value, "SeriesDescription": "Cardiac"}
        if tag == "TemporalPositionIdentifier":
            tags["NumberOfTemporalPositions"] = len(SHIFTS)
        write_phase(root, source, SHIFTS[p], uid, tags, prefix=f"x{2 - p}_")
    return root


@pytest.mark.parametrize("layout", ["series per phase", "TemporalPositionIdentifier",
                                    "TriggerTime"])
def test_reader_orders_phases_by_their_tags_with_the_motion_voxels(layout, source, tmp_path):
    if layout == "series per phase":
        folder = series_per_phase(tmp_path, source)
        names = [f"'Thorax 4D, Gated, {10.0 * p:.1f}%'" for p in range(3)]
    else:
        folder = one_series(tmp_path, source, layout)
        names = ([f"temporal position {p + 1}" for p in range(3)]
                 if layout == "TemporalPositionIdentifier"
                 else [f"trigger time {100 * p + 40} ms" for p in range(3)])
    phases = read_dicom_phases(folder)
    assert phases.count == 3 and phases.array.shape == (3, 3, 128, 128)
    assert len(phases.names) == 3, phases.names
    assert all(name.endswith(n) for name, n in zip(phases.names, names, strict=True)), phases.names
    for p, shift in enumerate(SHIFTS):
        np.testing.assert_array_equal(phases.array[p], expected(source, shift))
    # the grid is what the 3D reader makes of one phase's series alone
    if layout == "series per phase":
        alone = read_volume(folder / "b")  # phase 0
        assert alone.array.shape == phases.grid.array.shape
        np.testing.assert_allclose(phases.grid.spacing, alone.spacing, atol=1e-9)
        np.testing.assert_allclose(phases.grid.origin, alone.origin, atol=1e-9)
        np.testing.assert_allclose(phases.grid.direction, alone.direction, atol=1e-9)
    ds0 = source[0][0]
    assert phases.grid.origin == pytest.approx(tuple(float(v) for v in ds0.ImagePositionPatient))
    assert phases.grid.spacing == pytest.approx((float(ds0.PixelSpacing[1]),
                                                 float(ds0.PixelSpacing[0]), 2.0))


def test_trigger_time_orders_series_before_their_description(source, tmp_path):
    # cardiac CT phases: TriggerTime states the order, the descriptions' % would reverse it
    folder = series_per_phase(tmp_path, source, {
        p: {"tags": {"TriggerTime": 100.0 * p, "SeriesDescription": f"Cardiac {90 - 10 * p}%"}}
        for p in range(3)})
    phases = read_dicom_phases(folder)
    assert [name.split("'")[1] for name in phases.names] == ["Cardiac 90%", "Cardiac 80%",
                                                             "Cardiac 70%"]
    for p, shift in enumerate(SHIFTS):
        np.testing.assert_array_equal(phases.array[p], expected(source, shift))


def test_series_per_phase_mixed_with_temporal_positions_is_refused(source, tmp_path):
    series_per_phase(tmp_path / "phases", source)
    one_series(tmp_path / "dynamic", source, "TemporalPositionIdentifier")
    with pytest.raises(VolumeError, match="temporal positions of its own: give one layout"):
        read_dicom_phases(tmp_path)


def segment(input_path: Path, out: Path, checkpoint: Path) -> tuple[int, str, str]:
    return cli("segment", input_path, "--time", "--phase", KEY_PHASE, "--slice", KEY_SLICE,
               "--box", *BOX, "--checkpoint", checkpoint, "--precision", "fp32",
               "--device", "cpu", "-o", out)


def test_cli_on_dicom_phases_equals_cli_on_the_same_4d_nifti(source, random_checkpoint,
                                                               tmp_path):
    folder = series_per_phase(tmp_path / "dicom", source)
    # the equivalent 4D NIfTI, built from the motion and the 3D reader's grid of one series
    alone = read_volume(folder / "b")
    volumes = []
    for shift in SHIFTS:
        image = sitk.GetImageFromArray(expected(source, shift).astype(np.int16))
        image.SetSpacing(alone.spacing)
        image.SetOrigin(alone.origin)
        image.SetDirection(alone.direction)
        volumes.append(image)
    nifti = tmp_path / "ct4d.nii.gz"
    sitk.WriteImage(sitk.JoinSeries(volumes), str(nifti))

    rc, _, err = segment(folder, tmp_path / "from_dicom.nii.gz", random_checkpoint)
    assert rc == 0, err
    assert "3 phases of (128, 128, 3)" in err and "phase 2: series" in err
    rc, _, err = segment(nifti, tmp_path / "from_nifti.nii.gz", random_checkpoint)
    assert rc == 0, err
    a = sitk.ReadImage(str(tmp_path / "from_dicom.nii.gz"))
    b = sitk.ReadImage(str(tmp_path / "from_nifti.nii.gz"))
    labels = sitk.GetArrayFromImage(a)
    assert labels.shape == (3, 3, 128, 128) and all(labels[p].any() for p in range(3))
    np.testing.assert_array_equal(labels, sitk.GetArrayFromImage(b))
    assert a.GetSize() == b.GetSize() and a.GetDimension() == 4
    np.testing.assert_allclose(a.GetSpacing(), b.GetSpacing(), atol=1e-6)
    np.testing.assert_allclose(a.GetOrigin(), b.GetOrigin(), atol=1e-6)
    np.testing.assert_allclose(a.GetDirection(), b.GetDirection(), atol=1e-9)


def refused(folder: Path, tmp_path: Path, *extra: object) -> str:
    """Run segment --time on ``folder``; it must exit 2 with one line and write nothing."""
    out = tmp_path / "out" / "labels.nii.gz"
    out.parent.mkdir()
    rc, stdout, err = cli("segment", folder, "--time", *extra, "--slice", KEY_SLICE,
                          "--box", *BOX, "-o", out)
    lines = err.strip().splitlines()
    assert rc == 2 and stdout == "" and len(lines) == 1 and lines[0].startswith(ERROR_PREFIX)
    assert not any(out.parent.iterdir())
    return lines[0]


@pytest.mark.parametrize("change, message", [
    ({2: {"drop": 2}}, "phase 2 (series "),  # a phase one slice short
    ({1: {"move_z": {0: 2.0, 1: 2.0, 2: 2.0}}}, "phase 1 (series "),  # a phase 2 mm higher
])
def test_phases_on_different_grids_are_refused_by_name(change, message, source, tmp_path):
    folder = series_per_phase(tmp_path / "dicom", source, change)
    line = refused(folder, tmp_path, "--phase", 1)
    assert "not on one grid" in line and message in line
    assert ("has 2 slices, phase 0 has 3" if 2 in change else "starts at") in line
    assert line.count("phase 0") == 1  # only the phase that differs is named


def test_unevenly_spaced_slices_in_a_phase_are_refused(source, tmp_path, capfd):
    folder = series_per_phase(tmp_path / "dicom", source, {1: {"move_z": {1: 1.0}}})
    line = refused(folder, tmp_path, "--phase", 1)
    assert "phase 1 (series " in line and "unevenly spaced" in line
    assert "Non uniform sampling" not in capfd.readouterr().err  # ITK's own warning: silenced


def test_ambiguous_order_is_refused(source, tmp_path):
    # two series claim the same phase percentage; SeriesNumber must not decide around it
    folder = series_per_phase(tmp_path / "dicom", source,
                              {2: {"tags": {"SeriesDescription": "Thorax 4D, Gated, 10.0%"}}})
    line = refused(folder, tmp_path, "--phase", 1)
    assert "cannot order the phases" in line and "both have SeriesDescription % 10" in line


def test_a_series_without_its_percentage_is_refused(source, tmp_path):
    # e.g. a MIP series exported next to the phases: same grid, but not a phase
    folder = series_per_phase(tmp_path / "dicom", source,
                              {0: {"tags": {"SeriesDescription": "Thorax 4D, MIP"}}})
    line = refused(folder, tmp_path, "--phase", 1)
    assert "'Thorax 4D, MIP' has no single SeriesDescription %" in line


def test_one_series_without_temporal_positions_is_refused_with_phase(source, tmp_path):
    folder = tmp_path / "ct"
    write_phase(folder, source, 0, generate_uid(), {})
    line = refused(folder, tmp_path, "--phase", 0)
    assert "one DICOM series with no temporal positions" in line
    # without --phase such a folder stays 2D + time (its slices are the frames), as before
    assert image_dimension(str(folder)) is None
    assert image_dimension(str(series_per_phase(tmp_path / "phases", source))) == 4


def test_dicom_phases_without_phase_ask_for_it(source, tmp_path):
    folder = one_series(tmp_path / "dicom", source, "TemporalPositionIdentifier")
    line = refused(folder, tmp_path)
    assert "name the key phase with --phase P" in line
