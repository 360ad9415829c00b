"""The baseline: Meta's stock SAM2 legacy video predictor driven the MedSAM2 way.

Used by the parity tests and the benchmarks. It follows ``medsam2_infer_3D_CT.py``:
every slice resized to 512 through PIL (grey → RGB → bicubic), /255, ImageNet
mean/std in float64, ``init_state`` on the preloaded frames, box on the key slice,
propagate forward, ``reset_state``, same box, propagate in reverse, OR of
``logits > 0``. MedSAM2 feeds preloaded frames through its own ``init_state``; the
legacy predictor loads JPEG folders, so ``init_state_from_frames`` below builds the
same state around preloaded frames and then defers to the stock code for the rest.

Only test/benchmark code: the product never imports this.
"""

from __future__ import annotations

import numpy as np
import torch
from PIL import Image


def install_cpu_connected_components() -> None:
    """Stand-in for sam2's CUDA connected-components op (there is no GPU here).

    Without it the stock predictor warns and skips MedSAM2's hole filling on CPU.
    """
    import sam2.utils.misc as misc
    from skimage.measure import label

    def get_connected_components(mask: torch.Tensor) -> tuple[torch.Tensor, torch.Tensor]:
        arr = mask.detach().cpu().numpy().astype(bool)
        labels = np.zeros(arr.shape, dtype=np.int32)
        counts = np.zeros(arr.shape, dtype=np.int32)
        for n in range(arr.shape[0]):
            lab = label(arr[n, 0], connectivity=2)
            sizes = np.bincount(lab.ravel())
            sizes[0] = 0
            labels[n, 0] = lab
            counts[n, 0] = sizes[lab]
        return (torch.from_numpy(labels).to(mask.device),
                torch.from_numpy(counts).to(mask.device))

    misc.get_connected_components = get_connected_components


def build_reference_predictor(checkpoint: str, device: str = "cpu"):  # noqa: ANN201
    """The stock legacy predictor with MedSAM2's config and build-time settings."""
    from hydra.utils import instantiate

    if not str(device).startswith("cuda"):
        install_cpu_connected_components()
    from medsam_server.engine.model import FILL_HOLE_AREA, _load_config

    cfg = _load_config()
    cfg.model._target_ = "sam2.sam2_video_predictor_legacy.SAM2VideoPredictor"
    cfg.model.fill_hole_area = FILL_HOLE_AREA
    predictor = instantiate(cfg.model, _recursive_=True)
    sd = torch.load(checkpoint, map_location="cpu", weights_only=True)["model"]
    predictor.load_state_dict(sd, strict=True)
    return predictor.to(device).eval()


def medsam2_frames(volume_u8: np.ndarray, image_size: int = 512) -> torch.Tensor:
    """MedSAM2's ``resize_grayscale_to_rgb_and_resize`` + normalisation (float64)."""
    d = volume_u8.shape[0]
    out = np.zeros((d, 3, image_size, image_size))
    for i in range(d):
        rgb = Image.fromarray(volume_u8[i].astype(np.uint8)).convert("RGB")
        out[i] = np.array(rgb.resize((image_size, image_size))).transpose(2, 0, 1)
    frames = torch.from_numpy(out / 255.0)
    mean = torch.tensor((0.485, 0.456, 0.406), dtype=torch.float32)[:, None, None]
    std = torch.tensor((0.229, 0.224, 0.225), dtype=torch.float32)[:, None, None]
    frames -= mean
    frames /= std
    return frames


@torch.inference_mode()
def init_state_from_frames(predictor, frames: torch.Tensor, height: int, width: int) -> dict:  # noqa: ANN001
    """The legacy ``init_state`` with frames given instead of a JPEG folder."""
    import sam2.sam2_video_predictor_legacy as legacy

    original = legacy.load_video_frames
    legacy.load_video_frames = lambda **_: (frames, height, width)
    try:
        return predictor.init_state(video_path="<preloaded>")
    finally:
        legacy.load_video_frames = original


@torch.inference_mode()
def reference_segment(predictor, volume_u8: np.ndarray, key: int, box: tuple,  # noqa: ANN001
                      frames: torch.Tensor | None = None, keep_logits: bool = False):  # noqa: ANN201
    """Box on ``key`` → forward, reset, box → reverse; OR of logits > 0.

    Returns the uint8 mask volume and, with ``keep_logits``, {slice: video-res logits}.
    """
    if frames is None:
        frames = medsam2_frames(volume_u8)
    h, w = volume_u8.shape[1:]
    seg = np.zeros(volume_u8.shape, dtype=np.uint8)
    logits: dict[int, np.ndarray] = {}
    state = init_state_from_frames(predictor, frames, h, w)
    for reverse in (False, True):
        predictor.add_new_points_or_box(state, frame_idx=key, obj_id=1, box=np.array(box))
        for idx, _, out in predictor.propagate_in_video(state, reverse=reverse):
            seg[idx, (out[0] > 0.0).cpu().numpy()[0]] = 1
            if keep_logits:
                logits[idx] = out[0, 0].float().cpu().numpy()
        predictor.reset_state(state)
    return (seg, logits) if keep_logits else seg


def sam2_video_frames(frames_u8: np.ndarray, folder: str, image_size: int = 512) -> torch.Tensor:
    """Frames as SAM2's own video loader makes them (``load_video_frames_from_jpg_images``).

    Each frame is written losslessly (PNG) and read back by sam2's ``_load_img_as_tensor``
    (PIL → RGB → resize → /255), then normalised in float32 as that loader does. Grey
    (T, H, W) or colour (T, H, W, 3) uint8.
    """
    import os

    from sam2.utils.misc import _load_img_as_tensor

    images = torch.zeros(len(frames_u8), 3, image_size, image_size, dtype=torch.float32)
    for n, frame in enumerate(frames_u8):
        path = os.path.join(folder, f"{n:05d}.png")
        Image.fromarray(np.ascontiguousarray(frame)).save(path)
        images[n], _, _ = _load_img_as_tensor(path, image_size)
    mean = torch.tensor((0.485, 0.456, 0.406), dtype=torch.float32)[:, None, None]
    std = torch.tensor((0.229, 0.224, 0.225), dtype=torch.float32)[:, None, None]
    images -= mean
    images /= std
    return images


@torch.inference_mode()
def reference_video(predictor, frames: torch.Tensor, height: int, width: int, key: int,  # noqa: ANN001
                    box: tuple, directions: tuple[bool, ...] = (False,)) -> dict[int, np.ndarray]:
    """``medsam2_infer_video.py``'s recipe: prompt the key frame, propagate forward (then,
    for both directions, reset and the same box in reverse). {frame: video-res logits}."""
    logits: dict[int, np.ndarray] = {}
    state = init_state_from_frames(predictor, frames, height, width)
    for reverse in directions:
        predictor.add_new_points_or_box(state, frame_idx=key, obj_id=1, box=np.array(box))
        for idx, _, out in predictor.propagate_in_video(state, reverse=reverse):
            logits[idx] = out[0, 0].float().cpu().numpy()  # the key frame: same both ways
        predictor.reset_state(state)
    return logits
