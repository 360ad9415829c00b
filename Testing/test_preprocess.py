"""Intensity windowing, slice extraction, resize and normalisation, checked by hand numbers.

Reference behaviour is MedSAM2's inference scripts: clip, then
``(x - min) / (max - min) * 255.0`` over the clipped volume, then ``np.uint8`` (truncation);
slices go through PIL (grey → RGB → bicubic 512²), /255 and ImageNet mean/std.
"""

from __future__ import annotations

import tracemalloc

import numpy as np
import pytest
from medsam_server.engine.preprocess import (
    IMAGENET_MEAN,
    IMAGENET_STD,
    PreprocessError,
    get_slice,
    model_input,
    normalize,
    resize_to_model,
    slice_shape,
    window_to_uint8,
)
from PIL import Image


def vol(values, dtype=np.int16) -> np.ndarray:
    """A 1×1×N volume holding ``values`` (window_to_uint8 wants 3D)."""
    return np.asarray(values, dtype=dtype).reshape(1, 1, -1)


def medsam2_stretch(volume: np.ndarray, lo: float, hi: float) -> np.ndarray:
    """MedSAM2's CT preprocessing written out literally (medsam2_infer_3D_CT.py)."""
    pre = np.clip(volume, lo, hi)
    pre = (pre - np.min(pre)) / (np.max(pre) - np.min(pre)) * 255.0
    return np.uint8(pre)


# ---- CT ------------------------------------------------------------------------------


def test_ct_soft_tissue_window_hand_values():
    # window (40, 400) → [-160, 240]; clipped volume [-160, -160, 40, 240, 240]
    # 40 → (40 + 160) / 400 * 255 = 127.5 → 127 (truncated, not rounded)
    out = window_to_uint8(vol([-1000, -160, 40, 240, 1000]), "ct", (40.0, 400.0))
    assert out.dtype == np.uint8
    assert out.ravel().tolist() == [0, 0, 127, 255, 255]


def test_ct_default_window_is_soft_tissue():
    v = vol([-1000, -160, 40, 240, 1000])
    np.testing.assert_array_equal(window_to_uint8(v, "ct"), window_to_uint8(v, "ct", (40, 400)))


def test_ct_stretch_uses_the_clipped_volumes_own_min_and_max():
    # Nothing reaches the window edges (-160, 240): min -100, max 50, span 150.
    # -85 → 15 / 150 * 255 = 25.5 → 25;  -25 → 75 / 150 * 255 = 127.5 → 127.
    # (A plain window stretch would send -100 to 60 / 400 * 255 = 38, not 0.)
    out = window_to_uint8(vol([-100, -85, -25, 50]), "ct", (40.0, 400.0))
    assert out.ravel().tolist() == [0, 25, 127, 255]


def test_ct_stretch_when_only_the_upper_edge_is_reached():
    # clipped: [-10, 5, 240], span 250; 5 → 15 / 250 * 255 = 15.3 → 15
    out = window_to_uint8(vol([-10, 5, 1000]), "ct", (40.0, 400.0))
    assert out.ravel().tolist() == [0, 15, 255]


def test_ct_custom_window_hand_values():
    # level 0, width 100 → [-50, 50]; 0 → 127.5 → 127; 25 → 75 / 100 * 255 = 191.25 → 191
    out = window_to_uint8(vol([-60, -50, 0, 25, 50, 60]), "ct", (0.0, 100.0))
    assert out.ravel().tolist() == [0, 0, 127, 191, 255, 255]


@pytest.mark.parametrize("level,width", [(40, 400), (50, 350), (-600, 1500), (1000, 4095),
                                         (35, 100)])
@pytest.mark.parametrize("dtype", [np.int16, np.float32])
def test_ct_matches_medsam2_formula_on_every_integer(level, width, dtype):
    lo, hi = level - width / 2, level + width / 2
    for first, last in ((lo, hi), (lo + 7, hi - 13), (lo - 50, hi - 3)):
        v = vol(np.arange(int(first), int(last) + 1), dtype)
        np.testing.assert_array_equal(window_to_uint8(v, "ct", (level, width)),
                                      medsam2_stretch(v, lo, hi))


