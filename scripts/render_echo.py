"""Render the README's echo picture: `medsam-server segment --time` on the real echo clip.

Runs the command line as a user would (the 120-frame colour ultrasound DICOM in
../shared/data/echo_a4c, a box on the left ventricle of frame 0, propagated forward as
MedSAM2's video recipe does), reads its label frames back and draws a strip of frames
across one cardiac cycle: the frames as RGB, the box on the prompted frame, each frame's
mask filled and outlined in the segment's colour.

    python scripts/render_echo.py [--checkpoint CKPT] [--out Resources/Screenshots]

Without --checkpoint (or $MEDSAM2_CHECKPOINT) it uses the seeded random weights the other
README pictures use and says so on the picture: the mechanics are real, the mask is
meaningless.
"""

from __future__ import annotations

import argparse
import os
import subprocess
import sys
import tempfile
from pathlib import Path

import numpy as np

REPO = Path(__file__).resolve().parents[1]
ECHO = REPO.parent / "shared" / "data" / "echo_a4c" / "echo_a4c_us_multiframe.dcm"
# echo_a4c_cine.json's approximate LV box on frame 0, (225, 95, 325, 225) in its crop,
# moved by the crop's origin (84, 31) into the DICOM's own pixels
BOX = (309, 126, 409, 256)
CROP = (84, 31, 596, 415)  # the ultrasound sector (x0, y0, x1, y1): no blank margins drawn
FRAMES = (0, 9, 18, 27)  # one cardiac cycle is about 27 frames
FRAME_MS = 33.333
SCALE = 0.625  # 512x384 crop -> 320x240 panels: the PNG stays small
BOX_COLOR = (255, 217, 0)  # BoxPipeline.BOX_COLOR, as the box is drawn in Slicer
SEGMENT_COLOR = (219, 115, 51)  # the liver's colour in the other pictures
TEXT_COLOR = (255, 255, 153)  # the other pictures' caption colour


def segment(checkpoint: str, out: Path) -> np.ndarray:
    """The command line itself; its label frames as (frames, rows, columns) bool."""
    import SimpleITK as sitk

    command = [sys.executable, "-m", "medsam_server.cli", "segment", str(ECHO), "--time",
               "--frame", "0", "--box", *map(str, BOX), "--direction", "forward",
               "--checkpoint", checkpoint, "--device", "cpu", "--quiet", "-o", str(out)]
    print("$ medsam-server " + " ".join(command[3:]), flush=True)
    subprocess.run(command, check=True)
    return sitk.GetArrayFromImage(sitk.ReadImage(str(out))) > 0


def panel(rgb: np.ndarray, mask: np.ndarray, text: str, box: tuple | None) -> np.ndarray:
    """One frame: RGB, the mask at 35 % plus its outline, the box, a caption."""
    from PIL import Image, ImageDraw, ImageFont
    from scipy.ndimage import binary_erosion

    # the outline from the whole frame's mask, so that the crop's edge draws none
    edge = mask & ~binary_erosion(mask, iterations=2)
    x0, y0, x1, y1 = CROP
    rgb, mask, edge = (a[y0:y1, x0:x1] for a in (rgb.astype(np.float32), mask, edge))
    rgb[mask] = 0.65 * rgb[mask] + 0.35 * np.array(SEGMENT_COLOR)
    rgb[edge] = SEGMENT_COLOR
    size = (round(rgb.shape[1] * SCALE), round(rgb.shape[0] * SCALE))
    image = Image.fromarray(rgb.astype(np.uint8)).resize(size, Image.Resampling.LANCZOS)
    draw = ImageDraw.Draw(image)
    if box is not None:
        bx0, by0, bx1, by1 = box
        draw.rectangle([(bx0 - x0) * SCALE, (by0 - y0) * SCALE, (bx1 - x0) * SCALE,
                        (by1 - y0) * SCALE], outline=BOX_COLOR, width=2)
    font = ImageFont.load_default(size=13)
    draw.multiline_text((6, size[1] - 6), text, fill=TEXT_COLOR, font=font, anchor="ld")
    return np.asarray(image)


def main(argv: list[str] | None = None) -> int:
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("--checkpoint", default=os.environ.get("MEDSAM2_CHECKPOINT"))
    ap.add_argument("--out", type=Path, default=REPO / "Resources" / "Screenshots")
    args = ap.parse_args(argv)
    if not ECHO.is_file():
        sys.exit(f"render_echo: no echo clip at {ECHO} (../shared/data beside the repo)")
    tmp = Path(tempfile.mkdtemp(prefix="medsam-echo-"))
    checkpoint, note = args.checkpoint, ""
    if not checkpoint:
        from medsam_server.engine.model import write_random_checkpoint

        checkpoint = str(write_random_checkpoint(tmp / "random.pt", seed=0))
        note = "\nrandom weights: mask meaningless"
    masks = segment(checkpoint, tmp / "lv.nrrd")

    import pydicom

    clip = pydicom.dcmread(ECHO).pixel_array  # YBR JPEG decoded to RGB, as segment reads it
    assert clip.shape[:3] == masks.shape, (clip.shape, masks.shape)
    panels = [panel(clip[f], masks[f],
                    (f"frame {f}: box -> MedSAM2" if f == 0 else
                     f"frame {f} (+{f * FRAME_MS:.0f} ms), propagated") + note,
                    BOX if f == 0 else None)
              for f in FRAMES]
    gap = np.zeros((panels[0].shape[0], 2, 3), np.uint8)  # a dark line between panels
    strip = np.concatenate([panels[0], *(part for p in panels[1:] for part in (gap, p))],
                           axis=1)
    from PIL import Image

    path = args.out / "echo_time.png"
    path.parent.mkdir(parents=True, exist_ok=True)
    Image.fromarray(strip).save(path, optimize=True)
    print(f"wrote {path} ({path.stat().st_size // 1024} KB; frames {FRAMES}, "
          f"mask pixels {[int(masks[f].sum()) for f in FRAMES]})")
    return 0


if __name__ == "__main__":
    sys.exit(main())
