"""Frames per second along time: our session (fp32, bf16) vs Meta's stock SAM2 video predictor.

One run, the same frames of the real echo clip (the multi-frame US DICOM in
../shared/data/echo_a4c, colour, cropped to the sector, 512x384), the same seeded
random-weight checkpoint (weights do not change the cost), each side in its own process:
box on frame 0, propagate forward, as MedSAM2's ``medsam2_infer_video.py`` does. Reports
frames/s per side, the ratios, and how far our fp32 and bf16 masks are from the stock masks
(Dice over the clip).

    python bench/bench_time.py [--frames 120] [--device cpu|cuda] [--json out.json]
"""

from __future__ import annotations

import argparse
import importlib.util
import json
import os
import subprocess
import sys
import tempfile
import time
from pathlib import Path

import numpy as np

HERE = Path(__file__).resolve().parent
DICOM = HERE.parent.parent / "shared" / "data" / "echo_a4c" / "echo_a4c_us_multiframe.dcm"
BOX = (225, 95, 325, 225)
SIDES = ("stock", "ours_fp32", "ours_bf16")


def frames(n: int) -> np.ndarray:
    """The echo clip's first ``n`` frames, or (a copied checkout without ../shared/data, as on
    a lent GPU machine) a seeded synthetic colour clip of the same size: a beating ellipse."""
    if not DICOM.is_file():
        rng = np.random.default_rng(0)
        yy, xx = np.mgrid[:384, :512]
        clip = np.empty((n, 384, 512, 3), np.uint8)
        for f in range(n):
            r = 50 + 15 * np.sin(2 * np.pi * f / 30)
            inside = ((xx - 275) / r) ** 2 + ((yy - 160) / (1.3 * r)) ** 2 < 1
            grey = 60 + 120 * ~inside + rng.normal(0, 10, (384, 512))
            clip[f] = np.clip(grey[..., None] * (1.0, 0.9, 0.8), 0, 255)
        return clip
    import pydicom

    rgb = pydicom.dcmread(DICOM).pixel_array[:n, 31:415, 84:596]
    return np.ascontiguousarray(rgb)


def sync(device: str) -> None:
    """Wait for queued CUDA work, so that the clock reads what ran (a no-op on CPU)."""
    if device.startswith("cuda"):
        import torch

        torch.cuda.synchronize()


def child(side: str, n: int, checkpoint: str, device: str, out: str) -> None:
    """One side: time the propagation (frames already in memory), save the masks."""
    import torch

    clip = frames(n)
    # on CUDA the first calls pay for the context, cuBLAS/cuDNN set-up and kernel loads:
    # a 2-frame run of the same recipe first keeps that out of the timed run (the CPU
    # figures in docs/benchmarks.md were measured without it; there it is small)
    warm_up = device.startswith("cuda")
    if side == "stock":
        sys.path.insert(0, str(HERE))
        from medsam2_reference import (
            build_reference_predictor,
            install_cpu_connected_components,
            reference_video,
            sam2_video_frames,
        )

        predictor = build_reference_predictor(checkpoint, device)
        if device.startswith("cuda") and importlib.util.find_spec("sam2._C") is None:
            # sam2's CUDA op is built only with SAM2_BUILD_CUDA=1 (bench_gpu.sh builds it
            # without); lacking it, the stock predictor would skip MedSAM2's hole filling
            # with a warning, while ours fills holes: the same work on both sides
            install_cpu_connected_components()
        with tempfile.TemporaryDirectory() as folder:
            tensor = sam2_video_frames(clip, folder)
        # MedSAM2's own scripts run the predictor under bf16 autocast on CUDA
        autocast = torch.autocast("cuda", dtype=torch.bfloat16,
                                  enabled=device.startswith("cuda"))
        if warm_up:
            with autocast:
                reference_video(predictor, tensor[:2], *clip.shape[1:3], 0, BOX)
        sync(device)
        t0 = time.perf_counter()
        with autocast:
            logits = reference_video(predictor, tensor, *clip.shape[1:3], 0, BOX)
        sync(device)
        seconds = time.perf_counter() - t0
        masks = np.stack([logits[f] > 0 for f in range(n)])
    else:
        from medsam_server.engine import Engine, Prompt, Session

        engine = Engine.from_checkpoint(checkpoint, device, precision=side.split("_")[1])
        if warm_up:
            warm = Session(engine, clip[:2])
            warm.add_prompt(1, "k", 0, Prompt(box=BOX))
            warm.propagate(1, "k", direction="forward")
            del warm
        session = Session(engine, clip)
        sync(device)
        t0 = time.perf_counter()
        session.add_prompt(1, "k", 0, Prompt(box=BOX))
        session.propagate(1, "k", direction="forward")
        sync(device)
        seconds = time.perf_counter() - t0
        masks = session.mask(1).astype(bool)
    np.save(out + ".npy", masks)
    Path(out + ".json").write_text(json.dumps({"seconds": seconds, "frames": n}))


