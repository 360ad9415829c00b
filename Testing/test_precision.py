"""--precision (auto/fp32/bf16) and the GPU-path work done on CPU: batched encoding ahead of
the memory chain, torch.compile wiring, /info and CLI reporting."""

from __future__ import annotations

import argparse
import logging
import sys
from pathlib import Path

import numpy as np
import pytest
import torch
from medsam_client import protocol as P
from medsam_server.checkpoints import DeviceError
from medsam_server.engine import model as model_module
from medsam_server.engine.engine import Engine
from medsam_server.engine.model import (
    autocast_for,
    check_autocast,
    cpu_has_native_bf16,
    resolve_precision,
)
from medsam_server.engine.prompts import Prompt
from medsam_server.engine.session import Session

KEY, BOX = 3, (30, 25, 80, 70)
CPU, CUDA, MPS = torch.device("cpu"), torch.device("cuda"), torch.device("mps")


@pytest.fixture(scope="module")
def vol(ct_u8: np.ndarray) -> np.ndarray:
    """Seven real CT slices around the liver (as test_engine.py)."""
    return np.ascontiguousarray(ct_u8[11:18])


@pytest.fixture(scope="module")
def fp32(random_checkpoint: Path) -> Engine:
    return Engine.from_checkpoint(random_checkpoint, "cpu", precision="fp32")


def _like(engine: Engine, **kwargs: object) -> Engine:
    """Another engine on the same network (cheap: the weights are shared)."""
    return Engine(engine.model, engine.device, **kwargs)  # type: ignore[arg-type]


def _segment(engine: Engine, vol: np.ndarray) -> Session:
    session = Session(engine, vol)
    session.add_prompt(1, "k", KEY, Prompt(box=BOX))
    session.propagate(1)
    return session


# ---- choosing the precision ---------------------------------------------------------------


@pytest.mark.parametrize("flags, expected", [
    ({"fpu", "avx2", "avx512f", "avx512_bf16"}, "bf16"),  # e.g. AMD Zen 4, Cooper Lake
    ({"avx2", "amx_tile", "amx_bf16"}, "bf16"),  # Sapphire Rapids
    ({"avx2", "avx512f", "avx512bw"}, "fp32"),  # AVX-512 without bf16: emulated, no faster
    (set(), "fp32"),  # not Linux, or nothing readable
])
def test_auto_on_cpu_follows_the_bf16_flags(monkeypatch, flags: set[str], expected: str) -> None:
    monkeypatch.setattr(model_module, "cpu_flags", lambda: frozenset(flags))
    assert cpu_has_native_bf16() is (expected == "bf16")
    assert resolve_precision("auto", CPU) == expected


def test_cpu_flags_come_from_proc_cpuinfo() -> None:
    flags = model_module.cpu_flags()
    if not Path("/proc/cpuinfo").exists():
        assert flags == frozenset()
    else:
        assert "fpu" in flags or not flags  # x86 lists fpu; other architectures say Features


@pytest.mark.parametrize("has_bf16", [True, False])
def test_auto_engine_on_cpu(monkeypatch, fp32: Engine, has_bf16: bool) -> None:
    monkeypatch.setattr(model_module, "cpu_has_native_bf16", lambda: has_bf16)
    engine = _like(fp32)
    assert engine.precision == ("bf16" if has_bf16 else "fp32")
    # what the engine's steps run under
    with engine.autocast():
        assert torch.is_autocast_enabled("cpu") is has_bf16


def test_explicit_precisions_and_devices(monkeypatch) -> None:
    monkeypatch.setattr(model_module, "cpu_has_native_bf16", lambda: False)
    assert resolve_precision("bf16", CPU) == "bf16"  # asked for: used even if emulated
    monkeypatch.setattr(model_module, "cpu_has_native_bf16", lambda: True)
    assert resolve_precision("fp32", CPU) == "fp32"
    assert resolve_precision("FP32", CPU) == "fp32"
    assert resolve_precision("auto", CUDA) == "bf16"  # MedSAM2's own recipe
    assert resolve_precision("fp32", CUDA) == "fp32"
    assert resolve_precision("auto", MPS) == "fp32"  # bf16 on MPS is not verified


def test_cuda_engine_is_bf16(monkeypatch, fp32: Engine) -> None:
    """An engine on a (mocked) CUDA device picks bf16 and batches the encoder."""
    import medsam_server.engine.engine as engine_module

    # a CPU build of torch cannot autocast on CUDA: only the choice is tested here
    monkeypatch.setattr(engine_module, "check_autocast", lambda device, precision: None)
    engine = Engine(fp32.model, CUDA)
    assert engine.precision == "bf16" and engine.encode_batch > 1


