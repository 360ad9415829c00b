"""Engine and session: parity with the stock SAM2 predictor, axes, cache, corrections, cancel."""

from __future__ import annotations

import sys
import threading

import numpy as np
import pytest
import torch
from medsam_server.engine.engine import Engine
from medsam_server.engine.prompts import Prompt, PromptError
from medsam_server.engine.session import Session

KEY, BOX = 3, (30, 25, 80, 70)


@pytest.fixture(scope="module")
def engine(random_checkpoint) -> Engine:
    """fp32, pinned: the parity with the stock predictor (fp32 on CPU) is exact only there
    (``auto`` is bf16 on a CPU with native bf16)."""
    engine = Engine.from_checkpoint(random_checkpoint, "cpu", precision="fp32")
    assert engine.precision == "fp32" and engine.encode_batch == 1
    return engine


@pytest.fixture(scope="module")
def vol(ct_u8: np.ndarray) -> np.ndarray:
    """Seven real CT slices around the liver (kept small: ~0.6 s per encoded slice on CPU)."""
    return np.ascontiguousarray(ct_u8[11:18])


@pytest.fixture(scope="module")
def reference(random_checkpoint, vol):
    """The stock sam2 legacy predictor, driven like medsam2_infer_3D_CT.py."""
    from medsam2_reference import build_reference_predictor, reference_segment

    predictor = build_reference_predictor(str(random_checkpoint))
    return reference_segment(predictor, vol, KEY, BOX, keep_logits=True)


@pytest.fixture(scope="module")
def segmented(engine: Engine, vol: np.ndarray) -> Session:
    session = Session(engine, vol)
    session.add_prompt(1, "k", KEY, Prompt(box=BOX))
    session.propagate(1)
    return session


def test_parity_with_stock_sam2_predictor(reference, segmented: Session, vol: np.ndarray) -> None:
    ref_mask, ref_logits = reference
    assert sorted(ref_logits) == list(range(vol.shape[0]))
    worst = 0.0
    for index, logits in ref_logits.items():
        ours = segmented.slice_logits(1, "k", index)
        worst = max(worst, float(np.abs(ours - logits).max()))
    assert worst < 1e-4
    ours_mask = segmented.mask(1)
    np.testing.assert_array_equal(ours_mask, ref_mask.astype(bool))
    # a meaningful comparison: the masks are neither empty nor full
    assert 0 < ours_mask.sum() < ours_mask.size


def test_each_slice_encoded_once_and_shared_by_objects(engine: Engine, vol: np.ndarray) -> None:
    session = Session(engine, vol)
    before = engine.encoder_calls
    session.add_prompt(1, "k", KEY, Prompt(box=BOX))
    session.propagate(1)
    assert engine.encoder_calls - before == vol.shape[0]  # key slice not re-encoded per pass
    session.add_prompt(2, "k", 1, Prompt(box=(10, 10, 60, 50)))
    session.propagate(2)
    assert engine.encoder_calls - before == vol.shape[0]  # second object: no encoder call
    assert session.cache.hits > 0 and len(session.cache) == vol.shape[0]
    assert not np.array_equal(session.mask(1), session.mask(2))


def test_cache_budget_evicts_least_recently_used(random_checkpoint, vol: np.ndarray) -> None:
    small = Engine.from_checkpoint(random_checkpoint, "cpu", precision="fp32",
                                   feature_cache_bytes=10 << 20)
    session = Session(small, vol[:4])
    session.add_prompt(1, "k", 1, Prompt(box=BOX))
    session.propagate(1)
    assert session.cache.nbytes <= 10 << 20
    assert 0 < len(session.cache) < 4  # ~4.2 MB per slice: only two fit
    assert small.encoder_calls == 4


def test_all_three_axes_follow_the_slice_convention(engine: Engine, vol: np.ndarray) -> None:
    """A j (or i) slice is arr[:, j, :] (arr[:, :, i]): same as axis k of a transposed volume."""
    small = np.ascontiguousarray(vol[:, 40:46, 50:55])  # 7 x 6 x 5
    for axis, order, index, box in (("j", (1, 0, 2), 2, (1, 1, 4, 6)),
                                    ("i", (2, 0, 1), 3, (1, 1, 5, 6))):
        session = Session(engine, small)
        assert session.slice_shape(axis) == small.transpose(order).shape[1:]
        session.add_prompt(1, axis, index, Prompt(box=box))
        session.propagate(1, axis)
        twin = Session(engine, np.ascontiguousarray(small.transpose(order)))
        twin.add_prompt(1, "k", index, Prompt(box=box))
        twin.propagate(1)
        np.testing.assert_array_equal(session.mask(1).transpose(order), twin.mask(1))


