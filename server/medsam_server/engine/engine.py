"""The MedSAM2 model steps a session needs, over Meta's ``SAM2Base``.

One ``Engine`` owns the network and the device. It turns a slice into cached
encoder features, a prompt into a conditioning-slice output, and a tracked slice
into an output conditioned on the memory of earlier slices, keeping outputs in the
compact form SAM2's video predictor keeps (bf16 memory features, low-res logits).
Sessions (``session.py``) hold the per-volume state and the propagation logic.
"""

from __future__ import annotations

import os
from collections.abc import Callable
from dataclasses import dataclass
from typing import Any, NamedTuple

import numpy as np
import torch
import torch.nn.functional as F

from .features import FeatureCache, tensors_nbytes
from .kernels import install_cpu_kernels, kernels_of
from .model import (
    FILL_HOLE_AREA,
    IMAGE_SIZE,
    DeviceError,
    autocast_for,
    check_autocast,
    load_model,
    resolve_precision,
)
from .postprocess import fill_small_holes
from .prompts import Prompt

DEFAULT_FEATURE_CACHE_BYTES = 2 << 30
# slices encoded in one image-encoder call during propagation. CPU: measured, batches of 2
# cost the same per slice as 1 and batches of 4 up to 30 % more (cache pressure); a GPU is
# underused by one 512² slice (bench/bench_gpu.py scans the sizes)
DEFAULT_ENCODE_BATCH = {"cpu": 1, "cuda": 8, "mps": 1}


@dataclass
class StepOutput:
    """One slice's result: what the user sees, and its compact memory entry.

    A prompted slice's memory entry is made only when a propagation first reads it
    (``memory``): the memory encoder is half of a box's cost once the slice's features
    are cached, and the user waits for the box, not for memory. Same inputs, same
    arithmetic, so the numbers are those of encoding it at once.
    """

    lowres: torch.Tensor  # (1, 1, 128, 128) float32 logits after hole filling, on CPU
    iou: float
    object_score: float  # probability that the object is on this slice
    _memory: dict[str, Any] | None = None  # maskmem_features, maskmem_pos_enc, pred_masks, ...
    _make_memory: Callable[[], dict[str, Any]] | None = None

    @property
    def memory(self) -> dict[str, Any]:
        if self._memory is None:
            assert self._make_memory is not None
            self._memory, self._make_memory = self._make_memory(), None
        return self._memory

    def mask(self, shape: tuple[int, int]) -> np.ndarray:
        """Boolean mask at slice resolution: bilinear upsampling of the logits, then > 0."""
        return upsample_logits(self.lowres, shape) > 0


class SamHeads(NamedTuple):
    """What SAM2's ``_forward_sam_heads`` returns (the 2nd item of ``_track_step``), by name."""

    low_res_multimasks: torch.Tensor
    high_res_multimasks: torch.Tensor
    ious: torch.Tensor
    low_res_masks: torch.Tensor
    high_res_masks: torch.Tensor
    obj_ptr: torch.Tensor
    object_score_logits: torch.Tensor


def _sam_heads(outputs: tuple) -> SamHeads:
    # a sam2 release that changes this tuple must fail here, not shift a tensor silently
    if len(outputs) != len(SamHeads._fields):
        raise RuntimeError(f"SAM2's _track_step returned {len(outputs)} head outputs, this engine "
                           f"knows {len(SamHeads._fields)} ({', '.join(SamHeads._fields)}); "
                           "use the pinned sam2 (server/requirements-sam2.txt)")
    return SamHeads(*outputs)


def _first_line(exc: BaseException) -> str:
    lines = str(exc).strip().splitlines()
    return lines[0][:300] if lines else ""


def upsample_logits(lowres: torch.Tensor, shape: tuple[int, int]) -> np.ndarray:
    up = F.interpolate(lowres.float(), size=shape, mode="bilinear", align_corners=False)
    return up[0, 0].numpy()