@pytest.mark.parametrize("bad", ["fp16", "", "bfloat16", "half"])
def test_bad_precision_is_refused_before_the_checkpoint_is_read(bad: str, tmp_path) -> None:
    with pytest.raises(DeviceError, match=r"unknown precision .*use auto, fp32 or bf16"):
        resolve_precision(bad, CPU)
    # the checkpoint does not exist: the precision is the error reported
    with pytest.raises(DeviceError, match="unknown precision"):
        Engine.from_checkpoint(tmp_path / "missing.pt", "cpu", precision=bad)


def test_an_autocast_torch_ignores_is_an_error(monkeypatch) -> None:
    """torch.autocast only warns for a device/dtype it cannot do: we refuse instead."""
    import contextlib

    check_autocast(CPU, "bf16")  # this torch does bf16 autocast on CPU
    monkeypatch.setattr(model_module, "autocast_for",
                        lambda device, precision: contextlib.nullcontext())
    with pytest.raises(DeviceError, match="--precision bf16 is not supported on cpu"):
        check_autocast(CPU, "bf16")
    with pytest.raises(DeviceError, match="fp32 or bf16 here"):
        autocast_for(CPU, "auto")  # only a resolved precision runs


# ---- bf16 against fp32 --------------------------------------------------------------------


def test_bf16_agrees_with_fp32_on_real_ct(fp32: Engine, vol: np.ndarray) -> None:
    """bf16 autocast on CPU runs every op of the encoder, memory attention, memory encoder
    and decoder, and agrees with fp32. With random weights the masks mean nothing, so the
    bound is loose; the figure is printed (pytest -s) and reported in the README."""
    bf16 = _like(fp32, precision="bf16")
    a, b = _segment(fp32, vol), _segment(bf16, vol)
    ma, mb = a.mask(1), b.mask(1)
    assert 0 < ma.sum() < ma.size
    dice = 2 * np.count_nonzero(ma & mb) / (np.count_nonzero(ma) + np.count_nonzero(mb))
    per_slice = [2 * np.count_nonzero(ma[k] & mb[k]) / max(1, ma[k].sum() + mb[k].sum())
                 for k in range(vol.shape[0]) if ma[k].any() or mb[k].any()]
    print(f"bf16 vs fp32 on 7 CT slices (random weights): Dice {dice:.4f}, "
          f"worst slice {min(per_slice):.4f}")
    assert dice > 0.9
    # the cached features are bf16 where autocast made them so: about half the bytes
    assert bf16.slice_feature_bytes < 0.7 * fp32.slice_feature_bytes


# ---- encoding ahead of the memory chain ---------------------------------------------------


def test_batched_encoding_equals_one_by_one(fp32: Engine, vol: np.ndarray) -> None:
    from medsam_server.engine.preprocess import model_input

    images = [model_input(vol, "k", k) for k in range(3)]
    one = [fp32.encode(im) for im in images]
    batch = fp32.encode_many(images)
    for a, b in zip(one, batch, strict=True):
        for x, y in zip(a, b, strict=True):
            assert x.shape == y.shape and x.shape[0] == 1
            assert float((x - y).abs().max()) < 1e-4
            # each slice owns its storage: the cache counts what it really keeps
            assert y.untyped_storage().nbytes() == y.numel() * y.element_size()


def test_propagation_with_batched_encoding_equals_one_by_one(fp32: Engine,
                                                             vol: np.ndarray) -> None:
    batched = _like(fp32, precision="fp32", encode_batch=4)
    a, b = _segment(fp32, vol), _segment(batched, vol)
    np.testing.assert_array_equal(a.mask(1), b.mask(1))
    worst = max(float(np.abs(a.slice_logits(1, "k", k) - b.slice_logits(1, "k", k)).max())
                for k in range(vol.shape[0]))
    assert worst < 1e-4
    # key slice alone (prompt), then 4..6 in one batch forward, 0..2 in one batch backward
    assert batched.encoder_calls == vol.shape[0] and batched.encoder_batches == 3


