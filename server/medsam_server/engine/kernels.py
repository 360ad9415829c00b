"""CPU kernels for the MedSAM2 network: the same arithmetic, on the fast path of this CPU.

What a profile of a propagated slice showed (bench/bench_engine.py, 2-core AMD EPYC):
  * fp32 matrix products go to MKL's sgemm, which on AMD CPUs runs its generic code path:
    130–160 GFLOP/s where oneDNN (already in torch, and already what torch uses for bf16
    and for convolutions) reaches 300–370 on the same shapes, in true fp32 (errors of the
    order of MKL's own). Linear layers and the memory attention's large attention (1024
    queries × 7 memory frames) are ~75 % of a slice's time; both are routed to oneDNN.
  * bf16 autocast casts every weight again at each model call (its cast cache lives for one
    autocast region; each slice opens its own): bf16 copies are kept once instead.
  * the image encoder's position embeddings (a bicubic interpolation plus a tiled window
    embedding, and the neck's sine encodings copied per level) are rebuilt for every slice
    although they depend only on the weights and the image size: kept once.
  * a slice's largest temporaries are mapped and faulted in afresh by glibc every time
    (``keep_slice_buffers``).

``install_cpu_kernels`` swaps these in on a built model by changing the classes of its
modules (parameters, buffers and state_dict stay as they are). Results are equal to the
stock path within float rounding (fp32 logits within 6e-7 of the stock SAM2 predictor on
40 real-CT slices; the tests hold them to 1e-4); nothing changes off the CPU, or on a torch
without oneDNN's linear.
"""

from __future__ import annotations

import functools
import math
import platform
from typing import Any

import torch
import torch.nn.functional as F
from torch import nn

from .features import glibc_function

ONEDNN = "onednn"
STOCK = "stock"


def onednn_available() -> bool:
    """oneDNN's fused linear is in this torch, and the CPU is x86-64 (where it was measured
    faster than the BLAS torch uses; elsewhere the stock kernels are kept)."""
    return (platform.machine().lower() in ("x86_64", "amd64")
            and torch.backends.mkldnn.is_available()
            and hasattr(torch.ops.mkldnn, "_linear_pointwise"))


def linear(x: torch.Tensor, weight: torch.Tensor, bias: torch.Tensor | None) -> torch.Tensor:
    """``F.linear`` through oneDNN (weight (out, in), any leading dimensions of x). Strided
    rows are copied first: oneDNN runs them on a slow reference path (measured 30×)."""
    if not x.is_contiguous():
        x = x.contiguous()
    return torch.ops.mkldnn._linear_pointwise(x, weight, bias, "none", [], "")


# (batch x heads) up to which attention runs one oneDNN product pair per head; above, the
# heads are many small windows (Hiera's first stages: 256 windows of 16-64 tokens) where
# one batched product wins
PER_HEAD_MAX = 16


def attention(q: torch.Tensor, k: torch.Tensor, v: torch.Tensor) -> torch.Tensor:
    """``F.scaled_dot_product_attention(q, k, v)`` (no mask, no dropout) for (B, H, N, D) on
    the CPU, as softmax(q kᵀ / √D) v. In bf16 the scores are bf16 and torch's softmax
    computes in fp32 inside (one pass, no fp32 copy of the 1024 × 7232 scores).

    fp32: few heads (the memory attention: one head, 1024 × 7232 scores; Hiera's global
    attention: 4 heads) → both products through oneDNN, head by head; many small windows
    → the stock kernel. bf16: oneDNN head by head, or one batched bf16 product for many
    windows (torch's bf16 matmul is oneDNN). Either way faster than the flash kernel here
    (measured: the memory attention 47 → 27 ms a layer in fp32)."""
    heads = q.shape[0] * q.shape[1]
    scale = 1.0 / math.sqrt(q.shape[-1])
    if heads > PER_HEAD_MAX:
        if q.dtype == torch.float32:
            return F.scaled_dot_product_attention(q, k, v)
        scores = torch.matmul(q * scale, k.transpose(-1, -2))
        return torch.matmul(torch.softmax(scores, dim=-1), v)
    out = torch.empty(q.shape[:-1] + (v.shape[-1],), dtype=q.dtype, device=q.device)
    for b in range(q.shape[0]):
        for h in range(q.shape[1]):
            # q kᵀ with k as the "weight" (N_k, D); the scale folded into q (exact in bf16
            # for D = 256, a power of two) or applied in place in fp32
            if q.dtype == torch.float32:
                scores = linear(q[b, h], k[b, h].contiguous(), None).mul_(scale)
            else:
                scores = linear(q[b, h] * scale, k[b, h].contiguous(), None)
            probs = torch.softmax(scores, dim=-1)
            out[b, h] = linear(probs, v[b, h].contiguous().t(), None)
    return out


