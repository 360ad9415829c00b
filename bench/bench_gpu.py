"""GPU benchmark: stock SAM2 predictor vs our engine in bf16 on one long 512² volume.

Prints, for one object (box on the middle slice, propagated both ways as MedSAM2 does):
slices/s of the stock predictor (``medsam2_reference.py``, under bf16 autocast on CUDA as
MedSAM2 runs it) and of ours (bf16, encoder batched ahead of the memory chain), our
first-box latency on a fresh session (encoder + decoder of one slice), peak GPU memory of
each side (``torch.cuda.max_memory_allocated``), encoder throughput per batch size, and the
Dice of our masks against the stock ones. Seeded random weights (same arithmetic as the
real ones). The volume is the project's real CT (``../shared/data``) mirrored to the
length asked for, or a synthetic phantom where that folder is absent (a copied checkout).

    bench/bench_gpu.sh                          # sets up .venv-gpu with a CUDA torch, runs this
    python bench/bench_gpu.py [--device cuda] [--slices 300] [--encode-batch 8] [--json F]
    python bench/bench_gpu.py --device cpu --slices 4 --batches 1 2   # smoke test, no GPU
"""

from __future__ import annotations

import argparse
import json
import sys
import tempfile
import time
from pathlib import Path

import numpy as np

HERE = Path(__file__).resolve().parent
sys.path.insert(0, str(HERE))

BOX = (150, 200, 330, 360)


def make_volume(n_slices: int) -> tuple[np.ndarray, str]:
    """The real CT mirrored to ``n_slices`` (as bench_engine.py), else a seeded phantom."""
    from bench_engine import DICOM
    from bench_engine import make_volume as real_ct

    if DICOM.is_dir():
        return real_ct(n_slices), f"real CT ({DICOM.parent.name}) mirrored"
    rng = np.random.default_rng(0)
    yy, xx = np.mgrid[:512, :512]
    vol = np.empty((n_slices, 512, 512), np.uint8)
    for k in range(n_slices):  # a body, an organ that grows and shrinks, noise
        r = 60 + 40 * np.sin(np.pi * k / max(1, n_slices - 1))
        body = ((xx - 256) / 220.0) ** 2 + ((yy - 256) / 180.0) ** 2 < 1
        organ = (xx - 240) ** 2 + (yy - 280) ** 2 < r ** 2
        vol[k] = np.clip(40 + 80 * body + 90 * organ + rng.normal(0, 8, (512, 512)), 0, 255)
    return vol, "synthetic phantom (../shared/data absent)"


def sync(device: str) -> None:
    if device.startswith("cuda"):
        import torch

        torch.cuda.synchronize()


def reset_peak(device: str) -> None:
    if device.startswith("cuda"):
        import torch

        torch.cuda.empty_cache()
        torch.cuda.reset_peak_memory_stats()


def peak_mb(device: str) -> float | None:
    if not device.startswith("cuda"):
        return None
    import torch

    return torch.cuda.max_memory_allocated() / 2**20


