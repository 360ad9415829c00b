"""Intensity and slice preprocessing, exactly as MedSAM2's inference scripts do it.

Volume level (once per session, non-destructive, result is compact uint8):
- CT: clip to the window [level - width/2, level + width/2], stretch the clipped
  volume's min..max to 0..255, truncate to uint8.
- MR: clip to the 0.5 / 99.5 percentiles of the voxels > 0, same stretch; voxels
  that were 0 stay 0.
- none: the volume is already 0..255.

Slice level (lazily, per slice the model sees): grey uint8 → bicubic resize to
512×512 as PIL does for the image replicated to RGB → /255 → ImageNet mean/std.
The arithmetic is float64 then cast to float32, like MedSAM2 (its array is float64).

Colour frames (video, colour ultrasound): a (frames, rows, columns, 3) uint8 RGB array. Each
frame goes to the model the way SAM2's video loader sends a JPEG frame (``sam2.utils.misc.
_load_img_as_tensor``): PIL RGB bicubic resize → /255 → ImageNet mean/std per channel. They
are segmented along the frame axis (k) only.
"""

from __future__ import annotations

from typing import Literal

import numpy as np
from PIL import Image

Modality = Literal["ct", "mr", "none"]
Axis = Literal["k", "j", "i"]
AXES: tuple[str, ...] = ("k", "j", "i")

DEFAULT_CT_WINDOW = (40.0, 400.0)  # soft tissue (level, width) in HU
IMAGENET_MEAN = (0.485, 0.456, 0.406)
IMAGENET_STD = (0.229, 0.224, 0.225)
# Rows of k-slabs processed at a time, so no float64 copy of the whole volume exists.
_SLAB_BYTES = 32 << 20


class PreprocessError(ValueError):
    """Input the preprocessing cannot accept (NaN, wrong range, bad window...)."""


def window_to_uint8(volume: np.ndarray, modality: Modality = "ct",
                    window: tuple[float, float] | None = None) -> np.ndarray:
    """Return a new uint8 volume (same shape) prepared the MedSAM2 way; input untouched."""
    if volume.ndim != 3:
        raise PreprocessError(f"expected a 3D volume, got shape {volume.shape}")
    if not (np.issubdtype(volume.dtype, np.integer) or np.issubdtype(volume.dtype, np.floating)):
        raise PreprocessError(f"unsupported voxel type {volume.dtype}")
    if np.issubdtype(volume.dtype, np.floating):
        bad = int(np.count_nonzero(~np.isfinite(volume)))
        if bad:
            raise PreprocessError(f"volume has {bad} NaN or infinite voxels")
    if modality == "none":
        lo, hi = volume.min(), volume.max()
        if lo < 0 or hi > 255:
            raise PreprocessError(
                f"--modality none needs intensities in 0..255, got {lo}..{hi}; "
                "use --modality ct (with --window) or mr"
            )
        return volume.astype(np.uint8)  # truncation, as np.uint8() does in MedSAM2
    if modality == "ct":
        level, width = window if window is not None else DEFAULT_CT_WINDOW
        if not (np.isfinite(level) and np.isfinite(width)) or width <= 0:
            raise PreprocessError(f"CT window needs a finite level and width > 0, got {window}")
        lo, hi = level - width / 2.0, level + width / 2.0
        return _clip_stretch(volume, lo, hi, keep_zero=False)
    if modality == "mr":
        if window is not None:
            raise PreprocessError("a window is only used with --modality ct")
        positive = volume[volume > 0]
        if positive.size == 0:
            raise PreprocessError("MR volume has no voxel > 0; nothing to normalise")
        lo, hi = np.percentile(positive, [0.5, 99.5])
        del positive  # a copy of most of the volume: free it before the stretch
        return _clip_stretch(volume, float(lo), float(hi), keep_zero=True)
    raise PreprocessError(f"unknown modality {modality!r}: use ct, mr or none")


