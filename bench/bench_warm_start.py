"""Warm start: the first box after ``medsam-server serve`` starts, with and without it.

Each round starts a fresh server (seeded random weights: the arithmetic is the real one),
uploads two 512×512 real CT slices (untimed), then times the first box on slice 0 (its
encoding + decoder: what the first user waits for) and a second box on slice 1 (the same
work on a server that has run once: the steady state). Rounds alternate warm and cold
servers; medians are printed, with the warm-up time the server reported (/info).

    python bench/bench_warm_start.py [--device cpu|cuda] [--rounds 3]
"""

from __future__ import annotations

import argparse
import statistics
import sys
import tempfile
import time
from pathlib import Path

HERE = Path(__file__).resolve().parent
sys.path.insert(0, str(HERE))
from bench_service import BOX, Server, ct_int16  # noqa: E402


def one_round(checkpoint: Path, device: str, threads: int, warm: bool) -> dict[str, float]:
    server = Server(checkpoint, device, threads, extra=() if warm else ("--no-warm-start",))
    try:
        sid, _ = server.open(ct_int16(2), "zstd")
        times = {}
        for name, index in (("first", 0), ("second", 1)):
            body = {"object_id": 1 + index, "axis": "k", "index": index, "box": list(BOX)}
            t0 = time.perf_counter()
            server.call("POST", f"/sessions/{sid}/prompt", json=body)
            times[name] = time.perf_counter() - t0
        times["warm_up"] = server.call("GET", "/info")["warm_start_s"] or 0.0
        return times
    finally:
        server.close()


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--device", default="cpu")
    parser.add_argument("--threads", type=int, default=2)
    parser.add_argument("--rounds", type=int, default=3)
    args = parser.parse_args()
    from medsam_server.engine.model import write_random_checkpoint

    with tempfile.TemporaryDirectory() as tmp:
        checkpoint = write_random_checkpoint(Path(tmp) / "random.pt", seed=0)
        runs: dict[bool, list[dict[str, float]]] = {True: [], False: []}
        for _ in range(args.rounds):
            for warm in (False, True):
                runs[warm].append(one_round(checkpoint, args.device, args.threads, warm))
    print(f"first box after start-up, {args.device}, median of {args.rounds} fresh servers each")
    print("| server | first box | second box | first − second | warm-up at start |")
    print("| --- | --- | --- | --- | --- |")
    for warm in (False, True):
        med = {k: statistics.median(r[k] for r in runs[warm]) for k in runs[warm][0]}
        print(f"| {'warm start' if warm else 'no warm start'} | {med['first'] * 1e3:.0f} ms | "
              f"{med['second'] * 1e3:.0f} ms | {(med['first'] - med['second']) * 1e3:+.0f} ms | "
              f"{med['warm_up']:.2f} s |")


if __name__ == "__main__":
    main()
