"""Engine benchmark: our session engine (fp32 and bf16) vs the stock SAM2 predictor.

One run measures, on the same 512×512×48 real-CT volume and the same seeded
random-weight MedSAM2 checkpoint (weights don't change the arithmetic cost), each side
in its own process (fair peak RSS):
  1. one object, box on the middle slice, propagate both ways: seconds per slice for
     stock SAM2 (fp32 on CPU, bf16 autocast on CUDA, as MedSAM2 runs it), ours in fp32
     and ours in bf16, and the ratios;
  2. three objects in one session vs three reference runs;
  3. a correction (box on another slice) re-propagating 10 slices vs a full re-run;
  4. bf16 vs fp32 agreement of our masks: Dice per object volume and the worst slice;
  5. the first box on a slice: cold (nothing encoded) vs focused (the slice encoded
     beforehand, as the service's focus does while the user looks at it), medians of 3;
  6. a propagation started after the user spent ``--drawing-s`` seconds drawing while the
     focus encoded slices (the key slice, then outwards), vs the same propagation cold;
  7. peak RSS of each side's process.
Targets (CPU): 1. fp32 ≤ 0.85× stock, bf16 ≤ 0.65× our fp32; 2. ≤ 0.65×; 3. ≤ 0.4×;
5. focused ≤ 0.15× cold; 6. shorter by about the slices focused × one slice's encoding.

    python bench/bench_engine.py [--device cpu|cuda] [--slices 48] [--sides ...]
                                 [--drawing-s 5] [--json out.json]

``--json`` keys (stable): device, slices, objects, threads, load_average {start, end},
seconds_per_slice / three_objects_s {reference, ours_fp32, ours_bf16, ours_fp32_vs_reference,
ours_bf16_vs_reference, bf16_vs_fp32}, correction_s {slices, ours_fp32, full_reference_run,
ratio}, peak_rss_mb {side: MB}, encoder_calls {side: n}, bf16_vs_fp32 {dice_per_object,
dice_worst_object, dice_worst_slice, worst_slice {object, slice}}, first_box_s {side: {cold,
focused, ratio}}, drawing {side: {drawing_s, slices_focused, propagation_cold_s,
propagation_after_drawing_s, saved_s, encode_s_per_slice}}, kernels {side: name}. A side left
out of ``--sides`` leaves its figures out.

To add a measurement: a ``run_*`` part in the child (its figures in the side's JSON) and a
``*_figures(results)`` function that turns them into the report (see ``FIGURES``).
"""

from __future__ import annotations

import argparse
import json
import os
import resource
import subprocess
import sys
import tempfile
import time
from collections.abc import Callable
from pathlib import Path

import numpy as np

HERE = Path(__file__).resolve().parent
DICOM = HERE.parent.parent / "shared" / "data" / "totalseg_ct_dicom_2mm" / "dicom"
BOXES = [(150, 200, 330, 360), (300, 180, 420, 300), (120, 260, 220, 380)]
SIDES = ("reference", "ours_fp32", "ours_bf16")


def make_volume(n_slices: int) -> np.ndarray:
    """n slices of 512×512 real CT: the 20-slice DICOM series mirrored back and forth."""
    from medsam_server.engine.preprocess import window_to_uint8
    from medsam_server.io.volumes import read_volume

    if not DICOM.is_dir():
        sys.exit(f"benchmark data missing: {DICOM}")
    ct = window_to_uint8(read_volume(DICOM).array, "ct", (40.0, 400.0))
    order = [i for _ in range(n_slices) for i in (*range(20), *range(19, -1, -1))][:n_slices]
    return np.ascontiguousarray(ct[order])


def peak_rss_mb() -> float:
    return resource.getrusage(resource.RUSAGE_SELF).ru_maxrss / 1024.0


# ---- the sides (each in a child process) ----------------------------------------------------


def run_reference(ckpt: str, device: str, vol: np.ndarray, objects: int,
                  masks_out: str | None) -> dict:
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


