"""panel_view: what the options frame and the settings panel show, decided below the glue."""

from __future__ import annotations

import ast
from pathlib import Path

from MedSAMSegmentLib.panel_state import PanelState
from MedSAMSegmentLib.panel_view import (
    TimePanelState,
    download_progress,
    install_progress,
    message_style,
    panel_view,
    propagate_options,
    review_row,
    settings_enabled,
    time_range,
    time_view,
)

LIB = Path(__file__).resolve().parents[1] / "MedSAMSegment" / "MedSAMSegmentLib"


def _widget_attributes(file: str, cls: str) -> set[str]:
    """Attributes the panel's __init__ assigns from a qt./ctk. constructor."""
    tree = ast.parse((LIB / file).read_text())
    init = next(n for n in ast.walk(tree) if isinstance(n, ast.FunctionDef)
                and n.name == "__init__")
    return {t.attr for n in ast.walk(init) if isinstance(n, ast.Assign)
            and isinstance(n.value, ast.Call)
            and ast.unparse(n.value.func).split(".")[0] in ("qt", "ctk")
            for t in n.targets if isinstance(t, ast.Attribute)}


def test_nothing_prompted_only_whole_segmentation_actions() -> None:
    v = panel_view(PanelState(segment="liver", backend="local worker", slices=40))
    assert v.status == ("<b>liver</b>: draw a box around the structure on any slice"
                        "<br>local worker")
    assert v.enabled == {"propagate": False, "propagate_all": True, "cancel": False,
                         "apply": False, "apply_all": True, "discard": False,
                         "prev": False, "next": False}
    assert (v.range_max, v.last_slice, v.progress_visible, v.progress) == (39, 39, False, None)


def test_a_prompt_with_a_preview_enables_propagate_apply_discard() -> None:
    v = panel_view(PanelState(segment="liver", prompted=[12, 30], pending=5, slices=40,
                              review=["slice 12 · IoU 0.61 · 1234 voxels"], review_slices=[12],
                              export_note="no terminology"), whole_volume=False)
    assert v.status.startswith("<b>liver</b>: prompts on slice(s) 12, 30; 5 slice(s) in the preview")
    assert v.status.endswith("<br><i>no terminology</i>")
    assert v.enabled["propagate"] and v.enabled["apply"] and v.enabled["discard"]
    assert v.enabled["prev"] and v.enabled["next"] and not v.enabled["cancel"]
    assert v.last_slice is None  # the user's own range is left alone
    assert v.review_slices == [12]


def test_while_propagating_only_cancel_and_the_bar() -> None:
    v = panel_view(PanelState(segment="", prompted=[3], pending=1, propagating=True,
                              progress=(0, 4)))
    assert v.status.startswith("<b>No segment selected</b>")
    assert not any(v.enabled[k] for k in ("propagate", "propagate_all", "apply", "apply_all"))
    assert v.enabled["cancel"] and v.enabled["discard"] and v.progress_visible
    assert v.progress == (4, 0, "0 / 4 slices")
    assert panel_view(PanelState(propagating=True, progress=(0, 0))).progress == (1, 0, "0 / 0 slices")


def test_every_enablement_names_a_widget_of_its_panel() -> None:
    # the glue sets getattr(panel, name).enabled: a name that is no widget is an AttributeError
    assert set(panel_view(PanelState()).enabled) <= _widget_attributes("OptionsPanel.py",
                                                                       "OptionsPanel")
    assert set(settings_enabled(False, False, True)) <= _widget_attributes("SettingsPanel.py",
                                                                           "SettingsPanel")


def test_settings_buttons_while_busy_and_idle() -> None:
    assert settings_enabled(True, True, True) == {
        "installButton": False, "checkButton": False, "downloadButton": False,
        "startButton": False, "testButton": False, "cancelButton": True}
    idle = settings_enabled(False, True, False)
    assert idle["installButton"] and not idle["cancelButton"] and not idle["testButton"]
    assert settings_enabled(False, False, True)["testButton"]