def test_ct_on_a_real_shaped_volume_matches_medsam2():
    rng = np.random.default_rng(3)
    v = rng.integers(-1100, 1300, size=(7, 33, 41), dtype=np.int16)
    np.testing.assert_array_equal(window_to_uint8(v, "ct", (40, 400)),
                                  medsam2_stretch(v, -160.0, 240.0))


def test_input_is_not_modified_and_output_is_a_new_uint8_volume():
    rng = np.random.default_rng(0)
    for modality, v in (("ct", rng.integers(-1000, 1000, (4, 5, 6)).astype(np.int16)),
                        ("ct", rng.normal(0, 300, (4, 5, 6)).astype(np.float32)),
                        ("mr", rng.integers(0, 900, (4, 5, 6)).astype(np.int16)),
                        ("none", rng.integers(0, 256, (4, 5, 6)).astype(np.uint8))):
        before = v.copy()
        out = window_to_uint8(v, modality)
        np.testing.assert_array_equal(v, before)
        assert v.dtype == before.dtype
        assert out.dtype == np.uint8 and out.shape == v.shape
        assert not np.shares_memory(out, v)


@pytest.mark.parametrize("value", [-2000, 0, 40, 500])
def test_constant_volume_gives_zeros(value):
    out = window_to_uint8(np.full((3, 4, 5), value, dtype=np.int16), "ct", (40, 400))
    assert out.dtype == np.uint8
    assert not out.any()


@pytest.mark.parametrize("window", [(40, 0), (40, -10), (float("nan"), 400), (40, float("inf"))])
def test_ct_window_needs_finite_level_and_positive_width(window):
    with pytest.raises(PreprocessError, match="width"):
        window_to_uint8(vol([0, 1, 2]), "ct", window)


# ---- MR ------------------------------------------------------------------------------


@pytest.fixture
def mr_volume() -> np.ndarray:
    """Positives 1..200, five zeros, five negatives, shuffled into a 3×7×10 volume."""
    values = np.concatenate([np.arange(1, 201), np.zeros(5), np.full(5, -3)]).astype(np.int16)
    np.random.default_rng(7).shuffle(values)
    return values.reshape(3, 7, 10)


def test_mr_percentiles_of_the_positive_voxels(mr_volume):
    # Linear interpolation between order statistics: rank q/100 * (n - 1) over the
    # 200 sorted positives 1..200, so the value is 1 + rank.
    positives = np.sort(mr_volume[mr_volume > 0])
    n = positives.size
    assert n == 200
    lo_rank, hi_rank = 0.005 * (n - 1), 0.995 * (n - 1)  # 0.995 and 198.005
    lo = positives[0] + lo_rank * (positives[1] - positives[0])
    hi = positives[198] + (hi_rank - 198) * (positives[199] - positives[198])
    assert lo == pytest.approx(1.995) and hi == pytest.approx(199.005)
    np.testing.assert_allclose(np.percentile(mr_volume[mr_volume > 0], [0.5, 99.5]), [lo, hi])


def test_mr_hand_checked_voxels(mr_volume):
    # lo = 1.995, hi = 199.005, span 197.01 (the zeros clip to lo, so min = lo):
    # 100 → 98.005 / 197.01 * 255 = 126.85 → 126;  150 → 191.57 → 191;
    # 199 → 254.99 → 254;  200 → 255;  1, 2 → 0;  zeros and negatives → 0
    out = window_to_uint8(mr_volume, "mr")
    expected = {100: 126, 150: 191, 199: 254, 200: 255, 1: 0, 2: 0, 0: 0, -3: 0}
    for value, want in expected.items():
        got = np.unique(out[mr_volume == value])
        assert got.tolist() == [want], f"voxel {value} → {got}, expected {want}"


def test_mr_zeros_stay_zero_and_matches_medsam2_formula():
    rng = np.random.default_rng(11)
    v = rng.integers(-40, 840, size=(5, 30, 40)).astype(np.int16)
    v[:, :5] = 0  # background border
    lo, hi = np.percentile(v[v > 0], 0.5), np.percentile(v[v > 0], 99.5)
    ref = np.clip(v, lo, hi)
    ref = (ref - np.min(ref)) / (np.max(ref) - np.min(ref)) * 255.0
    ref[v == 0] = 0
    out = window_to_uint8(v, "mr")
    np.testing.assert_array_equal(out, np.uint8(ref))
    assert not out[v == 0].any()