def run_ours(ckpt: str, device: str, vol: np.ndarray, objects: int, precision: str,
             masks_out: str | None, drawing_s: float) -> dict:
    from medsam_server.engine.engine import Engine
    from medsam_server.engine.preprocess import model_input
    from medsam_server.engine.prompts import Prompt
    from medsam_server.engine.session import Session

    engine = Engine.from_checkpoint(ckpt, device, precision=precision)
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
    if masks_out:  # before the correction changes object 1
        np.savez_compressed(masks_out, **{str(n + 1): np.packbits(session.mask(n + 1))
                                          for n in range(objects)})
    # correction: a new box 10 slices above the key slice, re-propagated over exactly 10
    # slices (5 each way; converge_iou > 1 disables the early stop so the count is fixed)
    t0 = time.perf_counter()
    fix = min(key + 10, vol.shape[0] - 6)
    session.add_prompt(1, "k", fix, Prompt(box=(160, 210, 320, 350)))
    report = session.propagate(1, first=fix - 5, last=fix + 5, converge_iou=1.1)
    _sync(device)
    correction = time.perf_counter() - t0
    encoder_calls = engine.encoder_calls - 1
    rss = peak_rss_mb()  # of the work above: the parts below open sessions of their own
    return {"times": times, "correction": correction,
            "correction_slices": len(report.slices) - 1, "precision": engine.precision,
            "kernels": engine.kernels, "encoder_calls": encoder_calls,
            "first_box": first_box(engine, vol, device),
            "drawing": after_drawing(engine, vol, device, drawing_s), "peak_rss_mb": rss}


def first_box(engine, vol: np.ndarray, device: str, rounds: int = 3) -> dict:  # noqa: ANN001
    """A box on a slice nothing encoded vs on a slice the focus encoded beforehand (each
    round a fresh session, two slices never seen in it)."""
    from medsam_server.engine.prompts import Prompt
    from medsam_server.engine.session import Session

    cold, focused = [], []
    for r in range(rounds):
        session = Session(engine, vol)
        a, b = 2 + 2 * r, vol.shape[0] - 3 - 2 * r
        t0 = time.perf_counter()
        session.add_prompt(1, "k", a, Prompt(box=BOXES[0]))
        _sync(device)
        cold.append(time.perf_counter() - t0)
        session.prefetch("k", b)  # the focus, while the user studies slice b
        t0 = time.perf_counter()
        session.add_prompt(2, "k", b, Prompt(box=BOXES[0]))
        _sync(device)
        focused.append(time.perf_counter() - t0)
    return {"cold": float(np.median(cold)), "focused": float(np.median(focused))}


def after_drawing(engine, vol: np.ndarray, device: str, drawing_s: float) -> dict:  # noqa: ANN001
    """Object 1's box and propagation, in a fresh session cold, then in another fresh
    session where the focus (the service's order: the key slice, then outwards) ran for
    ``drawing_s`` first."""
    from medsam_server.engine.prompts import Prompt
    from medsam_server.engine.session import Session
    from medsam_server.service.focus import focus_order

    key = vol.shape[0] // 2

    def box_and_propagate(session: Session) -> float:
        t0 = time.perf_counter()
        session.add_prompt(1, "k", key, Prompt(box=BOXES[0]))
        session.propagate(1)
        _sync(device)
        return time.perf_counter() - t0

    cold_s = box_and_propagate(Session(engine, vol))
    session = Session(engine, vol)
    focused = 0
    t0 = time.perf_counter()
    for index in focus_order(key, vol.shape[0]):  # a slice at a time, until time is up
        focused += session.prefetch("k", index)
        if time.perf_counter() - t0 >= drawing_s:
            break
    _sync(device)
    per_slice = (time.perf_counter() - t0) / max(focused, 1)
    after = box_and_propagate(session)
    return {"drawing_s": drawing_s, "slices_focused": focused, "propagation_cold_s": cold_s,
            "propagation_after_drawing_s": after, "saved_s": cold_s - after,
            "encode_s_per_slice": per_slice}


CHILDREN: dict[str, Callable[..., dict]] = {
    "reference": lambda *a: run_reference(*a[:5]),
    "ours_fp32": lambda *a: run_ours(*a[:4], "fp32", *a[4:]),
    "ours_bf16": lambda *a: run_ours(*a[:4], "bf16", *a[4:]),
}


def _sync(device: str) -> None:
    if device == "cuda":
        import torch

        torch.cuda.synchronize()


def child(args: argparse.Namespace) -> None:
    sys.path.insert(0, str(HERE))
    if args.threads:
        import torch

        torch.set_num_threads(args.threads)
    vol = make_volume(args.slices)
    fn = CHILDREN[args.side]
    print(json.dumps(fn(args.checkpoint, args.device, vol, args.objects, args.masks,
                        args.drawing_s)))


# ---- figures from the sides' results --------------------------------------------------------


def _ratio(a: float | None, b: float | None) -> float | None:
    return None if a is None or b is None else a / b


