"""Draw the extension's two icons: a dashed yellow box (the prompt) over a blue blob (the
segmented structure). Run from the repo root: `.venv/bin/python scripts/make_icons.py`.

- MedSAMSegment/Resources/Icons/MedSAMSegment.png: module and extension icon, 128x128.
- MedSAMSegment/MedSAMSegmentLib/SegmentEditorEffect.png: Segment Editor effect icon,
  21x21 like Slicer's own effect icons.

The blob is drawn large and scaled down (smooth edges); the box is drawn at the final
size, pixel-aligned, so its dashes stay sharp at 21 px.
"""

from __future__ import annotations

from pathlib import Path

from PIL import Image, ImageDraw

REPO = Path(__file__).resolve().parents[1]
MODULE_ICON = REPO / "MedSAMSegment" / "Resources" / "Icons" / "MedSAMSegment.png"
EFFECT_ICON = REPO / "MedSAMSegment" / "MedSAMSegmentLib" / "SegmentEditorEffect.png"

BLOB_FILL = (52, 120, 230, 150)  # translucent, like a segment over the image
BLOB_EDGE = (24, 78, 190, 255)
BOX = (255, 204, 0, 255)
BOX_SHADOW = (60, 40, 0, 200)  # keeps the yellow legible on Slicer's light toolbars
SUPERSAMPLE = 8

# Blob as ellipses in the unit square of its bounding box (x0, y0, x1, y1): a liver-like
# lobe with a smaller lobe below, so it reads as an organ rather than a circle.
BLOB_ELLIPSES = (
    (0.09, 0.09, 1.00, 0.72),
    (0.00, 0.28, 0.60, 1.00),
    (0.51, 0.00, 0.94, 0.52),
)


def draw_blob(size: int, region: tuple[float, float, float, float],
              edge_width: float) -> Image.Image:
    """The blob filling `region` (pixels), with an outline, drawn SUPERSAMPLE times larger
    and scaled down."""
    big = size * SUPERSAMPLE
    rx0, ry0, rx1, ry1 = (v * SUPERSAMPLE for v in region)

    def ellipses(shrink: float) -> Image.Image:
        mask = Image.new("L", (big, big), 0)
        draw = ImageDraw.Draw(mask)
        for x0, y0, x1, y1 in BLOB_ELLIPSES:
            draw.ellipse((rx0 + x0 * (rx1 - rx0) + shrink, ry0 + y0 * (ry1 - ry0) + shrink,
                          rx0 + x1 * (rx1 - rx0) - shrink, ry0 + y1 * (ry1 - ry0) - shrink),
                         fill=255)
        return mask

    # Outline = the blob minus the blob drawn with every ellipse edge_width smaller.
    mask, inner = ellipses(0.0), ellipses(edge_width * SUPERSAMPLE)
    layer = Image.new("RGBA", (big, big), (0, 0, 0, 0))
    layer.paste(Image.new("RGBA", (big, big), BLOB_EDGE), mask=mask)
    layer.paste(Image.new("RGBA", (big, big), BLOB_FILL), mask=inner)
    return layer.resize((size, size), Image.Resampling.LANCZOS)


def dash_spans(start: int, end: int, dash: int, gap: int) -> list[tuple[int, int]]:
    """Inclusive pixel spans of dashes from start to end, with a dash at both ends."""
    length = end - start + 1
    count = max(2, round((length + gap) / (dash + gap)))
    step = (length - dash) / (count - 1)
    return [(start + round(i * step), start + round(i * step) + dash - 1) for i in range(count)]


def draw_dashed_box(image: Image.Image, box: tuple[int, int, int, int], width: int,
                    dash: int, gap: int, shadow: int) -> None:
    """A dashed rectangle of `width` px lines, each dash ringed by `shadow` px."""
    draw = ImageDraw.Draw(image)
    x0, y0, x1, y1 = box
    segments = []
    for a, b in dash_spans(x0, x1, dash, gap):
        segments.append((a, y0, b, y0 + width - 1))
        segments.append((a, y1 - width + 1, b, y1))
    for a, b in dash_spans(y0, y1, dash, gap):
        segments.append((x0, a, x0 + width - 1, b))
        segments.append((x1 - width + 1, a, x1, b))
    if shadow:
        for sx0, sy0, sx1, sy1 in segments:
            draw.rectangle((sx0 - shadow, sy0 - shadow, sx1 + shadow, sy1 + shadow),
                           fill=BOX_SHADOW)
    for segment in segments:
        draw.rectangle(segment, fill=BOX)


def make_icon(size: int, blob: tuple[float, float, float, float], edge_width: float,
              box: tuple[int, int, int, int], width: int, dash: int, gap: int,
              shadow: int) -> Image.Image:
    icon = Image.new("RGBA", (size, size), (0, 0, 0, 0))
    icon.alpha_composite(draw_blob(size, blob, edge_width))
    draw_dashed_box(icon, box, width, dash, gap, shadow)
    return icon


def main() -> None:
    module_icon = make_icon(128, blob=(20, 27, 108, 101), edge_width=4.0,
                            box=(8, 15, 119, 112), width=5, dash=14, gap=8, shadow=1)
    effect_icon = make_icon(21, blob=(3.5, 4.5, 17.5, 16.5), edge_width=1.2,
                            box=(0, 1, 20, 19), width=2, dash=4, gap=3, shadow=0)
    for path, image in ((MODULE_ICON, module_icon), (EFFECT_ICON, effect_icon)):
        path.parent.mkdir(parents=True, exist_ok=True)
        image.save(path, optimize=True)
        print(f"wrote {path.relative_to(REPO)} ({image.width}x{image.height})")


if __name__ == "__main__":
    main()
