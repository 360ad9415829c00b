"""What each widget of the panels shows, decided here (pure) so the Qt glue only assigns it.

``panel_view`` turns the effect's PanelState into texts and enablements for the options
frame; the other functions are the settings panel's and the review list's small decisions.
"""

from __future__ import annotations

from dataclasses import dataclass, field

from .panel_state import PanelState

MESSAGE_COLORS = {"info": "", "warning": "#b26b00", "error": "#c62828"}


@dataclass
class PanelView:
    status: str = ""  # rich text of the status line
    enabled: dict[str, bool] = field(default_factory=dict)  # button attribute -> enabled
    progress_visible: bool = False
    progress: tuple[int, int, str] | None = None  # (maximum, value, format)
    range_max: int = 0  # of the first/last slice spin boxes
    last_slice: int | None = None  # the "last" spin box follows the volume while "whole"
    model_window: str = ""
    review: list[str] = field(default_factory=list)
    review_slices: list[int] = field(default_factory=list)


def panel_view(s: PanelState, whole_volume: bool = True) -> PanelView:
    """The options frame for state ``s`` (``whole_volume``: the "whole volume" box is ticked)."""
    idle = not s.propagating
    status = (f"<b>{s.segment or 'No segment selected'}</b>: "
              + (f"prompts on slice(s) {', '.join(map(str, s.prompted))}; "
                 f"{s.pending} slice(s) in the preview" if s.prompted
                 else "draw a box around the structure on any slice")
              + (f"<br>{s.backend}" if s.backend else "")
              + (f"<br><i>{s.export_note}</i>" if s.export_note else ""))
    enabled = {"propagate": idle and bool(s.prompted), "propagate_all": idle,
               "cancel": s.propagating, "apply": idle and s.pending > 0, "apply_all": idle,
               "discard": bool(s.prompted) or s.pending > 0,
               "prev": bool(s.review_slices), "next": bool(s.review_slices)}
    progress = None
    if s.progress is not None:
        done, total = s.progress
        progress = (max(total, 1), done, f"{done} / {total} slices")
    return PanelView(status=status, enabled=enabled, progress_visible=s.propagating,
                     progress=progress, range_max=max(s.slices - 1, 0),
                     last_slice=s.slices - 1 if whole_volume and s.slices else None,
                     model_window=s.model_window, review=list(s.review),
                     review_slices=list(s.review_slices))


def message_style(level: str) -> str:
    """The message label's style sheet for a message of ``level`` (info, warning, error)."""
    color = MESSAGE_COLORS.get(level, "")
    return f"color: {color}" if color else ""


def review_row(current: int, count: int, delta: int) -> int | None:
    """The review list's row after Previous (-1) / Next (+1); None when the list is empty."""
    if count == 0:
        return None
    return 0 if current < 0 else (current + delta) % count


def propagate_options(direction: str, whole: bool, first: int, last: int,
                      stop_after_empty: int) -> dict:
    """Controller.propagate's options from the Propagate box's widgets."""
    return {"direction": direction, "first": None if whole else int(first),
            "last": None if whole else int(last), "stop_after_empty": int(stop_after_empty)}


def install_progress(index: int, count: int, title: str) -> tuple[int, int, str]:
    """(maximum, value, format) of the settings panel's bar for install step ``index``."""
    return count, index, f"step {index + 1} of {count}: {title}"


def download_progress(done: int, total: int | None) -> tuple[int, int, str] | None:
    """(maximum, value, format) for a download; None while its size is unknown."""
    if not total:
        return None
    return 1000, int(1000 * done / total), f"{done / 1e6:.0f} / {total / 1e6:.0f} MB"


def settings_enabled(busy: bool, cancellable: bool, remote: bool) -> dict[str, bool]:
    """The settings panel's buttons while a set-up task runs (``busy``) or not."""
    return {"installButton": not busy, "checkButton": not busy, "downloadButton": not busy,
            "startButton": not busy, "testButton": not busy and remote,
            "cancelButton": busy and cancellable}
