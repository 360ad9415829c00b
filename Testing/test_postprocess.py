"""Tests for medsam_server.engine.postprocess on hand-made masks and logits."""

from __future__ import annotations

import numpy as np
import pytest
from medsam_server.engine.postprocess import fill_small_holes, largest_connected_component
from skimage import measure

# ---------------------------------------------------------------- largest connected component


def medsam2_get_largest_cc(segmentation: np.ndarray) -> np.ndarray:
    """MedSAM2's reference getLargestCC, verbatim in behaviour (labels the whole volume)."""
    labels = measure.label(segmentation)
    return labels == np.argmax(np.bincount(labels.flat)[1:]) + 1


def test_lcc_keeps_the_bigger_blob():
    mask = np.zeros((6, 8, 8), np.uint8)
    mask[0:2, 0:2, 0:2] = 1  # 8 voxels
    mask[3:6, 4:7, 4:7] = 1  # 27 voxels
    out = largest_connected_component(mask)
    assert out.dtype == bool
    assert out.sum() == 27
    assert out[3:6, 4:7, 4:7].all()
    assert not out[0:2, 0:2, 0:2].any()
    assert mask.sum() == 35  # input untouched


def test_lcc_uses_26_connectivity():
    # A diagonal chain of 5 voxels touching only at corners is ONE component under
    # 26-connectivity, so it beats a face-connected 4-voxel bar.
    mask = np.zeros((7, 7, 7), bool)
    for n in range(5):
        mask[n, n, n] = True
    mask[6, 0, 0:4] = True
    out = largest_connected_component(mask)
    assert out.sum() == 5
    assert all(out[n, n, n] for n in range(5))
    assert not out[6].any()


def test_lcc_of_empty_mask_is_empty():
    out = largest_connected_component(np.zeros((3, 4, 5), np.uint8))
    assert out.shape == (3, 4, 5)
    assert out.dtype == bool
    assert not out.any()


def test_lcc_treats_any_label_as_foreground():
    mask = np.zeros((1, 1, 6), np.uint8)
    mask[0, 0, :3] = [1, 2, 1]  # one component, three voxels, two label values
    mask[0, 0, 5] = 1
    assert largest_connected_component(mask).tolist() == [[[True, True, True, False, False, False]]]


def test_lcc_ties_go_to_the_first_component_like_medsam2():
    mask = np.zeros((4, 4, 9), bool)
    mask[1, 1, 1:3] = True  # two components of 2 voxels, first in raster order wins
    mask[2, 2, 6:8] = True
    out = largest_connected_component(mask)
    np.testing.assert_array_equal(out, medsam2_get_largest_cc(mask))
    assert out[1, 1, 1:3].all() and not out[2].any()


@pytest.mark.parametrize("seed", range(8))
def test_lcc_matches_medsam2_on_random_masks(seed):
    # Sparse random masks make many small components and ties; the bounding-box crop
    # must not change which one wins.
    rng = np.random.default_rng(seed)
    mask = np.zeros((12, 20, 24), bool)
    mask[2:10, 3:17, 5:21] = rng.random((8, 14, 16)) < 0.12
    np.testing.assert_array_equal(largest_connected_component(mask), medsam2_get_largest_cc(mask))


# ---------------------------------------------------------------- fill small holes


def ring_with_hole(hole: list[tuple[int, int]], size: int = 9) -> np.ndarray:
    """Foreground logits (+5) everywhere except the given background (-3) pixels."""
    logits = np.full((size, size), 5.0, np.float32)
    for y, x in hole:
        logits[y, x] = -3.0
    return logits


def test_three_pixel_hole_is_filled_with_0_1():
    hole = [(4, 3), (4, 4), (4, 5)]
    logits = ring_with_hole(hole)
    out = fill_small_holes(logits, max_area=8)
    for y, x in hole:
        assert out[y, x] == pytest.approx(0.1)
    assert (out > 0).all()
    assert logits[4, 4] == -3.0  # input unchanged, a new array returned
    assert out.dtype == np.float32


