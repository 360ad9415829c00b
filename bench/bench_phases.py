"""3D + time cost: the key phase in 3D then carried along time vs each phase on its own.

One run, one process, the same phases: the real abdomen CT (../shared/data) moved by a
known shift along i per phase (a synthetic breathing motion), the same seeded random-weight
checkpoint (weights do not change the cost). Side "phases": ``segment_phases`` (box on the
key phase, its 3D result carried to the other phases slice by slice along time). Side
"each": ``segment_objects`` on every phase on its own, from the same box moved with the
phase (what a user would do without the time axis: one box per phase). Reports seconds,
images encoded, and the ratio.

    python bench/bench_phases.py [--phases 4] [--slices 12] [--device cpu] [--json out.json]
"""

from __future__ import annotations

import argparse
import json
import os
import sys
import tempfile
import time
from pathlib import Path

import numpy as np

HERE = Path(__file__).resolve().parent
CT = HERE.parent.parent / "shared" / "data" / "totalseg_ct_abdomen_3mm" / "example_ct_sm.nii.gz"
BOX = (45.0, 27.0, 104.0, 85.0)  # the liver on slice 14 of the CT (Testing/conftest.py)
STEP = 2  # voxels along i between phases


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("--phases", type=int, default=4)
    ap.add_argument("--slices", type=int, default=12)
    ap.add_argument("--device", default="cpu")
    ap.add_argument("--precision", default="fp32")
    ap.add_argument("--json")
    args = ap.parse_args()

    from medsam_server.cli.main import main as cli
    from medsam_server.engine import (
        Engine,
        ObjectSpec,
        Prompt,
        Session,
        segment_objects,
        segment_phases,
        window_to_uint8,
    )
    from medsam_server.io.volumes import read_volume

    ct = window_to_uint8(read_volume(CT).array, "ct", (40.0, 400.0))
    first = max(0, 14 - args.slices // 2)
    crop = ct[first:first + args.slices]
    key_slice, key_phase = 14 - first, args.phases // 2
    shifts = [STEP * (p - key_phase) for p in range(args.phases)]
    phases = np.ascontiguousarray(np.stack([np.roll(crop, s, axis=2) for s in shifts]))

    def spec(shift: int) -> ObjectSpec:
        box = (BOX[0] + shift, BOX[1], BOX[2] + shift, BOX[3])
        return ObjectSpec(1, "liver", "k", key_slice, Prompt(box=box), (1.0, 0.0, 0.0))

    with tempfile.TemporaryDirectory() as tmp:
        ckpt = os.path.join(tmp, "random.pt")
        assert cli(["make-test-checkpoint", ckpt]) == 0
        engine = Engine.from_checkpoint(ckpt, args.device, precision=args.precision)
    load = os.getloadavg()[0]
    e0, t0 = engine.encoder_calls, time.perf_counter()
    labels, _ = segment_phases(engine, phases, key_phase, [spec(0)])
    seconds_phases, encoded_phases = time.perf_counter() - t0, engine.encoder_calls - e0
    e0, t0 = engine.encoder_calls, time.perf_counter()
    for p, shift in enumerate(shifts):
        segment_objects(Session(engine, phases[p]), [spec(shift)])
    seconds_each, encoded_each = time.perf_counter() - t0, engine.encoder_calls - e0
    report = {
        "device": args.device, "precision": args.precision, "phases": args.phases,
        "slices": args.slices, "load_average": [load, os.getloadavg()[0]],
        "carried_slices": int(labels[key_phase].any(axis=(1, 2)).sum()),
        "seconds": {"phases": seconds_phases, "each": seconds_each},
        "images_encoded": {"phases": encoded_phases, "each": encoded_each},
        "each_vs_phases_time": seconds_each / seconds_phases,
    }
    print(f"{args.phases} phases x {args.slices} slices of the abdomen CT, shift {STEP} voxels "
          f"a phase ({args.device}, {args.precision}, load {load:.1f} -> "
          f"{os.getloadavg()[0]:.1f})")
    print(f"  3D + time (key phase {key_phase}, {report['carried_slices']} slices carried): "
          f"{seconds_phases:.1f} s, {encoded_phases} images encoded")
    print(f"  each phase on its own (a box each):  {seconds_each:.1f} s, "
          f"{encoded_each} images encoded")
    print(f"  each / 3D + time: {report['each_vs_phases_time']:.2f}x the time")
    if args.json:
        Path(args.json).write_text(json.dumps(report, indent=1))


if __name__ == "__main__":
    sys.exit(main())
