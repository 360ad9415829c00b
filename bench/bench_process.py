"""Whole ``segment`` processes on a 40-slice CT: ours (fp32 and bf16) vs the stock predictor.

What a CLI or batch user waits for is a whole process: start-up, every slice, the
output file. Each round runs, one after another on the same 40-slice 512² real CT (the
20-slice DICOM series mirrored, written once as NIfTI) and the same seeded
random-weight checkpoint:
  * ``stock``: the stock SAM2 legacy predictor driven as MedSAM2's
    ``medsam2_infer_3D_CT.py`` drives it (read, window, PIL resize, box on the key slice,
    forward, reset, reverse, largest 3D component, write), fp32 on CPU;
  * ``ours_fp32`` / ``ours_bf16``: ``medsam-server segment --precision fp32|bf16``.
Sides alternate within a round; medians over rounds, and their ratios, are reported,
with each round's own ratio (the spread shows how much a shared machine moved them).
The voxels where the fp32 output differs from the stock output are counted (printed): the
logits agree within 1e-6, so only voxels whose logit is that close to 0 may differ.

    python bench/bench_process.py [--rounds 3] [--slices 40] [--sides ...] [--json out.json]

``--json`` keys (stable): slices, rounds, load_average {start, end}, process_s {side: [s]},
median_s {side: s}, ratio {ours_fp32_vs_stock, ours_bf16_vs_stock, bf16_vs_fp32},
round_ratios {same keys: [r]}, fp32_voxels_differing_from_stock, voxels.
"""

from __future__ import annotations

import argparse
import json
import os
import statistics
import subprocess
import sys
import tempfile
import time
from pathlib import Path

import numpy as np

HERE = Path(__file__).resolve().parent
DICOM = HERE.parent.parent / "shared" / "data" / "totalseg_ct_dicom_2mm" / "dicom"
BOX = (150, 200, 330, 360)
WINDOW = (40.0, 400.0)
SIDES = ("stock", "ours_fp32", "ours_bf16")


def write_ct(path: Path, n_slices: int) -> None:
    """The 20-slice DICOM CT mirrored back and forth to ``n_slices``, as one NIfTI file."""
    import SimpleITK as sitk

    reader = sitk.ImageSeriesReader()
    reader.SetFileNames(reader.GetGDCMSeriesFileNames(str(DICOM)))
    image = reader.Execute()
    arr = sitk.GetArrayFromImage(image)
    order = [i for _ in range(n_slices) for i in (*range(20), *range(19, -1, -1))][:n_slices]
    out = sitk.GetImageFromArray(np.ascontiguousarray(arr[order]))
    out.SetSpacing(image.GetSpacing())
    out.SetOrigin(image.GetOrigin())
    out.SetDirection(image.GetDirection())
    sitk.WriteImage(out, str(path))


