"""Write labels of frames as a volume sequence that 3D Slicer loads as one (``.seq.nrrd``).

The layout is the one Slicer's ``vtkMRMLVolumeSequenceStorageNode`` (through
``vtkITKImageSequenceReader``) reads: a 4D NRRD whose first axis is of kind ``list`` (the
frames) and whose other three are the frame's domain axes with their LPS space directions,
``axis 0 index type`` and ``axis 0 index values`` naming each item's time (or frame number).
Each item is one frame as a single-slice 3D label volume at the grid's origin.
"""

from __future__ import annotations

import os
import secrets
from pathlib import Path

import nrrd
import numpy as np

from .volumes import Volume, VolumeError

SUFFIX = ".seq.nrrd"


def write_label_sequence(path: str | os.PathLike, labels: np.ndarray, grid: Volume, *,
                         frame_time_ms: float | None = None) -> Path:
    """``labels`` (T, rows, columns) uint8 on ``grid`` (frame index = k) → ``path``.

    Index values are milliseconds when the frame time is known, else frame numbers.
    Written under a temporary name, then renamed: the file appears only when complete.
    """
    out = Path(path)
    if not out.name.lower().endswith(SUFFIX):
        raise VolumeError(f"{out}: a label sequence is written as {SUFFIX}")
    if labels.shape != grid.array.shape[:3]:
        raise VolumeError(f"{out}: labels {labels.shape} do not match the frames "
                          f"{grid.array.shape[:3]}")
    if not out.parent.is_dir():
        raise VolumeError(f"{out}: output folder {out.parent} does not exist")
    if frame_time_ms:
        values, unit = [f"{n * frame_time_ms:.6g}" for n in range(labels.shape[0])], "ms"
    else:
        values, unit = [str(n) for n in range(labels.shape[0])], ""
    # each item: one frame as a single-slice 3D volume at the grid's origin
    return _write(out, labels[:, None], grid, values, unit, "frame")


def write_volume_sequence(path: str | os.PathLike, labels: np.ndarray, grid: Volume) -> Path:
    """``labels`` (phases, k, j, i) uint8, each phase on ``grid`` → ``path`` (index: phase)."""
    out = Path(path)
    if not out.name.lower().endswith(SUFFIX):
        raise VolumeError(f"{out}: a label sequence is written as {SUFFIX}")
    if labels.ndim != 4 or labels.shape[1:] != grid.array.shape:
        raise VolumeError(f"{out}: labels {labels.shape} are not phases of the grid "
                          f"{grid.array.shape}")
    if not out.parent.is_dir():
        raise VolumeError(f"{out}: output folder {out.parent} does not exist")
    return _write(out, labels, grid, [str(n) for n in range(labels.shape[0])], "", "phase")


def _write(out: Path, items: np.ndarray, grid: Volume, values: list[str], unit: str,
           name: str) -> Path:
    """``items`` (n, k, j, i) on ``grid``'s axes, written under a temporary name, renamed."""
    direction = np.asarray(grid.direction, dtype=float).reshape(3, 3)
    spacing = np.asarray(grid.spacing, dtype=float)
    axes = (direction * spacing).T  # rows: i, j, k axis vectors in LPS (mm)
    n, k, j, i = items.shape
    header = {
        "type": "uint8", "dimension": 4, "space": "left-posterior-superior",
        "sizes": [n, i, j, k],
        "space directions": np.vstack([np.full(3, np.nan), axes]),
        "kinds": ["list", "domain", "domain", "domain"],
        "labels": [name, "", "", ""], "units": [unit, "", "", ""],
        "space origin": np.asarray(grid.origin, dtype=float),
        "encoding": "gzip",
        "axis 0 index type": "numeric",
        "axis 0 index values": " ".join(values),
    }
    data = np.ascontiguousarray(items.astype(np.uint8).transpose(0, 3, 2, 1))
    tmp = out.parent / f".{secrets.token_hex(6)}-{out.name}"
    try:
        nrrd.write(str(tmp), data, header, index_order="F")
        os.replace(tmp, out)
    except OSError as exc:
        raise VolumeError(f"{out}: cannot write the label sequence: {exc}") from None
    finally:
        tmp.unlink(missing_ok=True)
    return out


def read_label_sequence(path: str | os.PathLike) -> Volume:
    """A label sequence of frames (``write_label_sequence``'s layout) as labels (T, rows,
    columns) on the frames' grid (frame index = k), to score or compare it again."""
    p = Path(path)
    try:
        data, header = nrrd.read(str(p))
    except (OSError, nrrd.NRRDError) as exc:
        raise VolumeError(f"{p}: not a readable label sequence ({exc})") from None
    if data.ndim != 4 or list(header.get("kinds", []))[:1] != ["list"] or data.shape[3] != 1:
        raise VolumeError(f"{p}: not a sequence of single frames (sizes {list(data.shape)})")
    labels = np.ascontiguousarray(data.transpose(0, 3, 2, 1)[:, 0])
    axes = np.asarray(header["space directions"], dtype=float)[1:]  # rows: i, j, k in mm
    spacing = np.linalg.norm(axes, axis=1)
    direction = (axes / spacing[:, None]).T  # columns: the axes' unit vectors
    origin = np.asarray(header.get("space origin", np.zeros(3)), dtype=float)
    return Volume(labels, tuple(float(v) for v in spacing),  # type: ignore[arg-type]
                  tuple(float(v) for v in origin),  # type: ignore[arg-type]
                  tuple(float(v) for v in direction.ravel()), str(p))  # type: ignore[arg-type]
