"""panel_view: what the options frame and the settings panel show, decided below the glue."""

from __future__ import annotations

import ast
from pathlib import Path

from MedSAMSegmentLib.panel_state import PanelState
from MedSAMSegmentLib.panel_view import (
    download_progress,
    install_progress,
    message_style,
    panel_view,
    propagate_options,
    review_row,
    settings_enabled,
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
