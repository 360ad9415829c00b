"""Engine benchmark: our session engine vs the stock SAM2 predictor driven the MedSAM2 way.

One run measures, on the same 512×512×48 real-CT volume and the same seeded
random-weight MedSAM2 checkpoint (weights don't change the arithmetic cost):
  1. one object, box on the middle slice, propagate both ways: seconds per slice for
     both sides, the ratio, and each side's peak RSS (each side in its own process);
  2. three objects in one session vs three reference runs;
  3. a correction (box on another slice) re-propagating 10 slices vs a full re-run.
Targets (CPU): 1. ≤ 1.0×; 2. ≤ 0.65×; 3. ≤ 0.4×.

    python bench/bench_engine.py [--device cpu|cuda] [--slices 48] [--json out.json]
"""

from __future__ import annotations

import argparse
import json
import resource
import subprocess
import sys
import tempfile
import time
from pathlib import Path

import numpy as np

HERE = Path(__file__).resolve().parent
DICOM = HERE.parent.parent / "shared" / "data" / "totalseg_ct_dicom_2mm" / "dicom"
BOXES = [(150, 200, 330, 360), (300, 180, 420, 300), (120, 260, 220, 380)]


def make_volume(n_slices: int) -> np.ndarray:
    """n slices of 512×512 real CT: the 20-slice DICOM series mirrored back and forth."""
    from medsam_server.preprocess import window_to_uint8
    from medsam_server.volume_io import read_volume

    if not DICOM.is_dir():
        sys.exit(f"benchmark data missing: {DICOM}")
    ct = window_to_uint8(read_volume(DICOM).array, "ct", (40.0, 400.0))
    order = [i for _ in range(n_slices) for i in (*range(20), *range(19, -1, -1))][:n_slices]
    return np.ascontiguousarray(ct[order])


def peak_rss_mb() -> float:
    return resource.getrusage(resource.RUSAGE_SELF).ru_maxrss / 1024.0


def run_reference(ckpt: str, device: str, vol: np.ndarray, objects: int) -> dict:
    import torch
    from medsam2_reference import build_reference_predictor, reference_segment

    predictor = build_reference_predictor(ckpt, device)
    key = vol.shape[0] // 2
    times = []
    ctx = (torch.autocast("cuda", dtype=torch.bfloat16) if device == "cuda"
           else torch.autocast("cpu", enabled=False))
    with ctx:
        predictor.forward_image(torch.zeros(1, 3, 512, 512, device=device))  # warm-up
        for n in range(objects):  # the reference has no shared state: one full run each
            t0 = time.perf_counter()
            reference_segment(predictor, vol, key, BOXES[n])
            _sync(device)
            times.append(time.perf_counter() - t0)
    return {"times": times, "peak_rss_mb": peak_rss_mb()}


def run_ours(ckpt: str, device: str, vol: np.ndarray, objects: int) -> dict:
    from medsam_server.engine import Engine
    from medsam_server.preprocess import model_input
    from medsam_server.prompts import Prompt
    from medsam_server.session import Session

    engine = Engine.from_checkpoint(ckpt, device)
    engine.encode(model_input(vol, "k", 0))  # warm-up, like the reference side
    key = vol.shape[0] // 2
    session = Session(engine, vol)
    times = []
    for n in range(objects):
        t0 = time.perf_counter()
        session.add_prompt(n + 1, "k", key, Prompt(box=BOXES[n]))
        session.propagate(n + 1)
        _sync(device)
        times.append(time.perf_counter() - t0)
    # correction: a new box 10 slices above the key slice, re-propagated over exactly 10
    # slices (5 each way; converge_iou > 1 disables the early stop so the count is fixed)
    t0 = time.perf_counter()
    fix = min(key + 10, vol.shape[0] - 6)
    session.add_prompt(1, "k", fix, Prompt(box=(160, 210, 320, 350)))
    report = session.propagate(1, first=fix - 5, last=fix + 5, converge_iou=1.1)
    _sync(device)
    correction = time.perf_counter() - t0
    return {"times": times, "correction": correction,
            "correction_slices": len(report.slices) - 1,
            "encoder_calls": engine.encoder_calls - 1, "peak_rss_mb": peak_rss_mb()}