def _attention_in_precision(q: torch.Tensor, k: torch.Tensor, v: torch.Tensor) -> torch.Tensor:
    """``attention`` in the autocast dtype when CPU autocast is on (as its SDPA would)."""
    dtype = _lower_precision() or q.dtype
    return attention(q.to(dtype), k.to(dtype), v.to(dtype))


def _lower_precision() -> torch.dtype | None:
    """The CPU autocast dtype when CPU autocast is on, else None."""
    if torch.is_autocast_enabled("cpu"):
        return torch.get_autocast_dtype("cpu")
    return None


class FastLinear(nn.Linear):
    """``nn.Linear`` through oneDNN; under CPU autocast, with weight copies in the autocast
    dtype made once (not once per call), giving what autocast's linear gives."""

    _lowp: tuple[Any, torch.Tensor, torch.Tensor | None] | None = None

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        dtype = _lower_precision()
        if dtype is not None:
            weight, bias = self._weights_in(dtype)
            return linear(x.to(dtype), weight, bias)
        if x.dtype != self.weight.dtype:  # as nn.Linear would: let it raise its own error
            return super().forward(x)
        return linear(x, self.weight, self.bias)

    def _weights_in(self, dtype: torch.dtype) -> tuple[torch.Tensor, torch.Tensor | None]:
        # keyed on the weights' identity and version: a reload of the weights is seen
        key = (dtype, self.weight.data_ptr(), self.weight._version,
               None if self.bias is None else self.bias._version)
        if self._lowp is None or self._lowp[0] != key:
            bias = None if self.bias is None else self.bias.detach().to(dtype)
            self._lowp = (key, self.weight.detach().to(dtype), bias)
        return self._lowp[1], self._lowp[2]


@functools.cache  # one class per process, whatever the models
def _rope_attention_class() -> type:
    from sam2.modeling.position_encoding import apply_rotary_enc
    from sam2.modeling.sam.transformer import RoPEAttention

    class FastRoPEAttention(RoPEAttention):
        """SAM2's ``RoPEAttention.forward`` (sam2/modeling/sam/transformer.py) with
        ``attention`` in place of the flash kernel (in the autocast dtype under autocast)."""

        def forward(self, q: torch.Tensor, k: torch.Tensor, v: torch.Tensor,
                    num_k_exclude_rope: int = 0) -> torch.Tensor:
            q = self._separate_heads(self.q_proj(q), self.num_heads)
            k = self._separate_heads(self.k_proj(k), self.num_heads)
            v = self._separate_heads(self.v_proj(v), self.num_heads)
            w = h = math.sqrt(q.shape[-2])
            self.freqs_cis = self.freqs_cis.to(q.device)
            if self.freqs_cis.shape[0] != q.shape[-2]:
                self.freqs_cis = self.compute_cis(end_x=w, end_y=h).to(q.device)
            if q.shape[-2] != k.shape[-2]:
                assert self.rope_k_repeat
            num_k_rope = k.size(-2) - num_k_exclude_rope
            q, k[:, :, :num_k_rope] = apply_rotary_enc(
                q, k[:, :, :num_k_rope], freqs_cis=self.freqs_cis,
                repeat_freqs_k=self.rope_k_repeat)
            if self.training and self.dropout_p > 0:
                out = F.scaled_dot_product_attention(q, k, v, dropout_p=self.dropout_p)
            else:
                out = _attention_in_precision(q, k, v)
            return self.out_proj(self._recombine_heads(out))

    return FastRoPEAttention


@functools.cache  # one class per process, whatever the models
def _hiera_attention_class() -> type:
    from sam2.modeling.backbones.hieradet import MultiScaleAttention, do_pool

    class FastMultiScaleAttention(MultiScaleAttention):
        """Hiera's ``MultiScaleAttention.forward`` (sam2/modeling/backbones/hieradet.py)
        with ``attention`` in place of the flash kernel."""

        def forward(self, x: torch.Tensor) -> torch.Tensor:
            B, H, W, _ = x.shape
            qkv = self.qkv(x).reshape(B, H * W, 3, self.num_heads, -1)
            q, k, v = torch.unbind(qkv, 2)
            if self.q_pool:
                q = do_pool(q.reshape(B, H, W, -1), self.q_pool)
                H, W = q.shape[1:3]
                q = q.reshape(B, H * W, self.num_heads, -1)
            x = _attention_in_precision(q.transpose(1, 2), k.transpose(1, 2), v.transpose(1, 2))
            x = x.transpose(1, 2).reshape(B, H, W, -1)
            return self.proj(x)

    return FastMultiScaleAttention