def test_small_decisions() -> None:
    assert message_style("error") == "color: #c62828"
    assert message_style("warning") == "color: #b26b00"
    assert message_style("info") == "" and message_style("unknown") == ""
    assert review_row(-1, 3, 1) == 0 and review_row(2, 3, 1) == 0 and review_row(0, 3, -1) == 2
    assert review_row(0, 0, 1) is None
    assert propagate_options("both", True, 3, 9, 2) == {
        "direction": "both", "first": None, "last": None, "stop_after_empty": 2}
    assert propagate_options("forward", False, 3.0, 9.0, 0) == {
        "direction": "forward", "first": 3, "last": 9, "stop_after_empty": 0}
    assert install_progress(0, 4, "pip") == (4, 0, "step 1 of 4: pip")
    assert download_progress(78_000_000, 156_000_000) == (1000, 500, "78 / 156 MB")
    assert download_progress(5, None) is None and download_progress(5, 0) is None


def test_through_time_hidden_for_an_ordinary_volume() -> None:
    v = time_view(panel_view(PanelState(segment="liver", prompted=[3], slices=9)),
                  TimePanelState())
    assert not v.time_visible and "propagate_time" not in v.enabled
    assert v.enabled["propagate"]  # the slice path is untouched


def test_through_time_frames_replace_slices_in_the_options() -> None:
    base = panel_view(PanelState(segment="LV", slices=1))
    t = TimePanelState(offered=True, segment="LV", frames=40, frame_shown=7)
    v = time_view(base, t)
    assert v.time_visible and (v.time_range_max, v.time_last, v.time_note) == (39, 39, "")
    assert v.status == ("<b>LV</b> through 40 frames: draw a box around the structure on the "
                        "frame shown")
    assert not v.enabled["propagate_time"] and not v.enabled["propagate"]
    t = TimePanelState(offered=True, segment="LV", frames=40, frame_shown=7, prompted=[7],
                       pending=12, review=["frame 9 · mask vanishes · IoU 0.40 · 0 pixels"],
                       review_frames=[9], can_undo_apply=True)
    v = time_view(panel_view(PanelState(segment="LV", slices=1)), t, whole_clip=False)
    assert v.status.endswith("prompts on frame(s) 7; 12 frame(s) in the preview")
    assert v.enabled["propagate_time"] and v.enabled["apply"] and v.enabled["undo_time"]
    assert not v.enabled["propagate"] and not v.enabled["propagate_all"]
    assert not v.enabled["apply_all"] and v.enabled["next"] and v.review_slices == [9]
    assert v.time_last is None  # the user's own range is left alone
    running = TimePanelState(offered=True, frames=40, prompted=[7], pending=3,
                             propagating=True, progress=(3, 40), can_undo_apply=False)
    v = time_view(panel_view(PanelState()), running)
    assert v.enabled["cancel"] and not v.enabled["apply"] and not v.enabled["propagate_time"]
    assert v.progress_visible and v.progress == (40, 3, "3 / 40 frames")


def test_through_time_3d_frames_say_so_and_offer_nothing_else() -> None:
    t = TimePanelState(offered=True, note="3D frames: use segment --time --phase", frames=10)
    v = time_view(panel_view(PanelState(segment="liver", prompted=[3], slices=9)), t)
    assert v.time_visible and v.time_note.startswith("3D frames")
    assert not v.enabled["propagate_time"] and v.enabled["propagate"]  # slices still work
    assert time_range(True, 2, 5) == {"first": None, "last": None}
    assert time_range(False, 2.0, 5.0) == {"first": 2, "last": 5}


def test_every_time_enablement_names_a_widget_of_the_options_panel() -> None:
    t = TimePanelState(offered=True, frames=4, prompted=[1], pending=1)
    assert set(time_view(panel_view(PanelState()), t).enabled) <= _widget_attributes(
        "OptionsPanel.py", "OptionsPanel")
