"""Focus benchmark: the first box on a cold slice vs on a slice focused beforehand.

In one process, through the service's own path (``Service.prompt`` on the model worker
thread, no HTTP), with a seeded random-weight checkpoint (weights don't change the cost)
and real CT (the 512×512 DICOM series). Each round opens a fresh session, times a box on
a slice nobody encoded (cold: encoder + decoder), then focuses another slice, waits for
the focus to finish (as a user studying the slice would), and times a box there
(decoder only). Target: focused / cold ≤ 0.15 on a CPU.

    python bench/bench_focus.py [--device cpu|cuda] [--slices 6] [--rounds 3] [--json OUT]
"""

from __future__ import annotations

import argparse
import json
import os
import statistics
import sys
import tempfile
import time
from pathlib import Path

import numpy as np

HERE = Path(__file__).resolve().parent
DICOM = HERE.parent.parent / "shared" / "data" / "totalseg_ct_dicom_2mm" / "dicom"
BOX = [150.0, 200.0, 330.0, 360.0]


def ct_int16(n_slices: int) -> np.ndarray:
    from medsam_server.io.volumes import read_volume

    if not DICOM.is_dir():
        sys.exit(f"benchmark data missing: {DICOM}")
    ct = read_volume(DICOM).array
    return np.ascontiguousarray(ct[:n_slices])


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("--device", default="cpu")
    ap.add_argument("--slices", type=int, default=6)
    ap.add_argument("--rounds", type=int, default=3)
    ap.add_argument("--precision", help="the engine's precision (auto, fp32, bf16), if it has one")
    ap.add_argument("--json", type=Path, help="write the figures here")
    args = ap.parse_args()

    from medsam_client import protocol as P
    from medsam_server.engine.engine import Engine
    from medsam_server.engine.model import write_random_checkpoint
    from medsam_server.service.config import ServiceConfig
    from medsam_server.service.operations import Service

    volume = ct_int16(args.slices)
    with tempfile.TemporaryDirectory() as tmp:
        ckpt = write_random_checkpoint(Path(tmp) / "random.pt", seed=0)
        extra = {"precision": args.precision} if args.precision else {}
        engine = Engine.from_checkpoint(ckpt, device=args.device, **extra)
    service = Service(ServiceConfig(token="bench"), engine)
    service.start()
    meta = P.VolumeMeta(shape=list(volume.shape), dtype="int16", sha256=P.sha256_array(volume),
                        encoding="raw", window=[40.0, 400.0])

    def session():  # noqa: ANN202
        s = service.sessions.get(service.create_session(meta).session_id)
        service.upload(s, volume.tobytes())
        return s

    def box(s, object_id: int, index: int) -> float:  # noqa: ANN001
        t0 = time.perf_counter()
        service.prompt(s, P.PromptRequest(object_id, "k", index, box=BOX)).result()
        return time.perf_counter() - t0

    try:
        warm = session()  # first-call costs (allocator, oneDNN primitives) out of the way
        box(warm, 1, 0)
        box(warm, 2, 0)
        service.delete_session(warm)
        cold, focused, focus_s = [], [], []
        cold_slice, focus_slice = 0, args.slices // 2
        for r in range(args.rounds):
            s = session()
            cold.append(box(s, 1, cold_slice))
            t0 = time.perf_counter()
            work, _ = service.start_focus(s, P.FocusRequest("k", focus_slice))
            if not work.finished.wait(600):
                sys.exit("the focus did not finish within 600 s")
            focus_s.append((time.perf_counter() - t0) / max(len(work.encoded), 1))
            focused.append(box(s, 2, focus_slice))
            print(f"round {r + 1}: cold box {cold[-1] * 1000:.0f} ms, focus of "
                  f"{len(work.encoded)} slices {focus_s[-1]:.2f} s/slice ({work.ended}), box on the "
                  f"focused slice {focused[-1] * 1000:.0f} ms", flush=True)
            service.delete_session(s)
    finally:
        service.close()
    ratio = statistics.median(focused) / statistics.median(cold)
    figures = {"device": str(engine.device), "threads": os.cpu_count(),
               "precision": getattr(engine, "precision", "fp32"),
               "cold_box_ms_median": round(statistics.median(cold) * 1000, 1),
               "focused_box_ms_median": round(statistics.median(focused) * 1000, 1),
               "focused_over_cold": round(ratio, 3),
               "focus_s_per_slice": round(statistics.median(focus_s), 3),
               "rounds": args.rounds, "load_average_1min": round(os.getloadavg()[0], 2)}
    print(f"{figures['precision']} on {figures['device']}: first box: cold {figures['cold_box_ms_median']} ms, on a focused slice "
          f"{figures['focused_box_ms_median']} ms (median of {args.rounds}): ratio "
          f"{ratio:.3f} (target <= 0.15)")
    if args.json:
        args.json.write_text(json.dumps(figures, indent=2) + "\n")


if __name__ == "__main__":
    main()