def test_mr_rejects_a_window_and_an_all_nonpositive_volume():
    with pytest.raises(PreprocessError, match="window"):
        window_to_uint8(vol([1, 2, 3]), "mr", (40, 400))
    with pytest.raises(PreprocessError, match="> 0"):
        window_to_uint8(vol([0, -5, 0]), "mr")


# ---- none ----------------------------------------------------------------------------


def test_none_passes_0_to_255_through():
    v = vol(np.arange(256), np.int16)
    np.testing.assert_array_equal(window_to_uint8(v, "none"), v.astype(np.uint8))


def test_none_truncates_floats():
    out = window_to_uint8(vol([0.0, 12.7, 99.999, 255.0], np.float32), "none")
    assert out.ravel().tolist() == [0, 12, 99, 255]


@pytest.mark.parametrize("values", [[-1, 3, 4], [0, 256, 4], [0.0, 255.5, 1.0]])
def test_none_rejects_out_of_range(values):
    with pytest.raises(PreprocessError, match="0..255"):
        window_to_uint8(vol(values, np.float64), "none")


# ---- bad input -----------------------------------------------------------------------


@pytest.mark.parametrize("bad", [np.nan, np.inf, -np.inf])
@pytest.mark.parametrize("modality", ["ct", "mr", "none"])
def test_non_finite_voxels_are_rejected(bad, modality):
    v = vol([1.0, 2.0, bad, 4.0], np.float32)
    with pytest.raises(PreprocessError, match="NaN or infinite"):
        window_to_uint8(v, modality)


@pytest.mark.parametrize("shape", [(5,), (4, 5), (2, 3, 4, 5)])
def test_wrong_ndim_is_rejected(shape):
    with pytest.raises(PreprocessError, match="3D"):
        window_to_uint8(np.zeros(shape, dtype=np.int16), "ct")


def test_unknown_modality_is_rejected():
    with pytest.raises(PreprocessError, match="modality"):
        window_to_uint8(vol([1, 2, 3]), "pet")  # type: ignore[arg-type]


def test_non_numeric_volume_is_rejected():
    with pytest.raises(PreprocessError):
        window_to_uint8(np.array([[["a"]]]), "none")


# ---- slices --------------------------------------------------------------------------


def test_get_slice_and_slice_shape_per_axis():
    arr = np.arange(2 * 3 * 4).reshape(2, 3, 4)
    for k in range(2):
        np.testing.assert_array_equal(get_slice(arr, "k", k), arr[k])
    for j in range(3):
        np.testing.assert_array_equal(get_slice(arr, "j", j), arr[:, j, :])
    for i in range(4):
        np.testing.assert_array_equal(get_slice(arr, "i", i), arr[:, :, i])
    assert get_slice(arr, "j", 1).tolist() == [[4, 5, 6, 7], [16, 17, 18, 19]]
    assert get_slice(arr, "i", 3).tolist() == [[3, 7, 11], [15, 19, 23]]
    assert slice_shape(arr.shape, "k") == (3, 4)
    assert slice_shape(arr.shape, "j") == (2, 4)
    assert slice_shape(arr.shape, "i") == (2, 3)


@pytest.mark.parametrize("axis,index", [("k", 2), ("k", -1), ("j", 3), ("i", 4), ("i", 99)])
def test_get_slice_out_of_range(axis, index):
    with pytest.raises(PreprocessError, match="outside"):
        get_slice(np.zeros((2, 3, 4)), axis, index)


@pytest.mark.parametrize("axis", ["x", "K", "", "z"])
def test_bad_axis(axis):
    with pytest.raises(PreprocessError, match="axis"):
        get_slice(np.zeros((2, 3, 4)), axis, 0)
    with pytest.raises(PreprocessError, match="axis"):
        slice_shape((2, 3, 4), axis)


# ---- resize and normalise ------------------------------------------------------------