def _compare(values: dict[str, float]) -> dict[str, float | None]:
    """A figure for each side, and the ratios the targets are about."""
    ref, f32, b16 = (values.get(s) for s in SIDES)
    out = dict(values)
    out.update(ours_fp32_vs_reference=_ratio(f32, ref), ours_bf16_vs_reference=_ratio(b16, ref),
               bf16_vs_fp32=_ratio(b16, f32))
    return out


def speed_figures(results: dict, args: argparse.Namespace) -> dict:
    n = args.slices
    return {
        "seconds_per_slice": _compare({s: r["times"][0] / n for s, r in results.items()}),
        "three_objects_s": _compare({s: sum(r["times"]) for s, r in results.items()}),
    }


def correction_figures(results: dict, args: argparse.Namespace) -> dict:
    ours, ref = results.get("ours_fp32"), results.get("reference")
    if ours is None:
        return {}
    full = ref["times"][0] if ref else None
    return {"correction_s": {"slices": ours["correction_slices"], "ours_fp32": ours["correction"],
                             "full_reference_run": full,
                             "ratio": _ratio(ours["correction"], full)}}


def memory_figures(results: dict, args: argparse.Namespace) -> dict:
    return {"peak_rss_mb": {s: r["peak_rss_mb"] for s, r in results.items()},
            "encoder_calls": {s: r["encoder_calls"] for s, r in results.items()
                              if "encoder_calls" in r}}


def focus_figures(results: dict, args: argparse.Namespace) -> dict:
    ours = {s: r for s, r in results.items() if "first_box" in r}
    return {"first_box_s": {s: {**r["first_box"],
                                "ratio": r["first_box"]["focused"] / r["first_box"]["cold"]}
                            for s, r in ours.items()},
            "drawing": {s: r["drawing"] for s, r in ours.items()},
            "kernels": {s: r["kernels"] for s, r in ours.items()}}


def agreement_figures(results: dict, args: argparse.Namespace) -> dict:
    """Dice of our bf16 masks against our fp32 masks, per object and worst slice."""
    if not {"ours_fp32", "ours_bf16"} <= set(results):
        return {}
    shape = (args.slices, 512, 512)
    a, b = (np.load(results[s]["masks"]) for s in ("ours_fp32", "ours_bf16"))
    per_object, worst = [], (2.0, 0, 0)
    for key in sorted(a.files, key=int):
        x = np.unpackbits(a[key])[:np.prod(shape)].reshape(shape).astype(bool)
        y = np.unpackbits(b[key])[:np.prod(shape)].reshape(shape).astype(bool)
        per_object.append(dice(x, y))
        for k in range(shape[0]):
            if x[k].any() or y[k].any():
                worst = min(worst, (dice(x[k], y[k]), int(key), k))
    return {"bf16_vs_fp32": {"dice_per_object": per_object,
                             "dice_worst_object": min(per_object),
                             "dice_worst_slice": worst[0] if worst[0] <= 1 else None,
                             "worst_slice": {"object": worst[1], "slice": worst[2]}}}


def dice(x: np.ndarray, y: np.ndarray) -> float:
    total = np.count_nonzero(x) + np.count_nonzero(y)
    return 1.0 if total == 0 else 2.0 * np.count_nonzero(x & y) / total


FIGURES = (speed_figures, correction_figures, memory_figures, agreement_figures, focus_figures)


# ---- the run ------------------------------------------------------------------------------