class Engine:
    """The network on one device plus helpers to run SAM2 steps on single slices."""

    def __init__(self, model: torch.nn.Module, device: torch.device, *,
                 precision: str = "auto", encode_batch: int | None = None,
                 feature_cache_bytes: int = DEFAULT_FEATURE_CACHE_BYTES,
                 fill_hole_area: int = FILL_HOLE_AREA, cpu_kernels: bool = True) -> None:
        self.model = model
        self.device = device
        self.precision = resolve_precision(precision, device)  # "fp32" or "bf16"
        check_autocast(device, self.precision)
        if encode_batch is None:
            encode_batch = DEFAULT_ENCODE_BATCH.get(device.type, 1)
        if encode_batch < 1:
            raise DeviceError(f"encode_batch must be >= 1, got {encode_batch}")
        self.encode_batch = encode_batch
        # the CPU's kernels (kernels.py): "onednn" or "stock" (always stock off the CPU)
        self.kernels = install_cpu_kernels(model) if cpu_kernels and device.type == "cpu" \
            else kernels_of(model)
        self.compiled = "off"  # see compile_encoder: "off", "on" or "failed: <why>"
        self.feature_cache_bytes = feature_cache_bytes
        self.fill_hole_area = fill_hole_area
        self.image_size = int(model.image_size)
        if self.image_size != IMAGE_SIZE:
            raise ValueError(f"model image size {self.image_size} is not MedSAM2's {IMAGE_SIZE}")
        self.encoder_calls = 0  # slices encoded
        self.encoder_batches = 0  # image-encoder forward passes
        self.slice_feature_bytes = 0  # one slice's cached features (known after one encode)
        self._pos_enc: list[torch.Tensor] | None = None  # depends only on the image size
        self._maskmem_pos_enc: list[torch.Tensor] | None = None

    @classmethod
    def from_checkpoint(cls, checkpoint: str | os.PathLike, device: str = "auto",
                        threads: int | None = None, precision: str = "auto",
                        **kwargs: Any) -> Engine:
        if threads is not None:
            if threads < 1:
                raise DeviceError("--threads must be >= 1")
            # measured: re-setting torch's own default (2 of 2 cores) costs ~15 % per slice
            # on CPU, so only change it when it really changes
            if threads != torch.get_num_threads():
                torch.set_num_threads(threads)
        resolve_precision(precision, torch.device("cpu"))  # a bad name fails before the load
        model, dev = load_model(checkpoint, device)
        return cls(model, dev, precision=precision, **kwargs)

    def autocast(self) -> Any:
        """The autocast context of this engine's precision (none for fp32)."""
        return autocast_for(self.device, self.precision)

    def compile_encoder(self) -> str:
        """``torch.compile`` the image encoder (long-lived servers: compiling takes minutes,
        then every slice is faster). Compiles now, on dummy batches of 1 and
        ``encode_batch`` images (the second makes the batch size dynamic), so a failure shows
        here: the encoder then stays eager and ``compiled`` says why. Returns ``compiled``."""
        eager = self.model.image_encoder
        try:
            self.model.image_encoder = torch.compile(eager)
            dummy = np.zeros((3, self.image_size, self.image_size), np.float32)
            for n in sorted({1, self.encode_batch}):
                self.encode_many([dummy] * n)
        except Exception as exc:  # inductor needs a C++ compiler/Triton: keep serving, eager
            self.model.image_encoder = eager
            self.compiled = f"failed: {type(exc).__name__}: {_first_line(exc)}"
        else:
            self.compiled = "on"
        return self.compiled

    def new_cache(self) -> FeatureCache:
        return FeatureCache(self.feature_cache_bytes)

    # ---- image features -------------------------------------------------------------
    def encode(self, image: np.ndarray) -> list[torch.Tensor]:
        """Run the image encoder on one normalised (3, 512, 512) image; returns FPN levels."""
        return self.encode_many([image])[0]

    @torch.inference_mode()
    def encode_many(self, images: list[np.ndarray]) -> list[list[torch.Tensor]]:
        """Encode several normalised (3, 512, 512) images in one forward pass; returns each
        one's FPN levels, as ``encode`` gives them (batch dimension 1, own storage)."""
        if not images:
            return []
        host = torch.from_numpy(np.stack(images)) if len(images) > 1 \
            else torch.from_numpy(images[0])[None]
        if self.device.type == "cuda":  # page-locked: a DMA copy, no staging by the driver
            batch = host.pin_memory().to(self.device, non_blocking=True)
        else:
            batch = host.to(self.device)
        with self.autocast():
            out = self.model.forward_image(batch)
        self.encoder_calls += len(images)
        self.encoder_batches += 1
        if self._pos_enc is None:  # the same for every image: keep one
            self._pos_enc = [p[0:1].clone() for p in out["vision_pos_enc"]]
        fpn = list(out["backbone_fpn"])
        if len(images) == 1:
            per_image = [fpn]
        else:  # a clone per image: a view would keep the whole batch alive in the cache
            per_image = [[level[i:i + 1].clone() for level in fpn] for i in range(len(images))]
        self.slice_feature_bytes = tensors_nbytes(per_image[0])
        return per_image

    def prepare(self, fpn: list[torch.Tensor]) -> tuple[list, list, list]:
        """Flatten cached FPN levels the way SAM2's tracking step expects them."""
        assert self._pos_enc is not None
        _, feats, pos, sizes = self.model._prepare_backbone_features(
            {"backbone_fpn": fpn, "vision_pos_enc": self._pos_enc}
        )
        return feats, pos, sizes

    # ---- SAM2 steps ----------------------------------------------------------------
    @torch.inference_mode()
    def prompt_step(self, fpn: list[torch.Tensor], prompt: Prompt, slice_shape: tuple[int, int],
                    frame_idx: int, num_frames: int,
                    prev_logits: torch.Tensor | None = None) -> StepOutput:
        """A conditioning slice from a box/points or a mask prompt (no memory used).

        Its memory entry is encoded from the hole-filled low-res logits upsampled to
        512 px with ``is_mask_from_pts=True``, as SAM2 does when it consolidates a
        prompted frame before tracking.
        """
        feats, pos, sizes = self.prepare(fpn)
        point_inputs = mask_inputs = None
        if prompt.is_mask:
            mask_inputs = self._mask_input(prompt.mask)
            prev_logits = None
        else:
            point_inputs = self._point_inputs(prompt, slice_shape)
            if prev_logits is not None:
                prev_logits = torch.clamp(prev_logits.to(self.device), -32.0, 32.0)
        with self.autocast():
            heads = self._track(frame_idx=frame_idx, is_init_cond_frame=True, feats=feats,
                                pos=pos, sizes=sizes, point_inputs=point_inputs,
                                mask_inputs=mask_inputs, output_dict={}, num_frames=num_frames,
                                reverse=False, prev_logits=prev_logits)
            lowres = self._fill_holes(heads.low_res_masks)
        obj_ptr, score = heads.obj_ptr, heads.object_score_logits  # all it keeps of heads

        @torch.inference_mode()
        def make_memory() -> dict[str, Any]:
            with self.autocast():
                high = F.interpolate(lowres.to(self.device), size=(self.image_size,) * 2,
                                     mode="bilinear", align_corners=False)
                maskmem, maskmem_pos = self.model._encode_new_memory(
                    current_vision_feats=feats, feat_sizes=sizes, pred_masks_high_res=high,
                    object_score_logits=score, is_mask_from_pts=True,
                )
            return self._memory_entry(maskmem, maskmem_pos, lowres, obj_ptr, score)

        return self._output(lowres, heads, make_memory=make_memory)

    @torch.inference_mode()
    def track_step(self, fpn: list[torch.Tensor], memory: dict[str, dict[int, dict]],
                   frame_idx: int, num_frames: int, reverse: bool) -> StepOutput:
        """A slice conditioned on ``memory`` (SAM2's output_dict), then memory-encoded."""
        feats, pos, sizes = self.prepare(fpn)
        with self.autocast():
            heads = self._track(frame_idx=frame_idx, is_init_cond_frame=False, feats=feats,
                                pos=pos, sizes=sizes, point_inputs=None, mask_inputs=None,
                                output_dict=memory, num_frames=num_frames, reverse=reverse,
                                prev_logits=None)
            # SAM2 encodes memory from the decoder's high-res masks (before hole filling)
            maskmem, maskmem_pos = self.model._encode_new_memory(
                current_vision_feats=feats, feat_sizes=sizes,
                pred_masks_high_res=heads.high_res_masks,
                object_score_logits=heads.object_score_logits, is_mask_from_pts=False,
            )
        lowres = self._fill_holes(heads.low_res_masks)
        memory = self._memory_entry(maskmem, maskmem_pos, lowres, heads.obj_ptr,
                                    heads.object_score_logits)
        return self._output(lowres, heads, memory=memory)

    def _track(self, *, frame_idx: int, is_init_cond_frame: bool, feats: list, pos: list,
               sizes: list, point_inputs: dict | None, mask_inputs: torch.Tensor | None,
               output_dict: dict, num_frames: int, reverse: bool,
               prev_logits: torch.Tensor | None) -> SamHeads:
        """SAM2's private ``_track_step``, called by keyword so that a sam2 update that
        renames or reorders its parameters fails loudly instead of shifting them."""
        _current_out, sam_outputs, _high_res_features, _pix_feat = self.model._track_step(
            frame_idx=frame_idx, is_init_cond_frame=is_init_cond_frame,
            current_vision_feats=feats, current_vision_pos_embeds=pos, feat_sizes=sizes,
            point_inputs=point_inputs, mask_inputs=mask_inputs, output_dict=output_dict,
            num_frames=num_frames, track_in_reverse=reverse, prev_sam_mask_logits=prev_logits,
        )
        return _sam_heads(sam_outputs)

    # ---- helpers -------------------------------------------------------------------
    def _point_inputs(self, prompt: Prompt, slice_shape: tuple[int, int]) -> dict:
        rows, cols = slice_shape
        coords: list[tuple[float, float]] = []
        labels: list[int] = []
        if prompt.box is not None:  # a box is two points labelled 2 and 3, as SAM2 trains
            x0, y0, x1, y1 = prompt.box
            coords += [(x0, y0), (x1, y1)]
            labels += [2, 3]
        coords += list(prompt.points)
        labels += list(prompt.labels)
        pts = torch.tensor(coords, dtype=torch.float32)[None]
        pts = pts / torch.tensor([cols, rows]) * self.image_size
        return {"point_coords": pts.to(self.device),
                "point_labels": torch.tensor(labels, dtype=torch.int32)[None].to(self.device)}

    def _mask_input(self, mask: np.ndarray) -> torch.Tensor:
        m = torch.from_numpy(np.ascontiguousarray(mask)).float()[None, None].to(self.device)
        if m.shape[-2:] != (self.image_size, self.image_size):
            m = F.interpolate(m, size=(self.image_size,) * 2, mode="bilinear",
                              align_corners=False, antialias=True)
            m = (m >= 0.5).float()
        return m

    def _fill_holes(self, lowres: torch.Tensor) -> torch.Tensor:
        # SAM2 does this with a CUDA kernel and silently skips it elsewhere; we do it on
        # every device so CPU, MPS and CUDA give the same masks.
        arr = lowres.float().cpu().numpy()
        if self.fill_hole_area > 0:
            arr = fill_small_holes(arr, self.fill_hole_area)
        return torch.from_numpy(np.ascontiguousarray(arr, dtype=np.float32))

    def _memory_entry(self, maskmem: torch.Tensor, maskmem_pos: list[torch.Tensor],
                      lowres: torch.Tensor, obj_ptr: torch.Tensor,
                      score: torch.Tensor) -> dict[str, Any]:
        """The compact memory entry SAM2's video predictor keeps (bf16 memory features)."""
        if self._maskmem_pos_enc is None:  # identical for every slice: keep one copy
            self._maskmem_pos_enc = [p[0:1].clone() for p in maskmem_pos]
        return {
            "maskmem_features": maskmem.to(torch.bfloat16),
            "maskmem_pos_enc": self._maskmem_pos_enc,
            "pred_masks": lowres.to(self.device),
            "obj_ptr": obj_ptr,
            "object_score_logits": score,
        }

    @staticmethod
    def _output(lowres: torch.Tensor, heads: SamHeads, *,
                memory: dict[str, Any] | None = None,
                make_memory: Callable[[], dict[str, Any]] | None = None) -> StepOutput:
        return StepOutput(
            lowres=lowres,
            iou=float(heads.ious.float().max()),
            object_score=float(torch.sigmoid(heads.object_score_logits.float()).max()),
            _memory=memory, _make_memory=make_memory,
        )