def stock_process(ct: str, ckpt: str, out: str) -> None:
    """The reference program: what medsam2_infer_3D_CT.py does for one CT and one box."""
    sys.path.insert(0, str(HERE))
    import SimpleITK as sitk
    from medsam2_reference import build_reference_predictor, reference_segment
    from medsam_server.engine.preprocess import window_to_uint8  # MedSAM2's windowing (numpy only)
    from skimage.measure import label

    image = sitk.ReadImage(ct)
    u8 = window_to_uint8(sitk.GetArrayFromImage(image), "ct", WINDOW)
    predictor = build_reference_predictor(ckpt, "cpu")
    seg = reference_segment(predictor, u8, u8.shape[0] // 2, BOX)
    labels = label(seg > 0)  # MedSAM2's getLargestCC
    if labels.max() > 0:
        seg = (labels == np.argmax(np.bincount(labels.flat)[1:]) + 1).astype(np.uint8)
    mask = sitk.GetImageFromArray(seg)
    mask.CopyInformation(image)
    sitk.WriteImage(mask, out)


def command(side: str, ct: str, ckpt: str, out: str, slices: int) -> list[str]:
    if side == "stock":
        return [sys.executable, __file__, "--stock-child", ct, ckpt, out]
    cli = Path(sys.executable).with_name("medsam-server")
    return [str(cli), "segment", ct, "-o", out, "--checkpoint", ckpt, "--slice",
            str(slices // 2), "--box", *map(str, BOX), "--window", *map(str, WINDOW),
            "--device", "cpu", "--precision", side.removeprefix("ours_"), "--quiet"]


def voxels_differing(a: str, b: str) -> tuple[int, int]:
    """Voxels where two masks differ, and voxels in all."""
    import SimpleITK as sitk

    x, y = (sitk.GetArrayFromImage(sitk.ReadImage(p)) > 0 for p in (a, b))
    return int(np.count_nonzero(x != y)), int(x.size)


def main() -> None:
    p = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    p.add_argument("--rounds", type=int, default=3)
    p.add_argument("--slices", type=int, default=40)
    p.add_argument("--sides", nargs="+", choices=SIDES, default=list(SIDES))
    p.add_argument("--json", help="also write the figures here")
    p.add_argument("--stock-child", nargs=3, help=argparse.SUPPRESS)
    args = p.parse_args()
    if args.stock_child:
        return stock_process(*args.stock_child)
    if not DICOM.is_dir():
        sys.exit(f"benchmark data missing: {DICOM}")
    load_start = os.getloadavg()
    times: dict[str, list[float]] = {s: [] for s in SIDES if s in args.sides}
    with tempfile.TemporaryDirectory() as tmp:
        from medsam_server.engine.model import write_random_checkpoint

        ckpt = str(write_random_checkpoint(Path(tmp) / "random.pt", seed=0))
        ct = str(Path(tmp) / "ct.nii.gz")
        write_ct(Path(ct), args.slices)
        outs = {s: str(Path(tmp) / f"{s}.nii.gz") for s in times}
        for r in range(args.rounds):
            for side in times:
                t0 = time.perf_counter()
                subprocess.run(command(side, ct, ckpt, outs[side], args.slices), check=True,
                               capture_output=True)
                times[side].append(time.perf_counter() - t0)
                print(f"round {r + 1} {side}: {times[side][-1]:.1f} s", file=sys.stderr)
        differing = voxels_differing(outs["stock"], outs["ours_fp32"]) \
            if {"stock", "ours_fp32"} <= set(times) else (None, None)
    figures = summarise(times, args, differing, load_start)
    report(figures)
    if args.json:
        Path(args.json).write_text(json.dumps(figures, indent=2))


PAIRS = {"ours_fp32_vs_stock": ("ours_fp32", "stock"),
         "ours_bf16_vs_stock": ("ours_bf16", "stock"), "bf16_vs_fp32": ("ours_bf16", "ours_fp32")}


def summarise(times: dict[str, list[float]], args: argparse.Namespace,
              differing: tuple[int | None, int | None],
              load_start: tuple[float, float, float]) -> dict:
    median = {s: statistics.median(t) for s, t in times.items()}
    pairs = {k: v for k, v in PAIRS.items() if set(v) <= set(times)}
    return {"slices": args.slices, "rounds": args.rounds,
            "load_average": {"start": load_start, "end": os.getloadavg()},
            "process_s": times, "median_s": median,
            "ratio": {k: median[a] / median[b] for k, (a, b) in pairs.items()},
            "round_ratios": {k: [x / y for x, y in zip(times[a], times[b], strict=True)]
                             for k, (a, b) in pairs.items()},
            "fp32_voxels_differing_from_stock": differing[0], "voxels": differing[1]}


def report(f: dict) -> None:
    print(f"whole segment processes, {f['slices']}-slice 512x512 CT, 1 box, CPU, "
          f"median of {f['rounds']}; load average {f['load_average']['start'][0]:.2f} -> "
          f"{f['load_average']['end'][0]:.2f}")
    for side, s in f["median_s"].items():
        print(f"  {side:10} {s:6.1f} s  ({s / f['slices']:.3f} s per slice, start-up included)")
    for key, r in f["ratio"].items():
        rounds = ", ".join(f"{x:.2f}" for x in f["round_ratios"][key])
        print(f"  {key:20} {r:.2f}   (rounds: {rounds})")
    if f["fp32_voxels_differing_from_stock"] is not None:
        print(f"  ours fp32 output vs the stock output: {f['fp32_voxels_differing_from_stock']} "
              f"of {f['voxels']} voxels differ (logits within 1e-6: voxels on the boundary)")


if __name__ == "__main__":
    main()
