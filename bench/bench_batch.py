"""Batch benchmark: cases per minute of ``medsam-server batch`` (local and ``--ray``).

With a seeded random-weight checkpoint (weights don't change the cost) and real CT:
6-slice crops of the abdomen CT (k = 0, 6, 9, 12, 18, 24 ..+5, as many as --cases), the
liver (label 5) prompted by its box from the reference. Every figure is the wall time of the whole
command, start-up included, as a user sees it:
  1. one ``medsam-server segment`` process per case, one after the other (the model is
     loaded for every case), same boxes;
  2. ``medsam-server batch`` (one process, the model loaded once), default threads;
  3. ``batch --ray`` on a local Ray: 1 actor of 2 CPUs (2 threads) vs 2 actors of 1 CPU.

    python bench/bench_batch.py [--cases 4] [--rounds 1] [--device cpu] [--skip-ray]
"""

from __future__ import annotations

import argparse
import csv
import json
import os
import subprocess
import sys
import tempfile
import time
from pathlib import Path

HERE = Path(__file__).resolve().parent
DATA = HERE.parent.parent / "shared" / "data" / "totalseg_ct_abdomen_3mm"
STARTS = (0, 6, 9, 12, 18, 24)
LABEL = 5


def make_cases(folder: Path, n: int) -> list[tuple[str, Path, Path]]:
    import SimpleITK as sitk

    if not (DATA / "example_ct_sm.nii.gz").is_file():
        sys.exit(f"benchmark data missing: {DATA}")
    ct = sitk.ReadImage(str(DATA / "example_ct_sm.nii.gz"))
    seg = sitk.ReadImage(str(DATA / "example_seg.nii.gz"))
    cases = []
    for k in (STARTS * (n // len(STARTS) + 1))[:n]:
        name = f"ct_k{k:02d}_{len(cases)}"
        image, ref = folder / f"{name}.nii.gz", folder / f"{name}_ref.nii.gz"
        sitk.WriteImage(ct[:, :, k:k + 6], str(image))
        sitk.WriteImage(seg[:, :, k:k + 6], str(ref))
        cases.append((name, image, ref))
    with open(folder / "manifest.csv", "w", newline="") as f:
        writer = csv.writer(f)
        writer.writerow(["case", "image", "reference"])
        writer.writerows([(name, image.name, ref.name) for name, image, ref in cases])
    return cases


def run(argv: list[str]) -> float:
    env = {k: v for k, v in os.environ.items() if k != "RAY_ADDRESS"}
    t0 = time.perf_counter()
    proc = subprocess.run([sys.executable, "-m", "medsam_server.cli", *argv],
                          capture_output=True, text=True, env=env)
    seconds = time.perf_counter() - t0
    if proc.returncode != 0:
        sys.exit(f"failed ({proc.returncode}): {' '.join(argv)}\n{proc.stderr[-3000:]}")
    return seconds


def one_process_per_case(cases: list, ckpt: Path, out: Path, device: str) -> float:
    from medsam_server.batch.cases import reference_boxes
    from medsam_server.io.volumes import read_volume

    out.mkdir()
    total = 0.0
    for name, image, ref in cases:
        [spec] = reference_boxes(read_volume(ref).array, "k", [LABEL], 0, 0, name)
        total += run(["segment", str(image), "-o", str(out / f"{name}.seg.nrrd"),
                      "--checkpoint", str(ckpt), "--slice", str(spec.slice),
                      "--box", *(str(v) for v in spec.prompt.box), "--name", spec.name,
                      "--device", device, "--quiet"])
    return total


def batch(folder: Path, ckpt: Path, out: Path, device: str, *extra: str) -> float:
    return run(["batch", str(folder / "manifest.csv"), "-o", str(out), "--checkpoint",
                str(ckpt), "--boxes-from-reference", "--labels", str(LABEL), "--device", device,
                "--quiet", *extra])


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--cases", type=int, default=4)
    parser.add_argument("--device", default="cpu")
    parser.add_argument("--rounds", type=int, default=1,
                        help="repeat every way this often, in rotating order; the best counts")
    parser.add_argument("--skip-ray", action="store_true")
    args = parser.parse_args()

    from medsam_server.engine.model import write_random_checkpoint

    ways = {
        "segment, one process per case": lambda root, ckpt, cases, out: one_process_per_case(
            cases, ckpt, out, args.device),
        "batch, one process": lambda root, ckpt, cases, out: batch(root, ckpt, out, args.device),
    }
    if not args.skip_ray:
        ways["batch --ray, 1 actor x 2 CPUs"] = lambda root, ckpt, cases, out: batch(
            root, ckpt, out, args.device, "--ray", "--workers", "1", "--cpus-per-worker", "2")
        ways["batch --ray, 2 actors x 1 CPU"] = lambda root, ckpt, cases, out: batch(
            root, ckpt, out, args.device, "--ray", "--workers", "2", "--cpus-per-worker", "1")
    load_before = os.getloadavg()[0]
    timings: dict[str, list[float]] = {name: [] for name in ways}
    with tempfile.TemporaryDirectory(prefix="bench-batch-") as tmp:
        root = Path(tmp)
        ckpt = write_random_checkpoint(root / "random.pt", seed=0)
        cases = make_cases(root, args.cases)
        n = len(cases)
        names = list(ways)
        for r in range(args.rounds):
            for name in names[r % len(names):] + names[:r % len(names)]:
                out = root / f"out-{r}-{names.index(name)}"
                timings[name].append(ways[name](root, ckpt, cases, out))

    best = {name: min(values) for name, values in timings.items()}
    print(f"{n} cases of 6 slices (101x122), one object each, device {args.device}, "
          f"{os.cpu_count()} CPUs, best of {args.rounds} round(s); load average "
          f"{load_before:.2f} before, {os.getloadavg()[0]:.2f} after")
    print(f"| {'how':<32} | {'seconds':>8} | {'cases/min':>9} | all rounds (s) |")
    print(f"| {'-' * 32} | {'-' * 8} | {'-' * 9} | --- |")
    for name, seconds in best.items():
        rounds = ", ".join(f"{v:.1f}" for v in timings[name])
        print(f"| {name:<32} | {seconds:>8.1f} | {60 * n / seconds:>9.2f} | {rounds} |")
    print(f"batch vs one process per case: "
          f"{best['segment, one process per case'] / best['batch, one process']:.2f}x the "
          "cases/min")
    if not args.skip_ray:
        one, two = best["batch --ray, 1 actor x 2 CPUs"], best["batch --ray, 2 actors x 1 CPU"]
        print(f"--ray 2 actors vs 1: {one / two:.2f}x the cases/min")
    results = HERE / "results"
    results.mkdir(exist_ok=True)
    (results / "bench_batch.json").write_text(json.dumps(
        {"cases": n, "device": args.device, "seconds": timings}, indent=1))


if __name__ == "__main__":
    main()
