"""Service benchmark: what going through ``medsam-server serve`` over loopback HTTP costs.

Measures, with a seeded random-weight checkpoint (weights don't change the cost) and
real CT (the 512×512×20 DICOM series mirrored back and forth to any slice count):
  1. round trip of a prompt on an already encoded slice: median of N through HTTP vs
     the same ``Session.add_prompt`` call in-process;
  2. upload of a 512×512×200 int16 volume (POST /sessions + PUT .../volume, until the
     session is ready), zstd vs raw, with the client's compression time shown apart;
  3. propagation per slice through the service (POST .../propagate, long-poll updates
     until done) vs ``Session.propagate`` in-process on the same volume: target ≤ 5 %.
The server and the in-process side never run at the same time (same threads).

    python bench/bench_service.py [--device cpu|cuda] [--slices 16] [--prompts 20] [--rounds 2]
"""

from __future__ import annotations

import argparse
import re
import secrets
import statistics
import subprocess
import sys
import tempfile
import threading
import time
from pathlib import Path

import numpy as np
import requests

HERE = Path(__file__).resolve().parent
DICOM = HERE.parent.parent / "shared" / "data" / "totalseg_ct_dicom_2mm" / "dicom"
BOX = (150, 200, 330, 360)


def ct_int16(n_slices: int) -> np.ndarray:
    from medsam_server.io.volumes import read_volume

    if not DICOM.is_dir():
        sys.exit(f"benchmark data missing: {DICOM}")
    ct = read_volume(DICOM).array
    order = [i for _ in range(n_slices) for i in (*range(20), *range(19, -1, -1))][:n_slices]
    return np.ascontiguousarray(ct[order])


class Server:
    def __init__(self, checkpoint: Path, device: str, threads: int,
                 extra: tuple[str, ...] = ()) -> None:
        self.token = secrets.token_urlsafe(24)
        self.proc = subprocess.Popen(
            [sys.executable, "-m", "medsam_server.cli", "serve", "--port", "0",
             f"--token={self.token}", "--checkpoint", str(checkpoint), "--device", device,
             "--threads", str(threads), "--memory-budget-mb", "8192", *extra],
            stderr=subprocess.PIPE, text=True)
        ready, url = threading.Event(), []

        def drain() -> None:
            for line in self.proc.stderr:  # type: ignore[union-attr]
                if m := re.search(r"listening on (http://\S+)", line):
                    url.append(m.group(1))
                    ready.set()
            ready.set()

        threading.Thread(target=drain, daemon=True).start()
        if not ready.wait(300) or not url:
            sys.exit("the server did not start")
        self.url = url[0]
        self.http = requests.Session()
        self.http.headers["Authorization"] = f"Bearer {self.token}"

    def call(self, method: str, path: str, **kw) -> dict:
        r = self.http.request(method, self.url + path, timeout=600, **kw)
        r.raise_for_status()
        return r.json()

    def open(self, volume: np.ndarray, encoding: str) -> tuple[str, float]:
        """A ready session; returns its id and the client's compression seconds."""
        self.last_body_bytes = 0
        from medsam_client import protocol as P

        meta = P.VolumeMeta(shape=list(volume.shape), dtype=volume.dtype.name,
                            sha256=P.sha256_array(volume), encoding=encoding)  # type: ignore[arg-type]
        t0 = time.perf_counter()
        body = P.compress(volume.tobytes(), encoding)  # type: ignore[arg-type]
        t_compress = time.perf_counter() - t0
        self.last_body_bytes = len(body)
        sid = self.call("POST", "/sessions", json=P.to_json(meta))["session_id"]
        assert self.call("PUT", f"/sessions/{sid}/volume", data=body)["state"] == "ready"
        return sid, t_compress

    def close(self) -> None:
        self.proc.terminate()
        self.proc.wait(30)


def bench_prompts(server: Server, engine, n: int, rounds: int) -> dict:
    """Median per round, rounds alternating service and direct; the best round counts."""
    from medsam_server.engine.preprocess import window_to_uint8
    from medsam_server.engine.prompts import Prompt
    from medsam_server.engine.session import Session

    volume = ct_int16(2)
    sid, _ = server.open(volume, "zstd")
    body = {"object_id": 1, "axis": "k", "index": 0, "box": list(BOX)}
    server.call("POST", f"/sessions/{sid}/prompt", json=body)  # encodes the slice
    session = Session(engine, window_to_uint8(volume, "ct"))
    session.add_prompt(1, "k", 0, Prompt(box=BOX))
    calls = {"http": lambda: server.call("POST", f"/sessions/{sid}/prompt", json=body),
             "direct": lambda: session.add_prompt(1, "k", 0, Prompt(box=BOX))}
    best = {"http": float("inf"), "direct": float("inf")}
    for _ in range(rounds):
        for side, call in calls.items():
            times = []
            for _ in range(n):
                t0 = time.perf_counter()
                call()
                times.append(time.perf_counter() - t0)
            best[side] = min(best[side], statistics.median(times))
    server.call("DELETE", f"/sessions/{sid}")
    return best