def main() -> None:
    p = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    p.add_argument("--device", default="cpu")
    p.add_argument("--slices", type=int, default=48)
    p.add_argument("--objects", type=int, default=3)
    p.add_argument("--drawing-s", type=float, default=5.0,
                   help="seconds the focus runs before the after-drawing propagation")
    p.add_argument("--sides", nargs="+", choices=SIDES, default=list(SIDES))
    p.add_argument("--threads", type=int,
                   help="torch threads per side (default torch's: all cores). On a machine "
                        "shared with other busy processes, 1 keeps the sides comparable")
    p.add_argument("--checkpoint", help="default: a seeded random-weight checkpoint")
    p.add_argument("--side", choices=SIDES, help=argparse.SUPPRESS)
    p.add_argument("--masks", help=argparse.SUPPRESS)
    p.add_argument("--json", help="also write the figures here")
    args = p.parse_args()
    if args.side:
        return child(args)
    load_start = os.getloadavg()
    with tempfile.TemporaryDirectory() as tmp:
        ckpt = args.checkpoint
        if ckpt is None:
            from medsam_server.engine.model import write_random_checkpoint

            ckpt = str(write_random_checkpoint(Path(tmp) / "random.pt", seed=0))
        results = {}
        for side in [s for s in SIDES if s in args.sides]:  # separate processes: fair RSS
            masks = str(Path(tmp) / f"{side}.npz")
            cmd = [sys.executable, __file__, "--side", side, "--checkpoint", ckpt,
                   "--device", args.device, "--slices", str(args.slices),
                   "--objects", str(args.objects), "--masks", masks,
                   "--drawing-s", str(args.drawing_s)]
            cmd += ["--threads", str(args.threads)] if args.threads else []
            out = subprocess.run(cmd, check=True, capture_output=True, text=True).stdout
            results[side] = json.loads(out.strip().splitlines()[-1])
            results[side]["masks"] = masks
        figures: dict = {"device": args.device, "slices": args.slices, "objects": args.objects,
                         "threads": args.threads,
                         "load_average": {"start": load_start, "end": os.getloadavg()}}
        for part in FIGURES:
            figures.update(part(results, args))
    report(figures)
    if args.json:
        Path(args.json).write_text(json.dumps(figures, indent=2))


def _cell(value: float | None, fmt: str, width: int) -> str:
    return f"{'-':>{width}}" if value is None else f"{value:{width}{fmt}}"


def report(f: dict) -> None:
    print(f"MedSAM2 engine benchmark, {f['slices']} slices of 512x512, device {f['device']}, "
          f"{f['threads'] or 'default'} thread(s), "
          f"load average {f['load_average']['start'][0]:.2f} -> {f['load_average']['end'][0]:.2f}")
    print(f"{'':26}{'stock':>9}{'ours fp32':>10}{'ours bf16':>10}"
          f"{'fp32/stock':>11}{'bf16/stock':>11}{'bf16/fp32':>10}")
    for key, label, fmt in (("seconds_per_slice", "s/slice, 1 object", ".3f"),
                            ("three_objects_s", "s, 3 objects", ".1f")):
        row = f[key]
        print(f"{label:26}" + "".join(_cell(row.get(s), fmt, w) for s, w in zip(
            SIDES, (9, 10, 10), strict=True)) + "".join(_cell(row.get(s), ".2f", w) for s, w in zip(
            ("ours_fp32_vs_reference", "ours_bf16_vs_reference", "bf16_vs_fp32"), (11, 11, 10),
            strict=True)))
    print("targets: fp32/stock <= 0.85 (1 object), <= 0.65 (3 objects); bf16/fp32 <= 0.65")
    if "correction_s" in f:
        c = f["correction_s"]
        print(f"correction, {c['slices']} slices re-propagated (fp32): {c['ours_fp32']:.1f} s"
              + (f" vs a full stock run {c['full_reference_run']:.1f} s, ratio "
                 f"{c['ratio']:.2f} (target <= 0.40)" if c["ratio"] is not None else ""))
    print("peak RSS MB: " + ", ".join(f"{s} {v:.0f}" for s, v in f["peak_rss_mb"].items()))
    print("encoder calls (3 objects + correction): "
          + ", ".join(f"{s} {v}" for s, v in f["encoder_calls"].items()))
    if "bf16_vs_fp32" in f:
        a = f["bf16_vs_fp32"]
        worst = "no slice with a mask" if a["dice_worst_slice"] is None else (
            f"worst slice {a['dice_worst_slice']:.4f} (object {a['worst_slice']['object']}, "
            f"slice {a['worst_slice']['slice']})")
        print("bf16 vs fp32 masks: Dice per object "
              + ", ".join(f"{d:.4f}" for d in a["dice_per_object"]) + f"; {worst}")
    for side, b in f.get("first_box_s", {}).items():
        d = f["drawing"][side]
        print(f"{side} ({f['kernels'][side]} kernels): first box cold {b['cold']:.3f} s, "
              f"focused {b['focused']:.3f} s, ratio {b['ratio']:.3f} (target <= 0.15); "
              f"after {d['drawing_s']:.0f} s of drawing ({d['slices_focused']} slices focused, "
              f"{d['encode_s_per_slice']:.2f} s each) the propagation took "
              f"{d['propagation_after_drawing_s']:.1f} s instead of "
              f"{d['propagation_cold_s']:.1f} s (saved {d['saved_s']:.1f} s)")


if __name__ == "__main__":
    main()