def test_correction_repropagates_only_while_the_result_changes(engine: Engine, vol: np.ndarray,
                                                                segmented: Session) -> None:
    session = Session(engine, vol)
    session.add_prompt(1, "k", KEY, Prompt(box=BOX))
    session.propagate(1)
    before = session.mask(1)
    np.testing.assert_array_equal(before, segmented.mask(1))  # deterministic
    encoded = engine.encoder_calls
    fixed = session.add_prompt(1, "k", 5, Prompt(box=(40, 30, 70, 60)))
    # converge_iou=0: stop at the first slice that already had a result, each direction
    report = session.propagate(1, converge_iou=0.0)
    assert report.slices == [5, 6, 4]
    assert engine.encoder_calls == encoded  # corrections reuse cached features
    after = session.mask(1)
    np.testing.assert_array_equal(after[5], fixed.mask)
    for k in (0, 1, 2, 3):  # untouched slices keep their earlier result exactly
        np.testing.assert_array_equal(after[k], before[k])
    # the key slice's prompt stops the backward pass: it is never re-propagated over
    report = session.propagate(1, start=5, converge_iou=1.1)  # never "unchanged"
    assert report.slices == [5, 6, 4]


def test_a_wider_range_goes_on_past_where_the_last_run_stopped(engine: Engine, vol: np.ndarray,
                                                                segmented: Session) -> None:
    session = Session(engine, vol)
    session.add_prompt(1, "k", KEY, Prompt(box=BOX))
    first = session.propagate(1, first=KEY - 1, last=KEY + 1)
    assert sorted(first.slices) == [KEY - 1, KEY, KEY + 1]  # premise: a part of the volume
    # the range's edges come out unchanged; converging there would leave the rest untracked
    report = session.propagate(1, start=KEY, converge_iou=0.0)
    assert sorted(report.slices) == list(range(vol.shape[0]))
    np.testing.assert_array_equal(session.mask(1), segmented.mask(1))


def test_points_refine_the_current_slice(engine: Engine, vol: np.ndarray) -> None:
    session = Session(engine, vol[:2])
    first = session.add_prompt(1, "k", 0, Prompt(box=BOX))
    refined = session.add_prompt(1, "k", 0, Prompt(points=((50.0, 40.0),), labels=(0,)))
    assert not np.array_equal(first.mask, refined.mask)
    assert session._objects[1].axes["k"].prompts[0].box == BOX  # box kept, point added


def test_cancel_keeps_the_session_consistent(engine: Engine, vol: np.ndarray,
                                             segmented: Session) -> None:
    session = Session(engine, vol)
    session.add_prompt(1, "k", KEY, Prompt(box=BOX))
    cancel = threading.Event()
    seen: list[int] = []

    def progress(result) -> None:
        seen.append(result.index)
        assert result.mask.shape == vol.shape[1:]
        assert 0.0 <= result.iou <= 1.0 and 0.0 <= result.object_score <= 1.0
        if len(seen) == 3:
            cancel.set()

    report = session.propagate(1, progress=progress, cancel=cancel)
    assert report.cancelled and report.slices == [KEY, 4, 5]
    done = session.mask(1)
    expected = segmented.mask(1)
    for k in (KEY, 4, 5):
        np.testing.assert_array_equal(done[k], expected[k])
    assert not done[[0, 1, 2, 6]].any()  # never computed, never written
    # the prompt stays pending: propagating again completes the job identically
    report = session.propagate(1)
    assert not report.cancelled
    np.testing.assert_array_equal(session.mask(1), expected)


def test_stop_after_empty_and_range_limits(random_checkpoint, vol: np.ndarray) -> None:
    absent = Engine.from_checkpoint(random_checkpoint, "cpu", precision="fp32")
    with torch.no_grad():  # a model that says "no object" on every tracked slice
        absent.model.sam_mask_decoder.pred_obj_score_head.layers[-1].bias.fill_(-50.0)
    session = Session(absent, vol)
    session.add_prompt(1, "k", KEY, Prompt(box=BOX))
    report = session.propagate(1, stop_after_empty=2)
    assert report.slices == [KEY, 4, 5, 2, 1]
    assert not session.mask(1)[[0, 6]].any()

    session.add_prompt(2, "k", KEY, Prompt(box=BOX))
    report = session.propagate(2, first=2, last=4, direction="forward")
    assert report.slices == [KEY, 4]


@pytest.mark.parametrize("kwargs, message", [
    ({"axis": "k", "index": 99, "prompt": Prompt(box=BOX)}, "outside 0..6"),
    ({"axis": "x", "index": 1, "prompt": Prompt(box=BOX)}, "unknown axis"),
    ({"axis": "k", "index": 1, "prompt": Prompt(box=(200, 200, 300, 300))}, "outside"),
    ({"axis": "k", "index": 1, "prompt": Prompt(box=(5, 5, 5, 9))}, "empty"),
    ({"axis": "k", "index": 1, "prompt": Prompt(box=(float("nan"), 1, 5, 9))}, "finite"),
    ({"axis": "k", "index": 1, "prompt": Prompt(points=((500.0, 5.0),), labels=(1,))},
     "outside"),
    ({"axis": "k", "index": 1, "prompt": Prompt(mask=np.ones((3, 3), bool))}, "shape"),
])
def test_bad_prompts_change_nothing(engine: Engine, vol: np.ndarray, kwargs, message) -> None:
    session = Session(engine, vol)
    calls = engine.encoder_calls
    with pytest.raises(PromptError, match=message):
        session.add_prompt(1, **kwargs)
    assert session.object_ids == [] and engine.encoder_calls == calls