def bench_upload(server: Server, slices: int) -> dict:
    volume = ct_int16(slices)
    out = {"mb": volume.nbytes / 1e6}
    for encoding in ("zstd", "raw"):
        t0 = time.perf_counter()
        sid, t_compress = server.open(volume, encoding)
        out[encoding] = time.perf_counter() - t0
        out[f"{encoding}_compress"] = t_compress
        out[f"{encoding}_mb"] = server.last_body_bytes / 1e6
        server.call("DELETE", f"/sessions/{sid}")
    return out


def bench_propagation(server: Server | None, engine, slices: int) -> float:
    """Seconds from the propagate call to the last slice, for ``slices`` slices."""
    volume = ct_int16(slices)
    key = slices // 2
    if server is None:
        from medsam_server.engine.preprocess import window_to_uint8
        from medsam_server.engine.prompts import Prompt
        from medsam_server.engine.session import Session

        session = Session(engine, window_to_uint8(volume, "ct"))
        session.add_prompt(1, "k", key, Prompt(box=BOX))
        t0 = time.perf_counter()
        report = session.propagate(1, "k")
        assert len(report.slices) == slices
        return time.perf_counter() - t0
    sid, _ = server.open(volume, "zstd")
    server.call("POST", f"/sessions/{sid}/prompt",
                json={"object_id": 1, "axis": "k", "index": key, "box": list(BOX)})
    t0 = time.perf_counter()
    job = server.call("POST", f"/sessions/{sid}/propagate", json={"object_ids": [1]})
    since = 0
    while job["state"] not in ("done", "failed", "cancelled"):
        job = server.call("GET", f"/jobs/{job['job_id']}", params={"since": since, "wait": 30})
        since = job["next_since"]
    elapsed = time.perf_counter() - t0
    assert job["state"] == "done" and since == slices, job
    server.call("DELETE", f"/sessions/{sid}")
    return elapsed


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--device", default="cpu")
    parser.add_argument("--slices", type=int, default=16, help="propagation volume slices")
    parser.add_argument("--prompts", type=int, default=20, help="prompt round trips")
    parser.add_argument("--upload-slices", type=int, default=200)
    parser.add_argument("--rounds", type=int, default=5, help="alternating repeats")
    args = parser.parse_args()

    import torch
    from medsam_server.engine.engine import Engine
    from medsam_server.engine.model import write_random_checkpoint

    threads = torch.get_num_threads()
    with tempfile.TemporaryDirectory() as tmp:
        ckpt = write_random_checkpoint(Path(tmp) / "random.pt", seed=0)
        engine = Engine.from_checkpoint(ckpt, args.device)
        bench_propagation(None, engine, 2)  # warm-up: first calls allocate
        server = Server(ckpt, args.device, threads)
        # other processes on the machine only ever add time: alternate the two sides
        # and report each side's best and median round
        http_runs: list[float] = []
        direct_runs: list[float] = []
        try:
            up = bench_upload(server, args.upload_slices)
            prompts = bench_prompts(server, engine, args.prompts, args.rounds)
            for _ in range(args.rounds):
                http_runs.append(bench_propagation(server, None, args.slices))
                direct_runs.append(bench_propagation(None, engine, args.slices))
        finally:
            server.close()
    prop_http, prop_direct = min(http_runs), min(direct_runs)

    n = args.slices
    rows = [
        ("prompt round trip, cached slice (median)", prompts["http"] * 1e3,
         prompts["direct"] * 1e3, "ms"),
        (f"propagation per slice ({n} slices)", prop_http / n * 1e3, prop_direct / n * 1e3,
         "ms"),
    ]
    print(f"\nmedsam-server over loopback vs in-process, device {args.device}, "
          f"{threads} torch threads\n")
    print(f"{'measure':<44}{'service':>10}{'direct':>10}{'ratio':>8}")
    for name, service, direct, unit in rows:
        print(f"{name:<44}{service:>8.1f}{unit:<2}{direct:>8.1f}{unit:<2}"
              f"{service / direct:>8.3f}")
    overhead = (prop_http - prop_direct) / prop_direct * 100
    median = (statistics.median(http_runs) / statistics.median(direct_runs) - 1) * 100
    print(f"propagation overhead: {overhead:+.1f} % per slice, best of {args.rounds} rounds "
          f"({median:+.1f} % median of rounds; target ≤ 5 %)")
    print("  rounds, ms/slice: service " + " ".join(f"{t / n * 1e3:.0f}" for t in http_runs)
          + " | direct " + " ".join(f"{t / n * 1e3:.0f}" for t in direct_runs))
    print(f"\nupload of {up['mb']:.0f} MB int16 ({args.upload_slices} slices of 512×512) "
          "until the session is ready:")
    for enc in ("zstd", "raw"):
        print(f"  {enc:<5} {up[enc]:6.2f} s   {up[enc + '_mb']:6.1f} MB sent   "
              f"(client compression {up[enc + '_compress']:.2f} s)")
    print(f"  zstd / raw: {up['zstd'] / up['raw']:.2f}")


if __name__ == "__main__":
    main()
