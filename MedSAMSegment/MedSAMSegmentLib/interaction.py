"""The effect's decisions about mouse and key events and its status line (pure).

SegmentEditorEffect.processInteractionEvents asks these and does what they say; the
confirmation values are qSlicerSegmentEditorAbstractEffect's ConfirmationResult
(NotConfirmed, ConfirmedWithoutDialog, ConfirmedWithDialog).
"""

from __future__ import annotations

from collections.abc import Sequence

from .settings import Settings

MIN_DRAG_PIXELS = 4


def drag_is_box(start: Sequence[float], end: Sequence[float]) -> bool:
    """A drag makes a box when it spans at least MIN_DRAG_PIXELS along both axes (a click
    or a line is not a box)."""
    return abs(end[0] - start[0]) >= MIN_DRAG_PIXELS and abs(end[1] - start[1]) >= MIN_DRAG_PIXELS


def press_swallowed(confirmed: int, not_confirmed: int, confirmed_with_dialog: int) -> bool:
    """After confirmCurrentSegmentVisible: drop the press (as Slicer's Draw effect does) when
    the user said no, or when a dialog was shown (it took the matching release event)."""
    return confirmed in (not_confirmed, confirmed_with_dialog)


def enter_applies(obj: object | None, propagating: bool) -> bool:
    """Enter applies the selected segment's preview only when there is one to apply and no
    propagation is writing to it."""
    return obj is not None and bool(obj.pending) and not propagating


def backend_summary(settings: Settings, described: str | None) -> str:
    """One line for the effect's panel: which backend, and whether it is set up
    (``described``: the running backend's own description, None when none runs)."""
    problems = settings.validate()
    if problems:
        return "MedSAM2 is not set up: " + problems[0] + " (Server and model settings…)"
    if described is not None:
        return described
    return (f"remote server {settings.server_url}" if settings.backend == "remote"
            else "local worker (starts with the first box)")
