"""``medsam-server segment --time``: frames of real echo data (a video made from the clip, the
luma NRRD, the multi-frame US DICOM), outputs on the frames' grid, a label sequence that
Slicer's own volume-sequence reader loads, and bad input refused with nothing written."""

from __future__ import annotations

import numpy as np
import pytest
import SimpleITK as sitk
from conftest import ERROR_PREFIX, cli, shared
from medsam_server.engine import Engine, Prompt, Session
from medsam_server.io.frames import read_frames
from medsam_server.io.volumes import VolumeError

BOX = ("225", "95", "325", "225")  # SOURCES.md's approximate LV box on the cropped frames
FRAMES = 5


@pytest.fixture(scope="module")
def clip_rgb() -> np.ndarray:
    pydicom = pytest.importorskip("pydicom")
    ds = pydicom.dcmread(shared("echo_a4c/echo_a4c_us_multiframe.dcm"))
    return np.ascontiguousarray(ds.pixel_array[:FRAMES, 31:415, 84:596])


@pytest.fixture(scope="module")
def video(clip_rgb, tmp_path_factory) -> str:
    """An MP4 made from the real clip's first frames (MPEG-4 part 2, PyAV's own encoder)."""
    av = pytest.importorskip("av")
    path = tmp_path_factory.mktemp("video") / "echo.mp4"
    with av.open(str(path), "w") as container:
        stream = container.add_stream("mpeg4", rate=25)
        stream.width, stream.height, stream.pix_fmt = 512, 384, "yuv420p"
        for frame in clip_rgb:
            container.mux(stream.encode(av.VideoFrame.from_ndarray(frame, format="rgb24")))
        container.mux(stream.encode())
    return str(path)


@pytest.fixture(scope="module")
def cine(tmp_path_factory) -> str:
    img = sitk.ReadImage(str(shared("echo_a4c/echo_a4c_cine.nrrd")))
    path = tmp_path_factory.mktemp("cine") / "cine.nrrd"
    sitk.WriteImage(img[:, :, :FRAMES], str(path))
    return str(path)


@pytest.fixture(scope="module")
def engine(random_checkpoint) -> Engine:
    return Engine.from_checkpoint(random_checkpoint, "cpu", precision="fp32")


def in_process(engine: Engine, pixels: np.ndarray, direction: str) -> np.ndarray:
    session = Session(engine, pixels)
    session.add_prompt(1, "k", 1, Prompt(box=tuple(map(float, BOX))))
    session.propagate(1, "k", direction=direction)
    return session.mask(1).astype(np.uint8)


def load_sequence(path) -> list[np.ndarray]:  # noqa: ANN001
    """The file through Slicer's vtkMRMLVolumeSequenceStorageNode (slicer-core)."""
    slicer = pytest.importorskip("slicer")
    from vtk.util import numpy_support

    scene = slicer.vtkMRMLScene()
    sequence = scene.AddNode(slicer.vtkMRMLSequenceNode())
    storage = scene.AddNode(slicer.vtkMRMLVolumeSequenceStorageNode())
    storage.SetFileName(str(path))
    assert storage.ReadData(sequence) == 1
    items = []
    for n in range(sequence.GetNumberOfDataNodes()):
        image = sequence.GetNthDataNode(n).GetImageData()
        scalars = numpy_support.vtk_to_numpy(image.GetPointData().GetScalars())
        items.append(scalars.reshape(image.GetDimensions()[::-1])[0])
    node = sequence.GetNthDataNode(0)
    return items, node.GetSpacing(), sequence.GetIndexUnit(), sequence.GetNthIndexValue(1)


def test_video_forward_to_a_slicer_sequence(video, engine, random_checkpoint, tmp_path):
    out = tmp_path / "labels.seq.nrrd"
    rc, _, err = cli("segment", video, "--time", "--frame", 1, "--box", *BOX, "--direction",
                     "forward", "--checkpoint", random_checkpoint, "--precision", "fp32",
                     "--device", "cpu", "-o", out)
    assert rc == 0, err
    assert "5 colour frames of 512x384" in err and "40 ms a frame (25 fps)" in err
    expected = in_process(engine, read_frames(video).pixels, "forward")
    assert not expected[0].any() and expected[1:].any()  # forward only: frame 0 untouched
    items, spacing, unit, second = load_sequence(out)
    assert len(items) == FRAMES and unit == "ms" and second == "40"
    assert spacing == (1.0, 1.0, 1.0)  # a video has no pixel spacing
    np.testing.assert_array_equal(np.stack(items), expected)


def test_grey_cine_both_ways_on_the_input_grid(cine, engine, random_checkpoint, tmp_path):
    out = tmp_path / "labels.nrrd"
    rc, _, err = cli("segment", cine, "--time", "--frame", 1, "--box", *BOX, "--checkpoint",
                     random_checkpoint, "--precision", "fp32", "--device", "cpu",
                     "--quiet", "-o", out)
    assert rc == 0, err
    written, source = sitk.ReadImage(str(out)), sitk.ReadImage(cine)
    assert written.GetSize() == source.GetSize() and written.GetSpacing() == source.GetSpacing()
    expected = in_process(engine, sitk.GetArrayFromImage(source), "both")
    assert expected[0].any() or expected[2:].any()
    np.testing.assert_array_equal(sitk.GetArrayFromImage(written), expected)