def _cached_pos_embed(trunk: nn.Module) -> None:
    """Hiera's ``_get_pos_embed(hw)`` once per size (and per version of its weights)."""
    compute = trunk._get_pos_embed
    cache: dict[tuple, torch.Tensor] = {}

    def get_pos_embed(hw: tuple[int, int]) -> torch.Tensor:
        key = (tuple(hw), trunk.pos_embed._version, trunk.pos_embed_window._version,
               trunk.pos_embed.data_ptr())
        if key not in cache:
            cache.clear()
            with torch.inference_mode(False), torch.no_grad():
                cache[key] = compute(hw)
        return cache[key]

    trunk._get_pos_embed = get_pos_embed


@functools.cache  # one class per process, whatever the models
def _sine_class() -> type:
    from sam2.modeling.position_encoding import PositionEmbeddingSine

    class SharedPositionEmbeddingSine(PositionEmbeddingSine):
        """The neck's sine encodings, computed once per size as SAM2 does, but handed out as
        a broadcast view instead of a fresh copy per level and per image (read-only use)."""

        def forward(self, x: torch.Tensor) -> torch.Tensor:
            key = (x.shape[-2], x.shape[-1])
            if key not in self.cache:
                self._pe(1, x.device, *key)  # fills self.cache[key]
            pe = self.cache[key].to(x.device)
            return pe[None].expand(x.shape[0], *pe.shape)

    return SharedPositionEmbeddingSine


# glibc mallopt parameters (malloc.h)
M_TRIM_THRESHOLD, M_MMAP_THRESHOLD = -1, -3
# a slice's temporaries reach 38 MB (the encoder's first qkv, 16384 x 576 floats) and 30 MB
# (a memory-attention score matrix); glibc maps anything over 32 MB afresh on every call
# and trims the heap top above 64 MB, so each slice faulted those pages in again (measured:
# up to half of the attention's time, and most of the run-to-run spread)
MMAP_THRESHOLD_BYTES = 256 << 20
TRIM_THRESHOLD_BYTES = 1 << 30


def keep_slice_buffers() -> bool:
    """Let glibc reuse the heap for a slice's large temporaries instead of mapping and
    faulting them in per slice; returns whether it applied (glibc on Linux only). Memory
    is still handed back: at the trim threshold, and by ``features.return_freed_memory``
    when a run releases its features."""
    mallopt = glibc_function("mallopt")
    if mallopt is None:
        return False
    return bool(mallopt(M_MMAP_THRESHOLD, MMAP_THRESHOLD_BYTES)
                and mallopt(M_TRIM_THRESHOLD, TRIM_THRESHOLD_BYTES))


def kernels_of(model: nn.Module) -> str:
    """Which kernels a model runs on: ``"onednn"`` once installed, else ``"stock"``."""
    return getattr(model, "_medsam_kernels", STOCK)


def install_cpu_kernels(model: nn.Module) -> str:
    """Put the fast CPU kernels into a CPU model (once; again is a no-op); returns which
    kernels it runs on: ``"onednn"``, or ``"stock"`` on a CPU that is not x86-64 or a
    torch without oneDNN's linear."""
    if kernels_of(model) == ONEDNN or not onednn_available():
        return kernels_of(model)
    from sam2.modeling.backbones.hieradet import MultiScaleAttention
    from sam2.modeling.position_encoding import PositionEmbeddingSine
    from sam2.modeling.sam.transformer import RoPEAttention

    swaps = {nn.Linear: FastLinear, RoPEAttention: _rope_attention_class(),
             MultiScaleAttention: _hiera_attention_class(),
             PositionEmbeddingSine: _sine_class()}
    for module in model.modules():
        fast = swaps.get(type(module))
        if fast is not None:
            module.__class__ = fast
    keep_slice_buffers()
    trunk = getattr(getattr(model, "image_encoder", None), "trunk", None)
    if trunk is not None and hasattr(trunk, "pos_embed_window"):
        _cached_pos_embed(trunk)
    model._medsam_kernels = ONEDNN
    return ONEDNN
