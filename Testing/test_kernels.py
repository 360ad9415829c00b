"""CPU kernels (kernels.py): oneDNN products and attention give the stock numbers."""

from __future__ import annotations

import pytest
import torch
import torch.nn.functional as F
from medsam_server.engine import kernels
from medsam_server.engine.engine import Engine
from medsam_server.engine.model import build_model, load_checkpoint
from torch import nn

pytestmark = pytest.mark.skipif(not kernels.onednn_available(),
                                reason="oneDNN kernels are used on x86-64 CPUs only")


def _close(a: torch.Tensor, b: torch.Tensor, tol: float) -> float:
    err = float((a.double() - b.double()).abs().max())
    assert err <= tol * float(b.double().abs().max()), err
    return err


@pytest.mark.parametrize("shape_q, shape_k", [
    ((1, 1, 1024, 256), (1, 1, 7232, 256)),  # memory cross-attention (7 frames + pointers)
    ((1, 4, 1024, 96), (1, 4, 1024, 96)),    # Hiera's global attention
    ((256, 2, 16, 96), (256, 2, 64, 96)),    # Hiera's pooled windows: the stock kernel
])
def test_attention_equals_sdpa_in_fp32(shape_q, shape_k) -> None:
    g = torch.Generator().manual_seed(0)
    q = torch.randn(shape_q, generator=g)
    k, v = torch.randn(shape_k, generator=g), torch.randn(shape_k, generator=g)
    with torch.inference_mode():
        ours = kernels.attention(q, k, v)
        ref = F.scaled_dot_product_attention(q.double(), k.double(), v.double())
    _close(ours, ref, 1e-5)


def test_attention_takes_strided_heads_and_bf16() -> None:
    """Hiera hands q, k, v as transposed views of one qkv tensor; bf16 keeps a fp32 softmax."""
    g = torch.Generator().manual_seed(1)
    qkv = torch.randn(1, 1024, 3, 4, 96, generator=g)
    q, k, v = (t.transpose(1, 2) for t in torch.unbind(qkv, 2))
    assert not q.is_contiguous()
    with torch.inference_mode():
        ref = F.scaled_dot_product_attention(q.double(), k.double(), v.double())
        _close(kernels.attention(q, k, v), ref, 1e-5)
        ours = kernels.attention(q.bfloat16(), k.bfloat16(), v.bfloat16())
    assert ours.dtype == torch.bfloat16
    _close(ours, ref, 2e-2)  # bf16 inputs and output: ~3 significant digits


def test_fast_linear_equals_linear_and_keeps_bf16_weights_once() -> None:
    torch.manual_seed(0)
    layer = nn.Linear(384, 1536)
    fast = nn.Linear(384, 1536)
    fast.load_state_dict(layer.state_dict())
    fast.__class__ = kernels.FastLinear
    x = torch.randn(2, 64, 384)
    with torch.inference_mode():
        _close(fast(x), layer(x), 1e-5)
        with torch.autocast("cpu", dtype=torch.bfloat16):
            ours, ref = fast(x), layer(x)
            assert ours.dtype == ref.dtype == torch.bfloat16
            _close(ours, ref, 1e-2)
            cast = fast._lowp
            fast(x)
            assert fast._lowp is cast  # not cast again per call
    with torch.no_grad():
        fast.weight.mul_(2.0)  # new weights: the bf16 copy follows
        layer.weight.mul_(2.0)
    with torch.inference_mode(), torch.autocast("cpu", dtype=torch.bfloat16):
        _close(fast(x), layer(x), 1e-2)
        assert fast._lowp is not cast


def test_installed_model_equals_the_stock_model(random_checkpoint) -> None:
    """The whole image encoder and a memory-conditioned tracking step, fp32, within 1e-4;
    the state_dict is untouched, so a strict checkpoint load still works after install."""
    stock, fast = build_model(), build_model()
    for m in (stock, fast):
        load_checkpoint(m, random_checkpoint)
    assert kernels.install_cpu_kernels(fast) == kernels.ONEDNN
    assert kernels.install_cpu_kernels(fast) == kernels.ONEDNN  # again: a no-op
    assert kernels.kernels_of(stock) == kernels.STOCK
    assert list(fast.state_dict()) == list(stock.state_dict())
    load_checkpoint(fast, random_checkpoint)
    kinds = {type(m).__name__ for m in fast.modules()}
    assert {"FastLinear", "FastRoPEAttention", "FastMultiScaleAttention",
            "SharedPositionEmbeddingSine"} <= kinds and "Linear" not in kinds
    image = torch.randn(1, 3, 512, 512, generator=torch.Generator().manual_seed(0))
    with torch.inference_mode():
        a, b = stock.forward_image(image), fast.forward_image(image)
        for x, y in zip(a["backbone_fpn"] + a["vision_pos_enc"],
                        b["backbone_fpn"] + b["vision_pos_enc"], strict=True):
            assert x.shape == y.shape
            _close(y, x, 1e-4)
        memory = torch.randn(7232, 1, 64, generator=torch.Generator().manual_seed(2))
        pos = torch.randn(7232, 1, 64, generator=torch.Generator().manual_seed(3))
        curr = [a["backbone_fpn"][-1].flatten(2).permute(2, 0, 1)]
        curr_pos = [a["vision_pos_enc"][-1].flatten(2).permute(2, 0, 1)]
        args = dict(curr=curr, curr_pos=curr_pos, memory=memory, memory_pos=pos,
                    num_obj_ptr_tokens=64)
        _close(fast.memory_attention(**args), stock.memory_attention(**args), 1e-4)


def test_stock_kernels_where_onednn_is_missing(monkeypatch, random_checkpoint) -> None:
    monkeypatch.setattr(kernels, "onednn_available", lambda: False)
    model = build_model()
    assert kernels.install_cpu_kernels(model) == kernels.STOCK
    assert not any(type(m).__name__.startswith("Fast") for m in model.modules())
    engine = Engine(model, torch.device("cpu"), precision="fp32")
    assert engine.kernels == "stock"


def test_engine_reports_its_kernels(engine: Engine) -> None:
    from medsam_server.cli.options import precision_note

    assert engine.kernels == "onednn"
    assert precision_note(engine).endswith("onednn kernels")
    # an engine asked for no kernels on a model that has them says what it runs
    assert Engine(engine.model, engine.device, cpu_kernels=False).kernels == "onednn"
    assert Engine(build_model(), torch.device("cpu"), cpu_kernels=False).kernels == "stock"


def test_slice_buffers_are_kept_on_glibc() -> None:
    """A 40 MB temporary (over glibc's 32 MB mmap ceiling) is taken from the heap, where a
    later one reuses its pages, instead of being mapped and faulted in afresh each time
    (counted by the kernel's fault counter, not timed; without ``keep_slice_buffers`` every
    one of these temporaries faults all its 10240 pages)."""
    import resource
    import sys

    if not sys.platform.startswith("linux"):
        pytest.skip("glibc only")
    assert kernels.keep_slice_buffers() is True
    size = 40 << 20

    def faults_of_a_temporary() -> int:
        before = resource.getrusage(resource.RUSAGE_SELF).ru_minflt
        torch.empty(size, dtype=torch.uint8).fill_(1)  # written, then freed at once
        return resource.getrusage(resource.RUSAGE_SELF).ru_minflt - before

    first = torch.empty(size, dtype=torch.uint8).fill_(1)
    live = torch.ones(1 << 20)  # a slice's other tensors stay live above it in the heap
    del first
    assert min(faults_of_a_temporary() for _ in range(4)) < size // 4096 // 10
    del live