def _sync(device: str) -> None:
    if device == "cuda":
        import torch

        torch.cuda.synchronize()


def child(args: argparse.Namespace) -> None:
    sys.path.insert(0, str(HERE))
    vol = make_volume(args.slices)
    fn = run_ours if args.side == "ours" else run_reference
    print(json.dumps(fn(args.checkpoint, args.device, vol, args.objects)))


def main() -> None:
    p = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    p.add_argument("--device", default="cpu")
    p.add_argument("--slices", type=int, default=48)
    p.add_argument("--objects", type=int, default=3)
    p.add_argument("--checkpoint", help="default: a seeded random-weight checkpoint")
    p.add_argument("--side", choices=["ours", "reference"], help=argparse.SUPPRESS)
    p.add_argument("--json", help="also write the figures here")
    args = p.parse_args()
    if args.side:
        return child(args)
    with tempfile.TemporaryDirectory() as tmp:
        ckpt = args.checkpoint
        if ckpt is None:
            from medsam_server.model import write_random_checkpoint

            ckpt = str(write_random_checkpoint(Path(tmp) / "random.pt", seed=0))
        results = {}
        for side in ("reference", "ours"):  # separate processes: fair peak RSS
            cmd = [sys.executable, __file__, "--side", side, "--checkpoint", ckpt,
                   "--device", args.device, "--slices", str(args.slices),
                   "--objects", str(args.objects)]
            out = subprocess.run(cmd, check=True, capture_output=True, text=True).stdout
            results[side] = json.loads(out.strip().splitlines()[-1])
    report(results, args)


def report(results: dict, args: argparse.Namespace) -> None:
    ref, ours = results["reference"], results["ours"]
    n = args.slices
    ref1, ours1 = ref["times"][0] / n, ours["times"][0] / n
    three_ref, three_ours = sum(ref["times"]), sum(ours["times"])
    figures = {
        "device": args.device, "slices": n,
        "seconds_per_slice": {"reference": ref1, "ours": ours1, "ratio": ours1 / ref1},
        "peak_rss_mb": {"reference": ref["peak_rss_mb"], "ours": ours["peak_rss_mb"]},
        "three_objects_s": {"reference": three_ref, "ours": three_ours,
                            "ratio": three_ours / three_ref},
        "correction_s": {"slices": ours["correction_slices"], "ours": ours["correction"],
                         "full_reference_run": ref["times"][0],
                         "ratio": ours["correction"] / ref["times"][0]},
        "encoder_calls_ours": ours["encoder_calls"],
    }
    print(f"MedSAM2 engine benchmark, {n} slices of 512x512, device {args.device}")
    print(f"{'':28}{'reference':>12}{'ours':>12}{'ratio':>8}{'target':>8}")
    print(f"{'s/slice, 1 object':28}{ref1:12.3f}{ours1:12.3f}{ours1 / ref1:8.2f}{'<=1.00':>8}")
    print(f"{'s, 3 objects':28}{three_ref:12.1f}{three_ours:12.1f}"
          f"{three_ours / three_ref:8.2f}{'<=0.65':>8}")
    print(f"{'s, correction vs full run':28}{ref['times'][0]:12.1f}{ours['correction']:12.1f}"
          f"{ours['correction'] / ref['times'][0]:8.2f}{'<=0.40':>8}"
          f"   ({ours['correction_slices']} slices re-propagated)")
    print(f"{'peak RSS MB':28}{ref['peak_rss_mb']:12.0f}{ours['peak_rss_mb']:12.0f}"
          f"{ours['peak_rss_mb'] / ref['peak_rss_mb']:8.2f}")
    print(f"encoder calls (ours, 3 objects + correction): {ours['encoder_calls']}")
    if args.json:
        Path(args.json).write_text(json.dumps(figures, indent=2))


if __name__ == "__main__":
    main()
