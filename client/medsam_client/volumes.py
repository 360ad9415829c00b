"""What an upload sends: the session handle, voxels in a dtype the protocol accepts, and
the VolumeMeta announcing them (a volume, 2D + time frames, or 3D + time phases)."""

from __future__ import annotations

from collections.abc import Sequence
from dataclasses import dataclass

import numpy as np

from . import protocol as P
from .errors import MedSAMError


@dataclass
class SessionHandle:
    """A server session holding one uploaded volume."""

    session_id: str
    shape: tuple[int, ...]  # (k, j, i); frames (frames, rows, columns[, 3]); (phases, k, j, i)
    volume_sha256: str
    modality: str = "ct"
    window: tuple[float, ...] | None = None
    time: bool = False  # frames along the first axis (axis "t")
    # 3D + time (capability "phases"): prompts go on ``key_phase``; None for other sessions
    key_phase: int | None = None


def wire_volume(volume: np.ndarray, time: bool = False) -> np.ndarray:
    """The volume as a dtype the protocol accepts (int64/float16 etc. are converted)."""
    a = np.asarray(volume)
    if time and a.ndim == 4:
        if a.shape[3] != 3 or a.dtype != np.uint8:
            raise MedSAMError(f"colour frames must be uint8 (frames, rows, columns, 3) RGB, got "
                              f"{a.dtype} {a.shape}")
        return a
    if a.ndim != 3:
        hint = " (3D + time: MedSAMClient.upload_phases)" if a.ndim == 4 else ""
        raise MedSAMError(f"a volume must be 3D (k, j, i), got shape {a.shape}{hint}")
    return _wire_dtype(a)


def wire_phases(phases: np.ndarray | Sequence[np.ndarray]) -> np.ndarray:
    """3D + time voxels as one (phases, k, j, i) array: a 4D array, or one 3D array per
    phase, all on one grid (shapes must match: a phase is never resampled here)."""
    if isinstance(phases, np.ndarray):
        a = phases
    else:
        shapes = [np.shape(p) for p in phases]
        if any(len(s) != 3 for s in shapes) or len(set(shapes)) > 1:
            raise MedSAMError(f"every phase must be a 3D (k, j, i) volume on one grid, got "
                              f"shapes {shapes}")
        a = np.stack([np.asarray(p) for p in phases]) if shapes else np.zeros((0, 0, 0, 0))
    if a.ndim != 4:
        raise MedSAMError(f"3D + time voxels must be 4D (phases, k, j, i), got shape {a.shape}")
    if a.shape[0] < 2 or min(a.shape) < 1:
        raise MedSAMError(f"3D + time needs at least two non-empty phases, got shape {a.shape}")
    return _wire_dtype(a)


def _wire_dtype(a: np.ndarray) -> np.ndarray:
    if a.dtype.name in P.VOLUME_DTYPES:
        return a
    if a.dtype == np.bool_:
        return a.astype(np.uint8)
    if np.issubdtype(a.dtype, np.integer) and a.size:
        info = np.iinfo(np.int32)
        if info.min <= a.min() and a.max() <= info.max:
            return a.astype(np.int32)
    if np.issubdtype(a.dtype, np.floating):
        return a.astype(np.float32 if a.dtype.itemsize <= 4 else np.float64)
    raise MedSAMError(f"voxel type {a.dtype} cannot be sent; use one of {P.VOLUME_DTYPES}")


def volume_meta(vol: np.ndarray, sha: str, spacing: Sequence[float] = (1.0, 1.0, 1.0),
                origin: Sequence[float] = (0.0, 0.0, 0.0),
                direction: Sequence[float] = (1, 0, 0, 0, 1, 0, 0, 0, 1),
                modality: P.Modality = "ct", window: Sequence[float] | None = None,
                name: str = "", time: bool = False, key_phase: int | None = None
                ) -> P.VolumeMeta:
    """``key_phase`` (not None): a 3D + time upload with prompts on that phase."""
    return P.VolumeMeta(shape=list(vol.shape), dtype=vol.dtype.name, sha256=sha,
                        spacing=[float(v) for v in spacing], origin=[float(v) for v in origin],
                        direction=[float(v) for v in direction], modality=modality,
                        window=None if window is None else [float(v) for v in window],
                        name=str(name), time=bool(time), phases=key_phase is not None,
                        key_phase=0 if key_phase is None else int(key_phase))


def window_tuple(window: list[float] | None) -> tuple[float, ...] | None:
    return None if window is None else tuple(window)
