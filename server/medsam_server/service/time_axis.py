"""Capability "time": sessions over frames (2D + time), their axis "t" on the wire.

A time session's array has the frames along its first axis: grey (frames, rows, columns)
or colour (frames, rows, columns, 3) uint8 RGB. The engine segments along that axis as
its axis "k"; the wire names it "t" (requests may say "t" or "k", updates say "t").
Colour frames go to the model as RGB (the engine's colour input), so they are not
windowed and only travel as uint8 with modality "none".
"""

from __future__ import annotations

import dataclasses

from medsam_client.protocol import SliceUpdate, Undone, VolumeMeta

from .errors import BadInput

FRAME_AXES = ("t", "k")  # what a request may call a time session's frame axis


def check_time_meta(meta: VolumeMeta) -> None:
    """Shape, dtype and modality of a VolumeMeta, frames or volume (BadInput if wrong)."""
    if not meta.time:
        if len(meta.shape) != 3 or any(s < 1 for s in meta.shape):
            raise BadInput(f"shape {meta.shape} must be 3 positive sizes (k, j, i)")
        return
    if any(s < 1 for s in meta.shape):
        raise BadInput(f"shape {meta.shape} must be positive sizes")
    if len(meta.shape) == 4:
        if meta.shape[3] != 3:
            raise BadInput(f"colour frames must be (frames, rows, columns, 3) RGB, got shape "
                           f"{meta.shape}")
        if meta.dtype != "uint8" or meta.modality != "none" or meta.window is not None:
            raise BadInput("colour frames travel as uint8 RGB with modality 'none' and no "
                           f"window (they go to the model unwindowed), got {meta.dtype}, "
                           f"modality {meta.modality!r}, window {meta.window}")
    elif len(meta.shape) != 3:
        raise BadInput(f"frames must be (frames, rows, columns) grey or (frames, rows, columns, "
                       f"3) RGB, got shape {meta.shape}")


def is_colour(meta: VolumeMeta) -> bool:
    return bool(meta.time) and len(meta.shape) == 4


def engine_axis(meta: VolumeMeta, axis: str | None) -> str | None:
    """The engine's axis for a request's axis (None: the object's own, left to the engine)."""
    if axis is None:
        return None
    if meta.phases and axis == "t":  # capability "phases" (phases_axis.py)
        raise BadInput("a 3D + time session is prompted and focused on its key phase along k, "
                       "j or i; axis t is for propagating to the other phases")
    if not meta.time:
        if axis == "t":
            raise BadInput("axis 't' names the frames of a time session; this session holds a "
                           "volume (upload it with VolumeMeta.time for frames): use k, j or i")
        return axis
    if axis not in FRAME_AXES:
        raise BadInput(f"a time session is segmented along its frames (axis t), not axis {axis}")
    return "k"


def wire_update(meta: VolumeMeta, update: SliceUpdate) -> SliceUpdate:
    """The update as the wire names it: frames of a time session along "t"; a 3D + time
    session's key phase named (its other phases' updates name theirs: phases_axis.py)."""
    if meta.phases:
        return dataclasses.replace(update, phase=meta.key_phase)
    return dataclasses.replace(update, axis="t") if meta.time and update.axis == "k" else update


def wire_undone(meta: VolumeMeta, undone: Undone) -> Undone:
    if meta.phases:
        return dataclasses.replace(undone, updates=[wire_update(meta, u) for u in undone.updates])
    if not meta.time:
        return undone
    return dataclasses.replace(undone, axis="t",
                               updates=[wire_update(meta, u) for u in undone.updates])
