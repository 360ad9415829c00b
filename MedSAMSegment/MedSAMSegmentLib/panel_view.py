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
    review_slices: list[int] = field(default_factory=list)  # slices, or frames through time
    time_visible: bool = False  # the "Through time" group (time_view)
    time_note: str = ""
    time_range_max: int = 0
    time_last: int | None = None


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


@dataclass
class TimePanelState:
    """The "Through time" group's state (TimeController.panel_state builds it)."""

    offered: bool = False  # the source volume is a sequence browser's proxy
    note: str = ""  # why propagation through time is not available here (3D frames)
    segment: str = ""
    frames: int = 0
    frame_shown: int = 0
    prompted: list[int] = field(default_factory=list)
    pending: int = 0
    propagating: bool = False
    progress: tuple[int, int] | None = None
    review: list[str] = field(default_factory=list)
    review_frames: list[int] = field(default_factory=list)
    can_undo_apply: bool = False


def time_view(v: PanelView, t: TimePanelState, whole_clip: bool = True) -> PanelView:
    """The options frame when the source volume is a browser's proxy: the "Through time"
    group is shown; with 2D frames, prompts, Apply, Discard, Cancel, progress and Review
    act on frames, and the slice-wise Propagate buttons are off (a frame has one slice)."""
    v.time_visible = t.offered
    if not t.offered:
        return v
    v.time_note = t.note
    v.time_range_max = max(t.frames - 1, 0)
    v.time_last = t.frames - 1 if whole_clip and t.frames else None
    if t.note:  # 3D frames: slice-wise segmentation of the frame shown only
        v.enabled.update(propagate_time=False, undo_time=t.can_undo_apply)
        return v
    idle = not t.propagating
    v.status = (f"<b>{t.segment or 'No segment selected'}</b> through {t.frames} frames: "
                + (f"prompts on frame(s) {', '.join(map(str, t.prompted))}; "
                   f"{t.pending} frame(s) in the preview" if t.prompted
                   else "draw a box around the structure on the frame shown"))
    v.enabled.update(propagate=False, propagate_all=False, propagate_time=idle and bool(t.prompted),
                     cancel=t.propagating, apply=idle and t.pending > 0, apply_all=False,
                     discard=bool(t.prompted) or t.pending > 0, undo_time=t.can_undo_apply,
                     prev=bool(t.review_frames), next=bool(t.review_frames))
    v.progress_visible = t.propagating
    v.progress = None
    if t.progress is not None:
        done, total = t.progress
        v.progress = (max(total, 1), done, f"{done} / {total} frames")
    v.review, v.review_slices = list(t.review), list(t.review_frames)
    return v


def time_range(whole: bool, first: int, last: int) -> dict:
    """TimeController.propagate's options from the "Through time" group's widgets."""
    return {"first": None if whole else int(first), "last": None if whole else int(last)}