def test_a_batch_never_outgrows_the_cache_or_the_pass(fp32: Engine, vol: np.ndarray) -> None:
    fp32.encode(np.zeros((3, 512, 512), np.float32))  # slice_feature_bytes known
    per_slice = fp32.slice_feature_bytes
    small = _like(fp32, precision="fp32", encode_batch=8,
                  feature_cache_bytes=int(2.5 * per_slice))
    session = Session(small, vol)
    session.add_prompt(1, "k", KEY, Prompt(box=BOX))
    session.add_prompt(1, "k", 0, Prompt(box=BOX))
    calls = small.encoder_calls
    batches = small.encoder_batches
    # backward from KEY stops at the prompted slice 0: 2 and 1 only, then forward 4, 5 | 6
    report = session.propagate(1, start=KEY, converge_iou=1.1)
    assert sorted(report.slices) == [1, 2, 3, 4, 5, 6]
    assert small.encoder_calls - calls == 5  # 4, 5, 6, 2, 1: none twice, 0 never
    assert small.encoder_batches - batches == 3  # (4, 5), (6), (2, 1): at most 2 fit
    assert session.cache.nbytes <= small.feature_cache_bytes


def test_a_batch_stays_within_the_range(fp32: Engine, vol: np.ndarray) -> None:
    batched = _like(fp32, precision="fp32", encode_batch=2)
    session = Session(batched, vol)
    session.add_prompt(1, "k", KEY, Prompt(box=BOX))
    calls = batched.encoder_calls
    report = session.propagate(1, direction="forward", last=4)  # one slice to track
    assert report.slices == [KEY, 4]
    assert batched.encoder_calls - calls == 1  # the range ends there: no slice 5


# ---- torch.compile (serve --compile) ------------------------------------------------------


def _serve_args(*extra: str) -> argparse.Namespace:
    from medsam_server.cli.main import build_parser

    return build_parser().parse_args(["serve", "--device", "cpu", *extra])


def test_serve_compile_failure_is_logged_reported_and_eager(monkeypatch, caplog,
                                                             random_checkpoint: Path) -> None:
    from medsam_server.service import run

    def no_compiler(module: torch.nn.Module) -> torch.nn.Module:
        raise RuntimeError("InductorError: no working C++ compiler found\nmore detail")

    monkeypatch.setattr(torch, "compile", no_compiler)
    args = _serve_args("--compile", "--precision", "fp32")
    assert args.compile is True
    with caplog.at_level(logging.INFO, logger="medsam_server.service"):
        engine = run.load_engine(args, random_checkpoint, 1 << 30)
    assert engine.compiled == ("failed: RuntimeError: InductorError: no working C++ compiler "
                               "found")
    assert any(r.levelno == logging.ERROR and "could not be compiled" in r.getMessage()
               and "serving it eager" in r.getMessage() for r in caplog.records)
    assert not isinstance(engine.model.image_encoder, torch._dynamo.eval_frame.OptimizedModule)
    assert engine.precision == "fp32"
    assert run.load_engine(_serve_args(), random_checkpoint, 1 << 30).compiled == "off"


def test_serve_compile_success_runs_the_compiled_encoder(monkeypatch, fp32: Engine) -> None:
    """Compiling for real takes minutes on CPU: a stand-in that records its calls."""
    calls: list[int] = []

    class Compiled(torch.nn.Module):
        def __init__(self, inner: torch.nn.Module) -> None:
            super().__init__()
            self.inner = inner

        def forward(self, x: torch.Tensor) -> dict:
            calls.append(x.shape[0])
            return self.inner(x)

    monkeypatch.setattr(torch, "compile", Compiled)
    engine = Engine(fp32.model, CPU, precision="fp32", encode_batch=2)
    eager = engine.model.image_encoder
    try:
        assert engine.compile_encoder() == "on"
        assert calls == [1, 2]  # compiled now, for both batch sizes, not at a user's box
    finally:
        engine.model.image_encoder = eager  # the network is shared with other tests


# ---- what the user is told ----------------------------------------------------------------


def test_info_reports_precision_and_compile(fp32: Engine) -> None:
    from fastapi.testclient import TestClient
    from medsam_server.service.app import create_app
    from medsam_server.service.config import ServiceConfig

    bf16 = _like(fp32, precision="bf16")
    bf16.compiled = "failed: RuntimeError: no compiler"
    app = create_app(ServiceConfig(token="t" * 16), bf16, worker_thread=False)
    try:
        with TestClient(app) as client:
            r = client.get("/info", headers={"Authorization": "Bearer " + "t" * 16})
    finally:
        app.state.service.close()
    info = P.from_json(P.Info, r.json())
    assert info.precision == "bf16" and info.compiled == "failed: RuntimeError: no compiler"
    assert info.kernels == bf16.kernels == "onednn"
    # an older server's /info has none of them: an older/newer client still reads it
    old = {k: v for k, v in r.json().items() if k not in ("precision", "compiled", "kernels")}
    assert P.from_json(P.Info, old).precision == "" and P.from_json(P.Info, old).compiled == "off"
    assert P.from_json(P.Info, old).kernels == ""