def test_hole_larger_than_max_area_is_kept():
    hole = [(y, x) for y in range(3, 6) for x in range(3, 6)]  # 9 pixels
    logits = ring_with_hole(hole)
    np.testing.assert_array_equal(fill_small_holes(logits, max_area=8), logits)
    filled = fill_small_holes(logits, max_area=9)  # area <= max_area is inclusive
    assert (filled[3:6, 3:6] == np.float32(0.1)).all()


def test_diagonal_background_pixels_are_one_component():
    # Two pixels touching only at a corner: 8-connectivity makes one hole of area 2.
    logits = ring_with_hole([(3, 3), (4, 4)])
    np.testing.assert_array_equal(fill_small_holes(logits, max_area=1), logits)
    out = fill_small_holes(logits, max_area=2)
    assert out[3, 3] == out[4, 4] == np.float32(0.1)


def test_zero_logit_is_background():
    logits = ring_with_hole([])
    logits[2, 2] = 0.0
    assert fill_small_holes(logits, max_area=1)[2, 2] == np.float32(0.1)


def test_small_region_touching_the_border_is_filled_too():
    # SAM2 does not exclude border-touching regions: a 2-pixel notch on the edge is a "hole".
    logits = ring_with_hole([(0, 4), (0, 5)])
    logits[8, :] = -1.0  # a 9-pixel border strip stays background with max_area=8
    out = fill_small_holes(logits, max_area=8)
    assert out[0, 4] == out[0, 5] == np.float32(0.1)
    np.testing.assert_array_equal(out[8], logits[8])


def test_batched_images_are_processed_independently():
    a = ring_with_hole([(4, 4)])
    b = np.full((9, 9), -2.0, np.float32)  # all background: area 81, never filled
    b[4, 4] = 1.0
    batch = np.stack([a, b])[:, None]  # (N, 1, H, W) as SAM2 passes it
    out = fill_small_holes(batch, max_area=8)
    assert out.shape == (2, 1, 9, 9)
    assert out[0, 0, 4, 4] == np.float32(0.1)
    np.testing.assert_array_equal(out[1, 0], b)


def test_non_contiguous_input_is_handled():
    logits = ring_with_hole([(2, 6)]).T  # a transposed view, hole now at (6, 2)
    out = fill_small_holes(logits, max_area=4)
    assert out[6, 2] == np.float32(0.1)
    assert (out > 0).all()


def test_max_area_must_be_positive():
    with pytest.raises(ValueError, match="max_area"):
        fill_small_holes(np.zeros((3, 3), np.float32), max_area=0)


def test_matches_sam2_fill_holes_wrapper(monkeypatch):
    """Parity with SAM2's own function, with its CUDA connected-components kernel replaced
    by a CPU one that follows the kernel's documented contract (8-connectivity; per pixel
    the component label and area, 0 for background)."""
    torch = pytest.importorskip("torch")
    sam2_misc = pytest.importorskip("sam2.utils.misc")

    def cpu_connected_components(mask):
        m = mask.to(torch.uint8).cpu().numpy()
        labels = np.zeros(m.shape, np.int32)
        counts = np.zeros(m.shape, np.int32)
        for n in range(m.shape[0]):
            lab = measure.label(m[n, 0], connectivity=2)
            area = np.bincount(lab.ravel())
            area[0] = 0
            labels[n, 0] = lab
            counts[n, 0] = area[lab]
        return torch.from_numpy(labels), torch.from_numpy(counts)

    rng = np.random.default_rng(3)
    logits = rng.normal(loc=0.8, scale=1.0, size=(3, 1, 32, 32)).astype(np.float32)
    monkeypatch.setattr(sam2_misc, "get_connected_components", cpu_connected_components)
    for max_area in (1, 4, 16):
        expected = sam2_misc.fill_holes_in_mask_scores(torch.from_numpy(logits), max_area).numpy()
        assert (expected != logits).any()  # some holes really were filled
        np.testing.assert_array_equal(fill_small_holes(logits, max_area), expected)