def dice(a: np.ndarray, b: np.ndarray) -> float:
    total = int(a.sum()) + int(b.sum())
    return 1.0 if total == 0 else 2.0 * int((a & b).sum()) / total


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("--frames", type=int, default=120)
    ap.add_argument("--device", default="cpu")
    ap.add_argument("--json")
    ap.add_argument("--child", nargs=4, metavar=("SIDE", "FRAMES", "CKPT", "OUT"),
                    help=argparse.SUPPRESS)
    args = ap.parse_args()
    if args.child:
        side, n, ckpt, out = args.child
        child(side, int(n), ckpt, args.device, out)
        return
    if args.device.startswith("cuda"):
        import torch

        if not torch.cuda.is_available():
            sys.exit(f"bench_time: torch sees no CUDA GPU (torch {torch.__version__}); "
                     "use --device cpu")
    with tempfile.TemporaryDirectory() as tmp:
        ckpt = os.path.join(tmp, "random.pt")
        subprocess.run([sys.executable, "-m", "medsam_server.cli", "make-test-checkpoint",
                        ckpt], check=True, capture_output=True)
        results, masks = {}, {}
        load = os.getloadavg()[0]
        for side in SIDES:
            out = os.path.join(tmp, side)
            subprocess.run([sys.executable, __file__, "--device", args.device, "--child", side,
                            str(args.frames), ckpt, out], check=True)
            results[side] = json.loads(Path(out + ".json").read_text())
            masks[side] = np.load(out + ".npy")
    fps = {s: results[s]["frames"] / results[s]["seconds"] for s in SIDES}
    report = {
        "device": args.device, "frames": args.frames,
        "stock_arithmetic": "bf16 autocast" if args.device.startswith("cuda") else "fp32",
        "load_average": [load, os.getloadavg()[0]],
        "frames_per_second": fps,
        "ours_fp32_vs_stock": fps["ours_fp32"] / fps["stock"],
        "ours_bf16_vs_stock": fps["ours_bf16"] / fps["stock"],
        "bf16_vs_fp32": fps["ours_bf16"] / fps["ours_fp32"],
        "dice_vs_stock": {s: dice(masks[s], masks["stock"]) for s in SIDES[1:]},
    }
    source = "the echo clip" if DICOM.is_file() else "a synthetic clip (no ../shared/data)"
    report["source"] = source
    print(f"{args.frames} colour frames of {source}, box on frame 0, forward "
          f"({args.device}, load {load:.1f} -> {os.getloadavg()[0]:.1f})")
    for s in SIDES:
        what = f" ({report['stock_arithmetic']})" if s == "stock" else ""
        print(f"  {s:10s} {fps[s]:6.2f} frames/s ({results[s]['seconds']:.1f} s){what}")
    print(f"  ours fp32 / stock: {report['ours_fp32_vs_stock']:.2f}x the frames/s; "
          f"bf16 / stock {report['ours_bf16_vs_stock']:.2f}x; bf16 / fp32 "
          f"{report['bf16_vs_fp32']:.2f}x")
    print(f"  Dice against stock masks: fp32 {report['dice_vs_stock']['ours_fp32']:.4f}, "
          f"bf16 {report['dice_vs_stock']['ours_bf16']:.4f}")
    if args.json:
        Path(args.json).write_text(json.dumps(report, indent=1))


if __name__ == "__main__":
    main()