def test_cli_parsers_take_precision() -> None:
    from medsam_server.cli.main import build_parser

    parser = build_parser()
    for command in (["segment", "in.nii.gz", "-o", "out.nii.gz"], ["batch", "m.csv", "-o", "o"],
                    ["serve"]):
        assert parser.parse_args(command).precision == "auto"
        assert parser.parse_args([*command, "--precision", "bf16"]).precision == "bf16"
    assert parser.parse_args(["serve"]).compile is False


def test_cli_refuses_a_bad_precision(capsys) -> None:
    from medsam_server.cli.main import main

    with pytest.raises(SystemExit) as exc:
        main(["segment", "in.nii.gz", "-o", "out.nii.gz", "--precision", "fp16"])
    assert exc.value.code == 2
    assert "invalid choice: 'fp16'" in capsys.readouterr().err


@pytest.mark.parametrize("precision", ["fp32", "bf16"])
def test_segment_says_which_precision(tmp_path: Path, random_checkpoint: Path, capsys,
                                      precision: str) -> None:
    import SimpleITK as sitk
    from medsam_server.cli.main import main

    arr = np.full((2, 48, 48), -1000, np.int16)
    arr[:, 12:36, 12:36] = 60
    sitk.WriteImage(sitk.GetImageFromArray(arr), str(tmp_path / "ct.nii.gz"))
    rc = main(["segment", str(tmp_path / "ct.nii.gz"), "-o", str(tmp_path / "m.nii.gz"),
               "--checkpoint", str(random_checkpoint), "--slice", "0", "--box", "10", "10",
               "38", "38", "--device", "cpu", "--precision", precision])
    err = capsys.readouterr().err
    assert rc == 0, err
    assert f"running on cpu in {precision}" in err
    assert f"on cpu in {precision}, 2 slices encoded" in err


def test_batch_says_which_precision(tmp_path: Path, random_checkpoint: Path, capsys,
                                    monkeypatch) -> None:
    import SimpleITK as sitk
    from medsam_server.cli.main import main

    monkeypatch.setattr(model_module, "cpu_has_native_bf16", lambda: False)
    arr = np.full((2, 48, 48), -1000, np.int16)
    arr[:, 12:36, 12:36] = 60
    sitk.WriteImage(sitk.GetImageFromArray(arr), str(tmp_path / "ct.nii.gz"))
    (tmp_path / "p.json").write_text('{"objects": [{"label": 1, "slice": 0, '
                                     '"box": [10, 10, 38, 38]}]}')
    (tmp_path / "m.csv").write_text("case,image,prompts\nc1,ct.nii.gz,p.json\n")
    rc = main(["batch", str(tmp_path / "m.csv"), "-o", str(tmp_path / "out"), "--checkpoint",
               str(random_checkpoint), "--device", "cpu"])
    err = capsys.readouterr().err
    assert rc == 0, err
    assert "running on cpu in fp32" in err  # auto, on a CPU without native bf16


# ---- bench/bench_gpu.py: its non-GPU parts -------------------------------------------------


def test_bench_gpu_smoke_on_cpu(random_checkpoint: Path, capsys) -> None:
    """bench_gpu.py is run on lent GPU machines only; here everything but CUDA runs."""
    from bench_gpu import main

    figures = main(["--device", "cpu", "--slices", "3", "--batches", "1", "2",
                    "--encode-batch", "2", "--checkpoint", str(random_checkpoint)])
    out = capsys.readouterr().out
    assert "slices/s" in out and "first box" in out
    assert figures["ours_bf16"]["precision"] == "bf16"
    assert figures["ours_bf16"]["encode_batch"] == 2
    assert figures["stock"]["peak_gpu_mb"] is None  # no GPU: no figure, not a made-up one
    assert set(figures["encoder_slices_per_s_by_batch"]) == {"1", "2"}
    assert 0.0 <= figures["dice_ours_vs_stock"] <= 1.0


if __name__ == "__main__":
    sys.exit(pytest.main([__file__, "-q", "-s"]))
