"""Propagation along time equals Meta's SAM2 video predictor driven as MedSAM2's
``medsam2_infer_video.py`` drives it: same frames, same random-weight checkpoint, fp32.

Frames of the real echo cine (../shared/data/echo_a4c): colour from the multi-frame US
DICOM (RGB, as SAM2 sees video), grey from the luma NRRD. The stock side reads each frame
with sam2's own loader function (``_load_img_as_tensor``, from lossless PNGs).
"""

from __future__ import annotations

import numpy as np
import pytest
from conftest import shared
from medsam_server.engine import Engine, Prompt, PromptError, Session

KEY = 1
BOX = (225, 95, 325, 225)  # SOURCES.md's approximate LV box on the cropped frames
CROP = (slice(31, 415), slice(84, 596))  # rows, columns of the NRRD's crop in the DICOM
FRAMES = 5


@pytest.fixture(scope="module")
def fp32_engine(random_checkpoint) -> Engine:
    return Engine.from_checkpoint(random_checkpoint, "cpu", precision="fp32")


@pytest.fixture(scope="module")
def predictor(random_checkpoint):  # noqa: ANN201
    from medsam2_reference import build_reference_predictor

    return build_reference_predictor(str(random_checkpoint))


@pytest.fixture(scope="module")
def colour_frames() -> np.ndarray:
    pydicom = pytest.importorskip("pydicom")
    ds = pydicom.dcmread(shared("echo_a4c/echo_a4c_us_multiframe.dcm"))
    rgb = ds.pixel_array[:FRAMES][(slice(None), *CROP)]
    assert rgb.shape == (FRAMES, 384, 512, 3) and rgb.dtype == np.uint8
    # really colour data: the channels differ somewhere (YBR decoded to RGB)
    assert (rgb[..., 0] != rgb[..., 2]).any()
    return np.ascontiguousarray(rgb)


@pytest.fixture(scope="module")
def grey_frames() -> np.ndarray:
    import SimpleITK as sitk

    arr = sitk.GetArrayFromImage(sitk.ReadImage(str(shared("echo_a4c/echo_a4c_cine.nrrd"))))
    assert arr.dtype == np.uint8 and arr.shape[1:] == (384, 512)
    return np.ascontiguousarray(arr[:FRAMES])


def compare(engine: Engine, predictor, frames: np.ndarray, tmp_path, direction: str) -> None:  # noqa: ANN001
    from medsam2_reference import reference_video, sam2_video_frames

    directions = {"forward": (False,), "both": (False, True)}[direction]
    stock = reference_video(predictor, sam2_video_frames(frames, str(tmp_path)),
                            *frames.shape[1:3], KEY, BOX, directions)
    session = Session(engine, frames)
    session.add_prompt(1, "k", KEY, Prompt(box=BOX))
    session.propagate(1, "k", direction=direction)
    expected = list(range(KEY, FRAMES)) if direction == "forward" else list(range(FRAMES))
    assert sorted(stock) == expected
    worst = max(float(np.abs(session.slice_logits(1, "k", f) - stock[f]).max()) for f in stock)
    assert worst < 1e-4
    for f in range(FRAMES):
        theirs = stock[f] > 0 if f in stock else np.zeros(frames.shape[1:3], bool)
        np.testing.assert_array_equal(session.slice_mask(1, "k", f).astype(bool), theirs)
    # a meaningful comparison: the tracked masks are neither empty nor full
    masks = session.mask(1)[KEY:]
    assert 0 < masks.sum() < masks.size


def test_colour_frames_forward_equal_the_stock_video_predictor(fp32_engine, predictor,
                                                               colour_frames, tmp_path):
    compare(fp32_engine, predictor, colour_frames, tmp_path, "forward")


def test_grey_frames_both_ways_equal_the_stock_video_predictor(fp32_engine, predictor,
                                                               grey_frames, tmp_path):
    compare(fp32_engine, predictor, grey_frames, tmp_path, "both")


def test_colour_frames_model_input_differs_from_their_luma(colour_frames):
    # The premise of the colour test: colour frames do not reach the model as grey.
    from medsam_server.engine.preprocess import model_input

    rgb = model_input(colour_frames, "k", 0, 64)
    assert rgb.shape == (3, 64, 64)
    assert not np.allclose(rgb[0] * 0.229 + 0.485, rgb[2] * 0.225 + 0.406)


def test_colour_frames_only_along_time(fp32_engine, colour_frames):
    session = Session(fp32_engine, colour_frames)
    assert session.shape == (FRAMES, 384, 512) and session.colour
    with pytest.raises(PromptError, match="along time"):
        session.add_prompt(1, "j", 10, Prompt(box=(0, 0, 3, 3)))
    assert session.object_ids == []  # nothing changed
    with pytest.raises(ValueError, match="colour frames"):
        Session(fp32_engine, np.zeros((2, 8, 8, 4), np.uint8))


def test_stop_after_empty_along_time(random_checkpoint, colour_frames):
    import torch

    absent = Engine.from_checkpoint(random_checkpoint, "cpu", precision="fp32")
    with torch.no_grad():  # a model that says "no object" on every tracked frame
        absent.model.sam_mask_decoder.pred_obj_score_head.layers[-1].bias.fill_(-50.0)
    session = Session(absent, colour_frames)
    session.add_prompt(1, "k", KEY, Prompt(box=BOX))
    # forward from frame 1: frames 2 and 3 are empty, so frame 4 is never reached
    report = session.propagate(1, "k", stop_after_empty=2)
    assert report.slices == [KEY, 2, 3, 0]
    unlimited = Session(absent, colour_frames)
    unlimited.add_prompt(1, "k", KEY, Prompt(box=BOX))
    assert unlimited.propagate(1, "k").slices == [KEY, 2, 3, 4, 0]  # premise: 4 is reachable