def run_stock(ckpt: str, device: str, vol: np.ndarray) -> dict:
    import torch
    from medsam2_reference import (
        build_reference_predictor,
        install_cpu_connected_components,
        reference_segment,
    )

    # sam2's CUDA connected-components extension is not built (SAM2_BUILD_CUDA=0): without
    # this the stock side would skip MedSAM2's hole filling, which ours does on every device
    install_cpu_connected_components()
    predictor = build_reference_predictor(ckpt, device)
    ctx = (torch.autocast("cuda", dtype=torch.bfloat16) if device.startswith("cuda")
           else torch.autocast("cpu", enabled=False))
    with ctx:
        predictor.forward_image(torch.zeros(1, 3, 512, 512, device=device))  # warm-up
        sync(device)
        reset_peak(device)
        t0 = time.perf_counter()
        mask = reference_segment(predictor, vol, vol.shape[0] // 2, BOX)
        sync(device)
        seconds = time.perf_counter() - t0
    result = {"seconds": seconds, "slices_per_s": vol.shape[0] / seconds,
              "peak_gpu_mb": peak_mb(device)}
    del predictor
    return {**result, "mask": mask.astype(bool)}


def run_ours(ckpt: str, device: str, vol: np.ndarray, encode_batch: int | None) -> dict:
    from medsam_server.engine.engine import Engine
    from medsam_server.engine.preprocess import model_input
    from medsam_server.engine.prompts import Prompt
    from medsam_server.engine.session import Session

    engine = Engine.from_checkpoint(ckpt, device, precision="bf16", encode_batch=encode_batch)
    engine.encode_many([model_input(vol, "k", 0)] * engine.encode_batch)  # warm-up
    warm = Session(engine, vol[:2])
    warm.add_prompt(1, "k", 0, Prompt(box=BOX))
    warm.propagate(1)
    del warm
    sync(device)
    reset_peak(device)
    key = vol.shape[0] // 2
    session = Session(engine, vol)
    t0 = time.perf_counter()
    session.add_prompt(1, "k", key, Prompt(box=BOX))  # a fresh slice: encoder + decoder
    sync(device)
    first_box = time.perf_counter() - t0
    session.propagate(1)
    sync(device)
    seconds = time.perf_counter() - t0
    return {"seconds": seconds, "slices_per_s": vol.shape[0] / seconds,
            "first_box_ms": first_box * 1e3, "peak_gpu_mb": peak_mb(device),
            "precision": engine.precision, "encode_batch": engine.encode_batch,
            "encoder_batches": engine.encoder_batches, "mask": session.mask(1)}


def encoder_scan(ckpt: str, device: str, vol: np.ndarray, batches: list[int]) -> dict:
    """Encoder-only throughput (bf16) per batch size, over the same slices."""
    from medsam_server.engine.engine import Engine
    from medsam_server.engine.preprocess import model_input

    engine = Engine.from_checkpoint(ckpt, device, precision="bf16")
    n = min(len(vol), 4 * max(batches))
    images = [model_input(vol, "k", k) for k in range(n)]
    out = {}
    for b in batches:
        engine.encode_many(images[:b])  # warm-up at this size
        sync(device)
        t0 = time.perf_counter()
        for i in range(0, n, b):
            engine.encode_many(images[i:i + b])
        sync(device)
        out[str(b)] = n / (time.perf_counter() - t0)
    return out


def dice(x: np.ndarray, y: np.ndarray) -> float:
    total = np.count_nonzero(x) + np.count_nonzero(y)
    return 1.0 if total == 0 else 2.0 * np.count_nonzero(x & y) / total


def main(argv: list[str] | None = None) -> dict:
    p = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    p.add_argument("--device", default="cuda")
    p.add_argument("--slices", type=int, default=300)
    p.add_argument("--encode-batch", type=int, help="default: the engine's for the device")
    p.add_argument("--batches", type=int, nargs="+", default=[1, 4, 8],
                   help="batch sizes of the encoder-only scan")
    p.add_argument("--checkpoint", help="default: a seeded random-weight checkpoint")
    p.add_argument("--json", help="also write the figures here")
    args = p.parse_args(argv)
    import torch

    if args.device.startswith("cuda") and not torch.cuda.is_available():
        sys.exit("bench_gpu: torch sees no CUDA GPU (torch "
                 f"{torch.__version__}); use --device cpu for a smoke run")
    t_start = time.perf_counter()
    vol, source = make_volume(args.slices)
    with tempfile.TemporaryDirectory() as tmp:
        ckpt = args.checkpoint
        if ckpt is None:
            from medsam_server.engine.model import write_random_checkpoint

            ckpt = str(write_random_checkpoint(Path(tmp) / "random.pt", seed=0))
        stock = run_stock(ckpt, args.device, vol)
        ours = run_ours(ckpt, args.device, vol, args.encode_batch)
        scan = encoder_scan(ckpt, args.device, vol, args.batches)
    gpu = torch.cuda.get_device_name() if args.device.startswith("cuda") else "none"
    figures = {
        "device": args.device, "gpu": gpu, "torch": torch.__version__,
        "slices": args.slices, "volume": source,
        "stock": {k: v for k, v in stock.items() if k != "mask"},
        "ours_bf16": {k: v for k, v in ours.items() if k != "mask"},
        "speedup": ours["slices_per_s"] / stock["slices_per_s"],
        "encoder_slices_per_s_by_batch": scan,
        "dice_ours_vs_stock": dice(ours["mask"], stock["mask"]),
        "wall_s": time.perf_counter() - t_start,
    }
    report(figures)
    if args.json:
        Path(args.json).write_text(json.dumps(figures, indent=2))
    return figures


def _mb(value: float | None) -> str:
    return "-" if value is None else f"{value:.0f} MB"


def report(f: dict) -> None:
    s, o = f["stock"], f["ours_bf16"]
    print(f"MedSAM2 GPU benchmark: {f['slices']} slices of 512x512 ({f['volume']}), "
          f"{f['device']} ({f['gpu']}), torch {f['torch']}")
    arithmetic = "bf16 autocast" if f["device"].startswith("cuda") else "fp32"
    print(f"  stock SAM2 predictor ({arithmetic}): {s['slices_per_s']:7.2f} slices/s   "
          f"peak GPU memory {_mb(s['peak_gpu_mb'])}")
    print(f"  ours, {o['precision']}, encode batch {o['encode_batch']:<3}:     "
          f"{o['slices_per_s']:7.2f} slices/s   peak GPU memory {_mb(o['peak_gpu_mb'])}   "
          f"({f['speedup']:.2f}x stock)")
    print(f"  ours, first box on a fresh slice (encoder + decoder): {o['first_box_ms']:.1f} ms")
    print("  encoder only, bf16, slices/s by batch size: "
          + ", ".join(f"{b}: {v:.1f}" for b, v in f["encoder_slices_per_s_by_batch"].items()))
    print(f"  Dice ours vs stock (random weights): {f['dice_ours_vs_stock']:.4f}; "
          f"whole run {f['wall_s']:.0f} s")


if __name__ == "__main__":
    main()
