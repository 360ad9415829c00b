"""`make demo`: segment the liver of the bundled sample CT from one box, end to end.

Uses the real MedSAM2 weights when they are found (--checkpoint, $MEDSAM2_CHECKPOINT or
the cache). Without them it says how to get them and runs on a seeded RANDOM-weight
checkpoint instead, so the whole pipeline still runs; that result is meaningless.
"""

from __future__ import annotations

import sys
from pathlib import Path

from medsam_server.checkpoints import resolve_checkpoint
from medsam_server.cli.main import main as cli_main
from medsam_server.engine.model import CheckpointError, write_random_checkpoint

REPO = Path(__file__).resolve().parents[1]
SAMPLE = REPO / "Resources" / "SampleData" / "example_ct_sm.nii.gz"
OUT_DIR = REPO / "out"
# Liver on axial slice 14 (box from TotalSegmentator's reference mask for this CT).
KEY_SLICE, BOX = 14, ("45", "27", "104", "85")


def main() -> int:
    OUT_DIR.mkdir(exist_ok=True)
    try:
        checkpoint = resolve_checkpoint(None)
        meaningless = False
    except CheckpointError as exc:
        print(f"MedSAM2 weights not found.\n  {exc}\n  Or fetch them into the cache with: "
              ".venv/bin/medsam-server checkpoints --download MedSAM2_latest\n", file=sys.stderr)
        checkpoint = OUT_DIR / "medsam2_RANDOM_WEIGHTS_seed0.pt"
        if not checkpoint.exists():
            write_random_checkpoint(checkpoint, seed=0)
        meaningless = True
        print("Running the demo on RANDOM weights instead: the pipeline is real, the mask is "
              "MEANINGLESS.\n", file=sys.stderr)
    name = "liver_RANDOM_WEIGHTS_meaningless" if meaningless else "liver"
    output = OUT_DIR / f"demo_{name}.seg.nrrd"
    code = cli_main(["segment", str(SAMPLE), "-o", str(output), "--checkpoint", str(checkpoint),
                     "--slice", str(KEY_SLICE), "--box", *BOX, "--modality", "ct",
                     "--window", "40", "400", "--name", name])
    if code == 0:
        print(f"\nDemo result: {output}\n  open it in 3D Slicer over {SAMPLE}"
              + ("\n  (RANDOM weights: this mask is meaningless)" if meaningless else ""))
    return code


if __name__ == "__main__":
    sys.exit(main())
