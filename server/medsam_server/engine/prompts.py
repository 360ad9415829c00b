"""User prompts on one slice (box, points, mask) and their validation.

Coordinates are voxel units of the slice image: x runs along columns, y along rows
(see ``preprocess.get_slice`` for which array axes those are).
"""

from __future__ import annotations

import math
from dataclasses import dataclass, field

import numpy as np

from .preprocess import AXES, slice_shape


class PromptError(ValueError):
    """A prompt that cannot be used on the slice it names."""


@dataclass(frozen=True)
class Prompt:
    """A box (x0, y0, x1, y1) and/or points with labels (1 = object, 0 = background), or a mask."""

    box: tuple[float, float, float, float] | None = None
    points: tuple[tuple[float, float], ...] = ()
    labels: tuple[int, ...] = ()
    mask: np.ndarray | None = field(default=None, compare=False)

    @property
    def is_mask(self) -> bool:
        return self.mask is not None


def validate_prompt(prompt: Prompt, slice_shape: tuple[int, int]) -> Prompt:
    """Return the prompt with its box clipped to the slice; raise PromptError if unusable.

    A box partly outside the slice is clipped (dragging past the image edge is normal);
    a box entirely outside, empty or non-finite is an error, as is any point outside.
    """
    rows, cols = slice_shape
    if prompt.mask is not None:
        if prompt.box is not None or prompt.points:
            raise PromptError("a mask prompt cannot be combined with a box or points")
        mask = np.asarray(prompt.mask)
        if mask.shape != (rows, cols):
            raise PromptError(f"mask shape {mask.shape} does not match the slice {(rows, cols)}")
        if mask.dtype != np.bool_:
            if not (np.issubdtype(mask.dtype, np.integer) and set(np.unique(mask)) <= {0, 1}):
                raise PromptError("mask must be boolean or 0/1 integers")
            mask = mask.astype(bool)
        return Prompt(mask=mask)
    if prompt.box is None and not prompt.points:
        raise PromptError("a prompt needs a box, points or a mask")
    if len(prompt.points) != len(prompt.labels):
        raise PromptError(f"{len(prompt.points)} points but {len(prompt.labels)} labels")
    for (x, y), label in zip(prompt.points, prompt.labels, strict=True):
        if not (math.isfinite(x) and math.isfinite(y)):
            raise PromptError(f"point ({x}, {y}) is not finite")
        if not (0 <= x <= cols and 0 <= y <= rows):
            raise PromptError(f"point ({x}, {y}) is outside the {cols}x{rows} slice")
        if label not in (0, 1):
            raise PromptError(f"point label {label} must be 1 (object) or 0 (background)")
    box = None
    if prompt.box is not None:
        if len(prompt.box) != 4 or not all(math.isfinite(v) for v in prompt.box):
            raise PromptError(f"box {prompt.box} must be 4 finite numbers x0 y0 x1 y1")
        x0, y0, x1, y1 = (float(v) for v in prompt.box)
        x0, x1 = min(x0, x1), max(x0, x1)
        y0, y1 = min(y0, y1), max(y0, y1)
        cx0, cy0 = max(x0, 0.0), max(y0, 0.0)
        cx1, cy1 = min(x1, float(cols)), min(y1, float(rows))
        if cx1 <= cx0 or cy1 <= cy0:
            raise PromptError(
                f"box ({x0:g}, {y0:g}, {x1:g}, {y1:g}) is empty or outside the "
                f"{cols}x{rows} slice (x along columns 0..{cols}, y along rows 0..{rows})"
            )
        box = (cx0, cy0, cx1, cy1)
    return Prompt(
        box=box,
        points=tuple((float(x), float(y)) for x, y in prompt.points),
        labels=tuple(int(v) for v in prompt.labels),
    )


def check_slice_prompt(shape: tuple[int, int, int], axis: str, index: int,
                       prompt: Prompt) -> Prompt:
    """Validate axis, slice index and prompt against a volume shape (numpy k, j, i order)."""
    if axis not in AXES:
        raise PromptError(f"unknown axis {axis!r}: use k, j or i")
    n = shape[AXES.index(axis)]
    if isinstance(index, bool) or not isinstance(index, int | np.integer) or not 0 <= index < n:
        raise PromptError(f"slice {index} is outside 0..{n - 1} along axis {axis}")
    return validate_prompt(prompt, slice_shape(shape, axis))


def merge_points(old: Prompt | None, new: Prompt) -> Prompt:
    """Points added to a slice keep that slice's box and earlier points (SAM refinement)."""
    if old is None or old.is_mask or new.box is not None or new.is_mask:
        return new
    return Prompt(box=old.box, points=old.points + new.points, labels=old.labels + new.labels)
