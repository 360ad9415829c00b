"""Read the objects to segment from a prompts file (``segment --prompts FILE.json``, batch).

Torch-free, so ``segment --server`` needs no model code in the client process.
"""

from __future__ import annotations

import json
from pathlib import Path

from ..engine import AXES, DEFAULT_COLORS, ObjectSpec, Prompt, PromptError
from .structure_codes import code_for, rt_type_for


def load_prompts_file(path: str | Path) -> list[ObjectSpec]:
    """Read ``{"objects": [{label, name, slice, axis, box, points, point_labels, color, code,
    rt_type}]}`` (``code`` and ``rt_type``: for DICOM SEG/RTSTRUCT export)."""
    try:
        data = json.loads(Path(path).read_text())
    except (OSError, ValueError) as exc:
        raise PromptError(f"cannot read prompts file {path}: {exc}") from None
    items = data.get("objects") if isinstance(data, dict) else data
    if not isinstance(items, list) or not items:
        raise PromptError(f"{path}: expected a non-empty list under 'objects'")
    specs: list[ObjectSpec] = []
    for n, item in enumerate(items, start=1):
        where = f"{path}: object {n}"
        if not isinstance(item, dict):
            raise PromptError(f"{where} is not a JSON object")
        try:
            label = int(item.get("label", n))
            axis = str(item.get("axis", "k"))
            index = int(item["slice"])
            box = item.get("box")
            points = [tuple(map(float, p)) for p in item.get("points", [])]
            labels = [int(v) for v in item.get("point_labels", [1] * len(points))]
            color = tuple(float(c) for c in item.get("color", DEFAULT_COLORS[(n - 1) % 8]))
        except (KeyError, TypeError, ValueError) as exc:
            raise PromptError(f"{where}: bad or missing field ({exc})") from None
        if not 1 <= label <= 255:
            raise PromptError(f"{where}: label {label} must be 1..255")
        if axis not in AXES:
            raise PromptError(f"{where}: axis {axis!r} must be k, j or i")
        if len(color) != 3:
            raise PromptError(f"{where}: color must be three numbers 0..1")
        prompt = Prompt(box=tuple(map(float, box)) if box is not None else None,
                        points=tuple(points), labels=tuple(labels))
        name = str(item.get("name", f"Segment_{label}"))
        code, rt_type = item.get("code"), item.get("rt_type")
        try:  # checked now, so a typo fails before the model runs
            code_for(name, code)
            rt_type_for(rt_type)
        except ValueError as exc:
            raise PromptError(f"{where}: {exc}") from None
        specs.append(ObjectSpec(label, name, axis, index, prompt, color,  # type: ignore[arg-type]
                                code=code, rt_type=str(rt_type or "")))
    if len({s.label for s in specs}) != len(specs):
        raise PromptError(f"{path}: two objects share a label")
    return specs
