"""What to segment: one object's output label, name, colour, axis, key slice and prompt.

Torch-free (numpy only, through ``prompts``), so ``segment --server`` and the prompts-file
reader need no model code in the client process.
"""

from __future__ import annotations

from dataclasses import dataclass

from .prompts import Prompt

DEFAULT_COLORS = [
    (0.50, 0.68, 0.50), (0.95, 0.84, 0.57), (0.69, 0.48, 0.39), (0.44, 0.72, 0.98),
    (0.85, 0.40, 0.40), (0.72, 0.51, 0.85), (0.35, 0.75, 0.75), (0.90, 0.60, 0.30),
]


@dataclass(frozen=True)
class ObjectSpec:
    """One object to segment: its output label, name, colour and its prompt; for DICOM
    export, optionally its code (``{"category": [value, scheme, meaning], "type": [...]}``)
    and RT ROI interpreted type (default ORGAN)."""

    label: int
    name: str
    axis: str
    slice: int
    prompt: Prompt
    color: tuple[float, float, float] = DEFAULT_COLORS[0]
    code: dict | None = None
    rt_type: str = ""
