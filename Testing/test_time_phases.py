"""3D + time (``segment --time --phase``): a 4D volume built from the real abdomen CT with a
known synthetic motion per phase (a shift along i). Geometry and phase bookkeeping, not
accuracy (the weights are random): the key phase is its 3D result exactly, every other
(phase, slice) image is encoded once, the labels land on the input's 4D grid and in a volume
sequence that Slicer's own reader loads, and bad input exits 2 with nothing written."""

from __future__ import annotations

import numpy as np
import pytest
import SimpleITK as sitk
from conftest import ERROR_PREFIX, cli, shared
from medsam_server.engine import (
    Engine,
    ObjectSpec,
    Prompt,
    Session,
    segment_objects,
    segment_phases,
    window_to_uint8,
)
from medsam_server.io.phases import read_phases, write_phase_labels

SLICES = slice(13, 16)  # three slices through the liver around its key slice 14
KEY_SLICE, BOX = 1, (45.0, 27.0, 104.0, 85.0)  # conftest's liver box, on the crop's slice 1
SHIFTS = (-3, 0, 3)  # phase p is the CT moved by SHIFTS[p] voxels along i
KEY_PHASE = 1


@pytest.fixture(scope="module")
def ct() -> sitk.Image:
    return sitk.ReadImage(str(shared("totalseg_ct_abdomen_3mm/example_ct_sm.nii.gz")))[
        :, :, SLICES]


@pytest.fixture(scope="module")
def four_d(ct, tmp_path_factory) -> str:
    array = sitk.GetArrayFromImage(ct)
    phases = []
    for shift in SHIFTS:
        moved = sitk.GetImageFromArray(np.roll(array, shift, axis=2))
        moved.CopyInformation(ct)
        phases.append(moved)
    path = tmp_path_factory.mktemp("phases") / "ct4d.nii.gz"
    sitk.WriteImage(sitk.JoinSeries(phases), str(path))
    return str(path)


@pytest.fixture(scope="module")
def engine(random_checkpoint) -> Engine:
    return Engine.from_checkpoint(random_checkpoint, "cpu", precision="fp32")


def spec() -> ObjectSpec:
    return ObjectSpec(1, "liver", "k", KEY_SLICE, Prompt(box=BOX), (1.0, 0.0, 0.0))


@pytest.fixture(scope="module")
def carried(engine, four_d):
    """The phases windowed as the CLI does, and segment_phases' labels and encoder calls."""
    array = sitk.GetArrayFromImage(sitk.ReadImage(four_d))
    assert array.shape == (3, 3, 101, 122)
    u8 = window_to_uint8(array.reshape(-1, 101, 122), "ct").reshape(array.shape)
    for p, shift in enumerate(SHIFTS):  # the premise: the known motion is in the file
        np.testing.assert_array_equal(np.roll(u8[KEY_PHASE], shift, axis=2), u8[p])
    before = engine.encoder_calls
    labels, _ = segment_phases(engine, u8, KEY_PHASE, [spec()])
    return u8, labels, engine.encoder_calls - before


def test_key_phase_is_its_3d_result_and_each_image_is_encoded_once(engine, carried):
    u8, labels, encoded = carried
    before = engine.encoder_calls
    alone, _ = segment_objects(Session(engine, u8[KEY_PHASE]), [spec()])
    key_encoded = engine.encoder_calls - before
    np.testing.assert_array_equal(labels[KEY_PHASE], alone)
    carried_slices = int(alone.any(axis=(1, 2)).sum())
    assert carried_slices >= 2
    # key phase once (its features seed the time passes), every other phase once a slice
    assert encoded == key_encoded + (len(SHIFTS) - 1) * carried_slices
    for p in range(len(SHIFTS)):  # nothing outside the key phase's slices; each phase has some
        assert not labels[p][~alone.any(axis=(1, 2))].any()
        assert labels[p].any()