@pytest.mark.parametrize("shape", [(101, 122), (512, 512), (30, 122), (600, 700), (1, 7)])
def test_resize_matches_pil_rgb_resize(shape):
    rng = np.random.default_rng(sum(shape))
    u8 = rng.integers(0, 256, size=shape, dtype=np.uint8)
    pil = np.asarray(Image.fromarray(u8).convert("RGB").resize((512, 512)))
    assert pil.shape == (512, 512, 3)
    np.testing.assert_array_equal(pil[..., 0], pil[..., 1])
    np.testing.assert_array_equal(pil[..., 0], pil[..., 2])
    ours = resize_to_model(u8)
    assert ours.dtype == np.uint8 and ours.shape == (512, 512)
    np.testing.assert_array_equal(ours, pil[..., 0])


def test_resize_of_a_512_slice_is_the_identity():
    u8 = np.random.default_rng(1).integers(0, 256, size=(512, 512), dtype=np.uint8)
    np.testing.assert_array_equal(resize_to_model(u8), u8)


def test_resize_accepts_a_non_contiguous_view():
    u8 = np.random.default_rng(2).integers(0, 256, size=(60, 80, 90), dtype=np.uint8)
    view = u8[:, 10, :]  # an axis-j slice is a strided view
    expected = np.asarray(Image.fromarray(view.copy()).convert("RGB").resize((512, 512)))
    np.testing.assert_array_equal(resize_to_model(view), expected[..., 0])


def test_normalize_hand_values():
    img = np.array([[0, 255]], dtype=np.uint8)
    out = normalize(img)
    assert out.dtype == np.float32 and out.shape == (3, 1, 2)
    assert out[0, 0, 0] == pytest.approx(-0.485 / 0.229, rel=1e-6)  # -2.117903...
    assert out[0, 0, 0] == pytest.approx(-2.1179039, abs=1e-6)
    assert out[1, 0, 0] == pytest.approx(-0.456 / 0.224, rel=1e-6)
    assert out[2, 0, 0] == pytest.approx(-0.406 / 0.225, rel=1e-6)
    assert out[0, 0, 1] == pytest.approx((1 - 0.485) / 0.229, rel=1e-6)  # 2.248908...
    assert out[1, 0, 1] == pytest.approx((1 - 0.456) / 0.224, rel=1e-6)  # 2.428571...
    assert out[2, 0, 1] == pytest.approx((1 - 0.406) / 0.225, rel=1e-6)  # 2.64
    # exactly: float32 constants (as MedSAM2's torch tensors), float64 arithmetic, float32 out
    for c in range(3):
        m = np.float64(np.float32(IMAGENET_MEAN[c]))
        s = np.float64(np.float32(IMAGENET_STD[c]))
        assert out[c, 0, 0] == np.float32((0.0 - m) / s)
        assert out[c, 0, 1] == np.float32((255 / 255.0 - m) / s)


def test_model_input_equals_medsam2_frames():
    from medsam2_reference import medsam2_frames

    rng = np.random.default_rng(5)
    volume = rng.integers(0, 256, size=(3, 40, 57), dtype=np.uint8)
    volume[1] = np.linspace(0, 255, 57).astype(np.uint8)  # smooth ramp too
    ref = medsam2_frames(volume).float().numpy()
    ours = np.stack([model_input(volume, "k", k) for k in range(3)])
    assert ours.dtype == np.float32 and ours.shape == (3, 3, 512, 512)
    np.testing.assert_array_equal(ours, ref)


# ---- memory --------------------------------------------------------------------------


@pytest.fixture(scope="module")
def big_volume() -> np.ndarray:
    """64 MiB of int16 voxels (float64 copy: 256 MiB)."""
    rng = np.random.default_rng(0)
    return rng.integers(-1100, 1500, size=(128, 512, 512), dtype=np.int16)


@pytest.mark.parametrize("modality,limit", [("ct", 0.5), ("mr", 0.6), ("none", 0.25)])
def test_whole_volume_path_makes_no_float64_copy(big_volume, modality, limit):
    v = big_volume if modality != "none" else big_volume.view(np.uint16) % 200
    f64_bytes = v.size * 8
    tracemalloc.start()
    try:
        out = window_to_uint8(v, modality)
        _, peak = tracemalloc.get_traced_memory()
    finally:
        tracemalloc.stop()
    assert out.shape == v.shape
    assert peak < limit * f64_bytes, (
        f"peak {peak / 2**20:.0f} MiB vs float64 copy {f64_bytes / 2**20:.0f} MiB"
    )
