"""Start-up of a whole ``medsam-server segment`` process: launch → model ready → first mask.

A CLI or batch user feels the whole process, not just the slices. This runs, on the
20-slice real CT (DICOM) and a seeded random-weight checkpoint:
  1. ``medsam-server segment`` as a user does, whole-process wall time;
  2. the same steps in a child process with a time stamp after each, measured from the
     moment the parent launched it, so the stages add up to the launch-to-exit time.
Rounds alternate, and the median per figure is reported.

    python bench/bench_startup.py [--rounds 3] [--json out.json]
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

HERE = Path(__file__).resolve().parent
DICOM = HERE.parent.parent / "shared" / "data" / "totalseg_ct_dicom_2mm" / "dicom"
BOX = (150, 200, 330, 360)
KEY = 10


def stages(checkpoint: str, output: str, launched: float) -> None:
    """The steps of ``segment`` (cli._segment_local) with a stamp after each."""
    marks: list[tuple[str, float]] = []

    def mark(name: str) -> None:
        marks.append((name, time.time() - launched))

    mark("interpreter")
    import medsam_server.cli.main  # noqa: F401  (what the console script imports)
    mark("cli import")
    from medsam_server.io.volumes import read_volume, write_mask
    volume = read_volume(DICOM)
    mark("read volume")
    import torch  # noqa: F401
    mark("import torch")
    from medsam_server.engine.engine import Engine
    from medsam_server.engine.objects import DEFAULT_COLORS, ObjectSpec
    from medsam_server.engine.pipeline import segment_objects
    from medsam_server.engine.preprocess import window_to_uint8
    from medsam_server.engine.prompts import Prompt
    from medsam_server.engine.session import Session
    mark("import engine (sam2, hydra)")
    engine = Engine.from_checkpoint(checkpoint, "cpu")
    mark("model ready (build + load)")
    vol = window_to_uint8(volume.array, "ct", None)
    session = Session(engine, vol)
    spec = ObjectSpec(1, "object", "k", KEY, Prompt(box=BOX), DEFAULT_COLORS[0])
    session.add_prompt(1, "k", KEY, spec.prompt)
    mark("first mask")
    labels, _ = segment_objects(session, [spec])  # prompts again (cheap: features cached)
    mark("propagated")
    write_mask(Path(output), labels, volume, segments=[(1, "object", DEFAULT_COLORS[0])])
    mark("written")
    print(json.dumps(marks))


def model_parts(checkpoint: str) -> dict[str, float]:
    """Model ready, split: read the file, build the network, load the weights."""
    import torch
    from medsam_server.engine.model import build_model, load_checkpoint, read_state_dict

    t0 = time.perf_counter()
    state = read_state_dict(checkpoint)
    t1 = time.perf_counter()
    model = build_model("cpu")
    t2 = time.perf_counter()
    load_checkpoint(model, checkpoint, state)
    t3 = time.perf_counter()
    del torch
    return {"read checkpoint": t1 - t0, "build network": t2 - t1, "load weights": t3 - t2}


def run(cmd: list[str], env: dict | None = None) -> tuple[float, str]:
    t0 = time.time()
    env = {**os.environ, **(env or {}), "BENCH_LAUNCHED": repr(t0)}
    out = subprocess.run(cmd, check=True, capture_output=True, text=True, env=env)
    return time.time() - t0, out.stdout


def main() -> None:
    p = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    p.add_argument("--rounds", type=int, default=3)
    p.add_argument("--json", help="also write the figures here")
    p.add_argument("--child", nargs=2, metavar=("CKPT", "OUT"), help=argparse.SUPPRESS)
    p.add_argument("--parts", metavar="CKPT", help=argparse.SUPPRESS)
    args = p.parse_args()
    if args.child:
        return stages(*args.child, float(os.environ["BENCH_LAUNCHED"]))
    if args.parts:
        return print(json.dumps(model_parts(args.parts)))
    if not DICOM.is_dir():
        sys.exit(f"benchmark data missing: {DICOM}")
    cli = Path(sys.executable).with_name("medsam-server")
    whole: list[float] = []
    staged: list[dict[str, float]] = []
    parts: list[dict[str, float]] = []
    with tempfile.TemporaryDirectory() as tmp:
        from medsam_server.engine.model import write_random_checkpoint

        ckpt = str(write_random_checkpoint(Path(tmp) / "random.pt", seed=0))
        out = str(Path(tmp) / "out.seg.nrrd")
        for _ in range(args.rounds):
            seconds, _ = run([str(cli), "segment", str(DICOM), "-o", out, "--checkpoint", ckpt,
                              "--slice", str(KEY), "--box", *map(str, BOX), "--device", "cpu",
                              "--quiet"])
            whole.append(seconds)
            total, text = run([sys.executable, __file__, "--child", ckpt, out])
            marks = json.loads(text.strip().splitlines()[-1])
            marks.append(("exit", total))
            staged.append(dict(marks))
            _, text = run([sys.executable, __file__, "--parts", ckpt])
            parts.append(json.loads(text.strip().splitlines()[-1]))
    report(whole, staged, parts, args)


def report(whole: list[float], staged: list[dict[str, float]], parts: list[dict[str, float]],
           args: argparse.Namespace) -> None:
    names = list(staged[0])
    at = {n: statistics.median(s[n] for s in staged) for n in names}
    figures: dict = {"rounds": args.rounds, "segment_process_s": statistics.median(whole),
                     "stages_at_s": at, "stages_s": {}, "model_ready_parts_s": {}}
    print(f"medsam-server segment, 20-slice CT, 1 box, CPU: whole process "
          f"{figures['segment_process_s']:.2f} s (median of {args.rounds})")
    print(f"{'stage':32}{'ends at s':>10}{'takes s':>9}")
    prev = 0.0
    for n in names:
        figures["stages_s"][n] = at[n] - prev
        print(f"{n:32}{at[n]:10.2f}{at[n] - prev:9.2f}")
        prev = at[n]
    for key in parts[0]:
        figures["model_ready_parts_s"][key] = statistics.median(p[key] for p in parts)
        print(f"  model ready: {key:19}{figures['model_ready_parts_s'][key]:9.2f}")
    print(f"launch to first mask: {at['first mask']:.2f} s; load average "
          f"{os.getloadavg()[0]:.2f}")
    if args.json:
        Path(args.json).write_text(json.dumps(figures, indent=2))


if __name__ == "__main__":
    main()