def test_propagate_errors(engine: Engine, vol: np.ndarray) -> None:
    session = Session(engine, vol)
    with pytest.raises(PromptError, match="unknown object"):
        session.propagate(1)
    session.add_prompt(1, "k", 0, Prompt(box=BOX))
    with pytest.raises(PromptError, match="range"):
        session.propagate(1, first=3, last=99)
    with pytest.raises(PromptError, match="no prompted slice"):
        session.propagate(1, first=3, last=5)
    with pytest.raises(PromptError, match="has no prompt"):
        session.propagate(1, "j")


def test_mask_recipe_uses_the_key_slice_mask(engine: Engine, vol: np.ndarray) -> None:
    session = Session(engine, vol[:3])
    shown = session.add_prompt(1, "k", 1, Prompt(box=BOX))
    as_mask = session.add_prompt(1, "k", 1, Prompt(mask=shown.mask))
    # SAM2 passes a mask prompt straight through (use_mask_input_as_output_without_sam)
    # (only resampling 101x122 -> 512 -> 128 -> 101x122 moves boundary pixels)
    inter = np.count_nonzero(as_mask.mask & shown.mask)
    assert inter / np.count_nonzero(as_mask.mask | shown.mask) > 0.9
    report = session.propagate(1)
    assert sorted(report.slices) == [0, 1, 2]


def test_parity_on_medsam2_own_lesion_case(engine: Engine, random_checkpoint) -> None:
    """MedSAM2's DeepLesion npz (already 0..255, 512²): the lesion slices 3..9, key slice 6."""
    from conftest import shared
    from medsam2_reference import build_reference_predictor, reference_segment
    from medsam_server.engine.preprocess import window_to_uint8

    case = np.load(shared("medsam2_deeplesion_ct/CT_Lesion_000002_03_01_035-047.npz"))
    vol = window_to_uint8(case["imgs"][3:10], "none")
    ys, xs = np.nonzero(case["gts"][6])
    box = (int(xs.min()), int(ys.min()), int(xs.max()), int(ys.max()))  # as MedSAM2 derives it
    ref_mask, ref_logits = reference_segment(build_reference_predictor(str(random_checkpoint)),
                                             vol, 3, box, keep_logits=True)
    session = Session(engine, vol)
    session.add_prompt(1, "k", 3, Prompt(box=box))
    session.propagate(1)
    worst = max(float(np.abs(session.slice_logits(1, "k", i) - ref_logits[i]).max())
                for i in range(vol.shape[0]))
    assert worst < 1e-4
    np.testing.assert_array_equal(session.mask(1), ref_mask.astype(bool))


def test_one_object_stays_on_one_axis(engine: Engine, vol: np.ndarray) -> None:
    session = Session(engine, vol[:2])
    session.add_prompt(1, "k", 0, Prompt(box=BOX))
    with pytest.raises(PromptError, match="along axis k"):
        session.add_prompt(1, "j", 50, Prompt(box=(1, 0, 30, 2)))
    assert list(session._objects[1].axes) == ["k"]


def test_plan_uses_pending_prompts_inside_the_range(engine: Engine, vol: np.ndarray) -> None:
    session = Session(engine, vol[:3])
    session.add_prompt(1, "k", 0, Prompt(box=BOX))
    session.add_prompt(1, "k", 2, Prompt(box=BOX))
    session._objects[1].axes["k"].pending = {2}  # as after a propagation that covered 0
    plan = session.plan_propagation(1, first=0, last=1, direction="forward")
    assert plan.starts == (0,) and plan.max_slices == 2
    assert session.plan_propagation(1).starts == (2,)
    assert session.plan_propagation(1).max_slices == 3


def test_segment_objects_frees_the_features_before_post_processing(engine, vol):
    from medsam_server.engine.features import return_freed_memory
    from medsam_server.engine.objects import DEFAULT_COLORS, ObjectSpec
    from medsam_server.engine.pipeline import segment_objects
    from medsam_server.engine.postprocess import add_object

    crop = np.ascontiguousarray(vol[KEY - 1:KEY + 2])
    session = Session(engine, crop)
    spec = ObjectSpec(1, "liver", "k", 1, Prompt(box=BOX), DEFAULT_COLORS[0])
    labels, overlap = segment_objects(session, [spec])
    assert len(session.cache) == 0 and session.cache.nbytes == 0  # freed for the LCC pass
    expected = np.zeros(crop.shape, np.uint8)
    add_object(expected, session.mask(1), 1, lcc=True)  # same result as before the change
    np.testing.assert_array_equal(labels, expected)
    assert overlap == 0 and labels.any()
    assert return_freed_memory() is sys.platform.startswith("linux")