def _clip_stretch(volume: np.ndarray, lo: float, hi: float, *, keep_zero: bool) -> np.ndarray:
    # min/max of the clipped volume without materialising it
    cmin = float(np.clip(volume.min(), lo, hi))
    cmax = float(np.clip(volume.max(), lo, hi))
    out = np.zeros(volume.shape, dtype=np.uint8)
    if cmax <= cmin:  # constant after clipping: MedSAM2 would divide by zero
        return out
    span = cmax - cmin
    per_slice = max(1, volume[0].size * 8)
    step = max(1, _SLAB_BYTES // per_slice)
    for k0 in range(0, volume.shape[0], step):
        slab = volume[k0:k0 + step]
        # MedSAM2's (x - min) / (max - min) * 255.0, in that order: a precomputed
        # 255 / (max - min) scale rounds differently and truncates the top value to 254.
        vals = np.clip(slab, lo, hi).astype(np.float64, copy=False)
        vals -= cmin
        vals /= span
        vals *= 255.0
        block = vals.astype(np.uint8)
        if keep_zero:
            block[slab == 0] = 0
        out[k0:k0 + step] = block
    return out


def axis_index(axis: str) -> int:
    """Numpy axis of the volume that a slice of ``axis`` removes (k→0, j→1, i→2)."""
    try:
        return AXES.index(axis)
    except ValueError:
        raise PreprocessError(f"unknown axis {axis!r}: use k, j or i") from None


def slice_shape(shape: tuple[int, int, int], axis: str) -> tuple[int, int]:
    """(rows, columns) of a slice along ``axis``."""
    ax = axis_index(axis)
    rest = [n for d, n in enumerate(shape) if d != ax]
    return rest[0], rest[1]


def get_slice(volume: np.ndarray, axis: str, index: int) -> np.ndarray:
    """The slice in numpy order: k → arr[k]; j → arr[:, j, :]; i → arr[:, :, i]."""
    ax = axis_index(axis)
    n = volume.shape[ax]
    if not 0 <= index < n:
        raise PreprocessError(f"slice {index} is outside 0..{n - 1} along axis {axis}")
    return np.take(volume, index, axis=ax)


def resize_to_model(slice_u8: np.ndarray, size: int = 512) -> np.ndarray:
    """Bicubic resize as PIL does for ``Image.fromarray(u8).convert('RGB').resize(...)``.

    PIL resamples each 8-bit band independently, so resizing the grey band once gives
    the same values as resizing each of the three identical RGB bands.
    """
    img = Image.fromarray(np.ascontiguousarray(slice_u8, dtype=np.uint8), mode="L")
    return np.asarray(img.resize((size, size), Image.Resampling.BICUBIC))


def normalize(resized_u8: np.ndarray) -> np.ndarray:
    """(3, H, W) float32: /255 then ImageNet mean/std, computed in float64 like MedSAM2."""
    grey = resized_u8.astype(np.float64) / 255.0
    mean = np.asarray(IMAGENET_MEAN, dtype=np.float32).astype(np.float64)[:, None, None]
    std = np.asarray(IMAGENET_STD, dtype=np.float32).astype(np.float64)[:, None, None]
    return ((grey[None] - mean) / std).astype(np.float32)


def is_colour(volume_u8: np.ndarray) -> bool:
    """True for colour frames: (frames, rows, columns, 3) uint8 RGB."""
    return volume_u8.ndim == 4 and volume_u8.shape[3] == 3


def resize_rgb_to_model(frame_rgb: np.ndarray, size: int = 512) -> np.ndarray:
    """(size, size, 3) uint8: PIL's bicubic resize of an RGB frame, as SAM2's video loader."""
    img = Image.fromarray(np.ascontiguousarray(frame_rgb, dtype=np.uint8), mode="RGB")
    return np.asarray(img.resize((size, size), Image.Resampling.BICUBIC))


def normalize_rgb(resized_rgb: np.ndarray) -> np.ndarray:
    """(3, H, W) float32 from (H, W, 3) uint8, in SAM2's video-loader arithmetic.

    ``load_video_frames_from_jpg_images`` divides by 255 in float64, stores the frame in a
    float32 tensor, then subtracts the mean and divides by the std in float32.
    """
    rgb = (resized_rgb.astype(np.float64) / 255.0).astype(np.float32).transpose(2, 0, 1)
    mean = np.asarray(IMAGENET_MEAN, dtype=np.float32)[:, None, None]
    std = np.asarray(IMAGENET_STD, dtype=np.float32)[:, None, None]
    return np.ascontiguousarray((rgb - mean) / std, dtype=np.float32)


def model_input(volume_u8: np.ndarray, axis: str, index: int, size: int = 512) -> np.ndarray:
    """The normalised (3, size, size) float32 image the encoder sees for one slice or frame."""
    if is_colour(volume_u8):
        if axis != "k":
            raise PreprocessError(f"colour frames are segmented along time (axis k), not {axis}")
        return normalize_rgb(resize_rgb_to_model(get_slice(volume_u8, "k", index), size))
    return normalize(resize_to_model(get_slice(volume_u8, axis, index), size))
