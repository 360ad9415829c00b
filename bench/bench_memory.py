"""Memory at scale: peak RSS of ``medsam-server segment`` on 48-, 200- and 600-slice CTs.

The volumes are the 20-slice 512×512 real CT (DICOM) mirrored back and forth, written as
NRRD. Each size runs ``medsam-server segment`` (one box on the middle slice, propagated
both ways, the default recipe) in its own process, through the real CLI entry point, with
two probes that change nothing: the feature cache's largest size (a wrapper around
``FeatureCache.put``) and the process's RSS sampled after every encoded slice. Reported:
peak RSS per size, the growth per slice between sizes, the cache's peak against its
budget. Target (issue 8): a 600-slice CT within 4 GB peak RSS on CPU.

    python bench/bench_memory.py [--sizes 48 200 600] [--json out.json]
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
from pathlib import Path

HERE = Path(__file__).resolve().parent
DICOM = HERE.parent.parent / "shared" / "data" / "totalseg_ct_dicom_2mm" / "dicom"
BOX = (150, 200, 330, 360)
LIMIT_MB = 4096


def write_volume(n: int, path: Path) -> None:
    import numpy as np
    import SimpleITK as sitk

    image = sitk.ReadImage(sitk.ImageSeriesReader_GetGDCMSeriesFileNames(str(DICOM)))
    array = sitk.GetArrayFromImage(image)  # (20, 512, 512)
    order = [i for _ in range(n) for i in (*range(20), *range(19, -1, -1))][:n]
    out = sitk.GetImageFromArray(np.ascontiguousarray(array[order]))
    out.SetSpacing(image.GetSpacing())
    sitk.WriteImage(out, str(path))


def rss_mb() -> float:
    with open("/proc/self/statm") as f:
        return int(f.read().split()[1]) * os.sysconf("SC_PAGE_SIZE") / 2**20


def child(volume: str, checkpoint: str, output: str, n: int) -> None:
    """``medsam-server segment`` in this process, with the two probes."""
    from medsam_server.cli import main as cli
    from medsam_server.engine import features

    samples: list[tuple[int, float]] = []
    peak_cache = [0, 0]  # bytes, budget
    put = features.FeatureCache.put

    def probed_put(self, key, tensors):  # noqa: ANN001, ANN202
        put(self, key, tensors)
        peak_cache[0] = max(peak_cache[0], self.nbytes)
        peak_cache[1] = self.budget_bytes
        samples.append((len(samples) + 1, rss_mb()))

    features.FeatureCache.put = probed_put  # type: ignore[method-assign]
    t0 = time.perf_counter()
    rc = cli.main(["segment", volume, "-o", output, "--checkpoint", checkpoint,
                   "--slice", str(n // 2), "--box", *map(str, BOX), "--device", "cpu",
                   "--quiet"])
    seconds = time.perf_counter() - t0
    peak = resource.getrusage(resource.RUSAGE_SELF).ru_maxrss / 1024.0
    print(json.dumps({"rc": rc, "seconds": seconds, "peak_rss_mb": peak,
                      "cache_peak_mb": peak_cache[0] / 2**20,
                      "cache_budget_mb": peak_cache[1] / 2**20, "samples": samples}))


def main() -> None:
    p = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    p.add_argument("--sizes", type=int, nargs="+", default=[48, 200, 600])
    p.add_argument("--json", help="also write the figures here")
    p.add_argument("--child", nargs=4, help=argparse.SUPPRESS)
    args = p.parse_args()
    if args.child:
        volume, ckpt, out, n = args.child
        return child(volume, ckpt, out, int(n))
    if not DICOM.is_dir():
        sys.exit(f"benchmark data missing: {DICOM}")
    runs: dict[int, dict] = {}
    with tempfile.TemporaryDirectory() as tmp:
        from medsam_server.engine.model import write_random_checkpoint

        ckpt = str(write_random_checkpoint(Path(tmp) / "random.pt", seed=0))
        for n in args.sizes:
            vol = Path(tmp) / f"ct{n}.nrrd"
            write_volume(n, vol)
            out = subprocess.run([sys.executable, __file__, "--child", str(vol), ckpt,
                                  str(Path(tmp) / f"out{n}.seg.nrrd"), str(n)],
                                 check=True, capture_output=True, text=True).stdout
            runs[n] = json.loads(out.strip().splitlines()[-1])
            vol.unlink()
            print(f"{n} slices: peak RSS {runs[n]['peak_rss_mb']:.0f} MB, "
                  f"{runs[n]['seconds']:.0f} s", file=sys.stderr, flush=True)
    report(runs, args)


def report(runs: dict[int, dict], args: argparse.Namespace) -> None:
    sizes = sorted(runs)
    print("medsam-server segment, 512x512 real CT mirrored, 1 box propagated both ways, CPU")
    print(f"{'slices':>7}{'peak RSS MB':>13}{'cache peak MB':>15}{'budget MB':>11}"
          f"{'s/slice':>9}")
    for n in sizes:
        r = runs[n]
        print(f"{n:7d}{r['peak_rss_mb']:13.0f}{r['cache_peak_mb']:15.0f}"
              f"{r['cache_budget_mb']:11.0f}{r['seconds'] / n:9.2f}")
    growth = {f"{a}-{b}": (runs[b]["peak_rss_mb"] - runs[a]["peak_rss_mb"]) / (b - a)
              for a, b in zip(sizes, sizes[1:], strict=False)}
    for span, mb in growth.items():
        print(f"peak RSS growth {span} slices: {mb:.2f} MB per slice")
    big = sizes[-1]
    samples = runs[big]["samples"]
    if len(samples) > 40:  # once the cache is full, RSS should stay flat
        late = samples[len(samples) // 2:]
        slope = (late[-1][1] - late[0][1]) / max(1, late[-1][0] - late[0][0])
        print(f"{big} slices, RSS slope over the second half of the encoded slices: "
              f"{slope:.3f} MB per slice")
    else:
        slope = None
    ok = runs[big]["peak_rss_mb"] <= LIMIT_MB
    print(f"{big} slices within {LIMIT_MB} MB: {'yes' if ok else 'NO'}; cache within budget: "
          f"{all(r['cache_peak_mb'] <= r['cache_budget_mb'] for r in runs.values())}; "
          f"load average {os.getloadavg()[0]:.2f}")
    if args.json:
        figures = {"sizes": {str(n): {k: v for k, v in runs[n].items() if k != "samples"}
                             for n in sizes},
                   "growth_mb_per_slice": growth, "late_rss_slope_mb_per_slice": slope,
                   "limit_mb": LIMIT_MB, "within_limit": ok}
        Path(args.json).write_text(json.dumps(figures, indent=2))


if __name__ == "__main__":
    main()
