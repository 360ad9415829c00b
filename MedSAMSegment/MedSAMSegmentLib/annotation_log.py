"""The annotation log: one JSON line per prompt, propagation, apply or discard.

A team measures its own speed-up with it, as MedSAM2's paper did (time from the first
box to Apply per structure). It holds no image data: names, slice numbers, boxes,
counts and times only. Each line is a complete JSON object, appended and flushed, so
a crash loses at most the line being written and any tool (pandas, jq) reads the file.

Fields of every line: ``time`` (ISO 8601, local time with offset), ``event``,
``volume``, ``segment``, ``object``; then per event:
  box        axis, slice, box [x0, y0, x1, y1] (voxels of that slice)
  points     axis, slice, points [[x, y], ...], labels [1|0, ...]
  mask       axis, slice, voxels
  propagate  axis, direction, first, last, slices, state (done/cancelled/failed), seconds
  apply      mode (replace/add), slices, voxels, seconds_since_first_prompt
  discard    slices
  replay     prompts, propagations, differing_slices
"""

from __future__ import annotations

import datetime as _dt
import json
import os
import threading
from pathlib import Path
from typing import Any

import numpy as np

EVENTS = ("box", "points", "mask", "propagate", "apply", "discard", "replay")


class AnnotationLog:
    """Appends events to ``path`` (created with its folder on first write)."""

    def __init__(self, path: str | os.PathLike) -> None:
        self.path = Path(path)
        self._lock = threading.Lock()

    def write(self, event: str, *, volume: str, segment: str, object_id: int,
              **fields: Any) -> dict[str, Any]:
        if event not in EVENTS:
            raise ValueError(f"unknown annotation event {event!r}; use one of {EVENTS}")
        record = {"time": _dt.datetime.now().astimezone().isoformat(timespec="milliseconds"),
                  "event": event, "volume": volume, "segment": segment, "object": int(object_id)}
        record.update({k: _plain(v) for k, v in fields.items()})
        line = json.dumps(record, ensure_ascii=False, allow_nan=False)
        with self._lock:
            self.path.parent.mkdir(parents=True, exist_ok=True)
            with open(self.path, "a", encoding="utf-8") as f:
                f.write(line + "\n")
                f.flush()
        return record


def read_log(path: str | os.PathLike) -> list[dict[str, Any]]:
    """Every record of a log file (a torn last line from a crash is skipped)."""
    records = []
    with open(path, encoding="utf-8") as f:
        for line in f:
            try:
                records.append(json.loads(line))
            except json.JSONDecodeError:
                continue
    return records


def _plain(value: Any) -> Any:
    """numpy scalars/tuples -> JSON types; refuses arrays (no image data in the log)."""
    if hasattr(value, "ndim") and getattr(value, "ndim", 0) > 0:
        raise TypeError("the annotation log takes no arrays (no image data)")
    if hasattr(value, "item"):
        return value.item()
    if isinstance(value, tuple | list):
        return [_plain(v) for v in value]
    if isinstance(value, float):
        return round(value, 3)
    return value


def prompt_fields(op: Any) -> dict[str, Any]:
    """A prompt's own fields in the log (``server_session.PromptOp``): no image data."""
    if op.kind == "box":
        return {"box": [round(v, 1) for v in op.box]}
    if op.kind == "points":
        return {"points": [[round(x, 1), round(y, 1)] for x, y in op.points],
                "labels": list(op.labels)}
    return {"voxels": int(np.count_nonzero(op.mask))}