def test_multiframe_dicoms_are_read_with_spacing_and_timing(tmp_path):
    echo = read_frames(shared("echo_a4c/echo_a4c_us_multiframe.dcm"))
    assert echo.pixels.shape == (120, 480, 640, 3) and echo.colour
    assert echo.frame_time_ms == pytest.approx(33.333)
    assert echo.spacing_mm == pytest.approx((0.5105, 0.5105), abs=1e-4)  # from the US region
    assert echo.grid.array.shape == (120, 480, 640)  # labels go on the frames' grid
    mr = read_frames(shared("dicom_smoke/emri_small_multiframe_MR.dcm"))
    assert mr.pixels.shape[0] == 10 and not mr.colour
    assert mr.spacing_mm is None and mr.grid.spacing == (1.0, 1.0, 1.0)  # the file has none
    # an enhanced file states its spacing in the shared functional groups (row, column)
    import pydicom
    from pydicom.dataset import Dataset
    from pydicom.sequence import Sequence

    ds = pydicom.dcmread(shared("dicom_smoke/emri_small_multiframe_MR.dcm"))
    measures = Dataset()
    measures.PixelSpacing = [0.8, 0.7]
    group = Dataset()
    group.PixelMeasuresSequence = Sequence([measures])
    ds.SharedFunctionalGroupsSequence = Sequence([group])
    ds.save_as(tmp_path / "enhanced.dcm")
    assert read_frames(tmp_path / "enhanced.dcm").spacing_mm == (0.7, 0.8)


def test_enhanced_mr_spacing_and_rescale_from_per_frame_functional_groups(tmp_path):
    """The real 10-frame Enhanced MR has no functional groups (pydicom-data strips them); an
    enhanced file may state Pixel Measures and Pixel Value Transformation per frame instead
    of shared (PS3.3 C.7.6.16), and has no top-level Pixel Spacing: both must be found."""
    import pydicom
    from pydicom.dataset import Dataset
    from pydicom.sequence import Sequence

    ds = pydicom.dcmread(shared("dicom_smoke/emri_small_multiframe_MR.dcm"))
    assert "PixelSpacing" not in ds and "SharedFunctionalGroupsSequence" not in ds
    assert "RescaleSlope" not in ds  # the premise: only the groups below state either
    stored = ds.pixel_array.astype(np.float32)

    def groups(spacing: list[str], slope: float) -> Dataset:
        measures, transform, group = Dataset(), Dataset(), Dataset()
        measures.PixelSpacing = spacing
        transform.RescaleSlope, transform.RescaleIntercept, transform.RescaleType = \
            slope, -5, "US"
        group.PixelMeasuresSequence = Sequence([measures])
        group.PixelValueTransformationSequence = Sequence([transform])
        return group

    ds.PerFrameFunctionalGroupsSequence = Sequence(
        [groups(["0.9", "0.6"], 1.0 + f) for f in range(10)])
    ds.save_as(tmp_path / "per_frame.dcm")
    frames = read_frames(tmp_path / "per_frame.dcm")
    assert frames.spacing_mm == (0.6, 0.9) and frames.grid.spacing == (0.6, 0.9, 1.0)
    slopes = np.arange(1.0, 11.0, dtype=np.float32)[:, None, None]
    np.testing.assert_allclose(frames.pixels, stored * slopes - 5)
    shared_only = pydicom.dcmread(tmp_path / "per_frame.dcm")
    del shared_only.PerFrameFunctionalGroupsSequence
    shared_only.SharedFunctionalGroupsSequence = Sequence([groups(["0.4", "0.3"], 3.0)])
    shared_only.save_as(tmp_path / "shared.dcm")
    frames = read_frames(tmp_path / "shared.dcm")
    assert frames.spacing_mm == (0.3, 0.4)
    np.testing.assert_allclose(frames.pixels, stored * 3 - 5)
    # frames that disagree on their pixel spacing are not one grid
    ds.PerFrameFunctionalGroupsSequence[3] = groups(["0.9", "0.7"], 4.0)
    ds.save_as(tmp_path / "two_spacings.dcm")
    with pytest.raises(VolumeError, match="2 different pixel spacings"):
        read_frames(tmp_path / "two_spacings.dcm")


@pytest.mark.parametrize("case, says", [
    ("single_frame_dicom", "single-frame DICOM"),
    ("one_frame_volume", "one frame"),
    ("frame_out_of_range", "frame 99"),
    ("other_axis", "frame axis is k"),
    ("unreachable_server", "cannot reach medsam-server at http://127.0.0.1:9"),
    ("four_d", "4D"),
])
def test_bad_input_exits_2_and_writes_nothing(case, says, cine, tmp_path):
    out = tmp_path / "out.seq.nrrd"
    args = [cine, "--time", "--frame", 1, "--box", *BOX, "--checkpoint", "never-read.pt"]
    if case == "single_frame_dicom":
        args[0] = shared("dicom_smoke/CT_small.dcm")
    elif case == "one_frame_volume":
        one = tmp_path / "one.nrrd"
        sitk.WriteImage(sitk.ReadImage(cine)[:, :, :1], str(one))
        args[0] = one
    elif case == "frame_out_of_range":
        args[3] = 99
    elif case == "other_axis":
        args += ["--axis", "j"]
    elif case == "unreachable_server":  # --time --server: test_time_remote.py
        args += ["--server", "http://127.0.0.1:9", "--quiet"]
    elif case == "four_d":
        four = tmp_path / "four.nii.gz"
        sitk.WriteImage(sitk.Image([4, 4, 3, 2], sitk.sitkUInt8), str(four))
        args[0] = four
    rc, _, err = cli("segment", *args, "-o", out)
    lines = err.strip().splitlines()
    assert rc == 2 and len(lines) == 1 and lines[0].startswith(ERROR_PREFIX), err
    assert says in lines[0]
    assert not out.exists() and list(tmp_path.glob("*.seq.nrrd")) == []