def test_4d_labels_keep_the_input_4d_geometry(four_d, carried, tmp_path):
    _, labels, _ = carried
    phases = read_phases(four_d)
    write_phase_labels(tmp_path / "labels.nii.gz", labels, phases)
    written, source = sitk.ReadImage(str(tmp_path / "labels.nii.gz")), sitk.ReadImage(four_d)
    assert written.GetDimension() == 4 and written.GetNumberOfComponentsPerPixel() == 1
    assert written.GetSize() == source.GetSize() and written.GetOrigin() == source.GetOrigin()
    assert written.GetSpacing() == source.GetSpacing()
    assert written.GetDirection() == source.GetDirection()
    np.testing.assert_array_equal(sitk.GetArrayFromImage(written), labels)


def test_cli_writes_a_slicer_volume_sequence(four_d, carried, random_checkpoint, tmp_path):
    _, labels, _ = carried
    common = [four_d, "--time", "--phase", KEY_PHASE, "--slice", KEY_SLICE,
              "--box", *map(int, BOX), "--name", "liver", "--checkpoint", random_checkpoint,
              "--precision", "fp32", "--device", "cpu"]
    rc, _, err = cli("segment", *common, "-o", tmp_path / "labels.seq.nrrd")
    assert rc == 0, err
    assert "3 phases of (122, 101, 3)" in err and "liver: 3 phases" in err
    slicer = pytest.importorskip("slicer")
    from vtk.util import numpy_support

    scene = slicer.vtkMRMLScene()
    sequence = scene.AddNode(slicer.vtkMRMLSequenceNode())
    storage = scene.AddNode(slicer.vtkMRMLVolumeSequenceStorageNode())
    storage.SetFileName(str(tmp_path / "labels.seq.nrrd"))
    assert storage.ReadData(sequence) == 1
    assert sequence.GetNumberOfDataNodes() == len(SHIFTS)
    ct = sitk.ReadImage(str(shared("totalseg_ct_abdomen_3mm/example_ct_sm.nii.gz")))
    lps = np.array(ct.TransformIndexToPhysicalPoint((0, 0, SLICES.start)))
    for p in range(len(SHIFTS)):
        node = sequence.GetNthDataNode(p)
        assert sequence.GetNthIndexValue(p) == str(p)
        assert node.GetSpacing() == pytest.approx((3.0, 3.0, 3.0))
        assert node.GetOrigin() == pytest.approx(tuple(lps * (-1, -1, 1)), abs=1e-4)  # RAS
        image = node.GetImageData()
        assert image.GetDimensions() == (122, 101, 3)
        voxels = numpy_support.vtk_to_numpy(image.GetPointData().GetScalars())
        np.testing.assert_array_equal(voxels.reshape(3, 101, 122), labels[p])


@pytest.mark.parametrize("case, says", [
    ("no_phase", "--phase"),
    ("phase_out_of_range", "phase 7 is out of range"),
    ("phase_on_3d", "3D image"),
    ("phase_without_time", "--phase needs --time"),
    ("five_d", "5D"),
    ("slice_out_of_range", "slice 40"),
    ("seg_nrrd_output", ".seq.nrrd, .nii.gz"),
])
def test_bad_phases_exit_2_and_write_nothing(case, says, four_d, tmp_path):
    out = tmp_path / "out.seq.nrrd"
    args = [four_d, "--time", "--phase", 1, "--slice", KEY_SLICE, "--box", "45", "27", "104",
            "85", "--checkpoint", "never-read.pt"]
    if case == "no_phase":
        args[2:4] = []
    elif case == "phase_out_of_range":
        args[3] = 7
    elif case == "phase_on_3d":
        args[0] = shared("totalseg_ct_abdomen_3mm/example_ct_sm.nii.gz")
    elif case == "phase_without_time":
        args.remove("--time")
    elif case == "five_d":
        five = tmp_path / "five.nii.gz"
        sitk.WriteImage(sitk.Image([4, 4, 3, 2, 2], sitk.sitkUInt8), str(five))
        args[0] = five
    elif case == "slice_out_of_range":
        args[5] = 40
    elif case == "seg_nrrd_output":
        out = tmp_path / "out.seg.nrrd"
    rc, _, err = cli("segment", *args, "-o", out)
    lines = err.strip().splitlines()
    assert rc == 2 and len(lines) == 1 and lines[0].startswith(ERROR_PREFIX), err
    assert says in lines[0]
    assert not out.exists() and list(tmp_path.glob("*.seq.nrrd")) == []
