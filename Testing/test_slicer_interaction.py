"""interaction.py: the effect's decisions on mouse and key events and its backend line."""

from __future__ import annotations

from types import SimpleNamespace

from MedSAMSegmentLib.interaction import (
    MIN_DRAG_PIXELS,
    backend_summary,
    drag_is_box,
    enter_applies,
    press_swallowed,
)
from MedSAMSegmentLib.settings import Settings

# qSlicerSegmentEditorAbstractEffect::ConfirmationResult, in its declared order
NOT_CONFIRMED, CONFIRMED_WITHOUT_DIALOG, CONFIRMED_WITH_DIALOG = 0, 1, 2


def test_a_drag_is_a_box_only_when_it_spans_both_axes() -> None:
    assert drag_is_box((10, 10), (10 + MIN_DRAG_PIXELS, 10 - MIN_DRAG_PIXELS))
    assert not drag_is_box((10, 10), (11, 12))  # a click with a tremor
    assert not drag_is_box((10, 10), (80, 11))  # a line
    assert not drag_is_box((10, 10), (10, 80))


def test_the_press_is_dropped_when_refused_or_a_dialog_was_shown() -> None:
    args = (NOT_CONFIRMED, CONFIRMED_WITH_DIALOG)
    assert press_swallowed(NOT_CONFIRMED, *args)
    assert press_swallowed(CONFIRMED_WITH_DIALOG, *args)
    assert not press_swallowed(CONFIRMED_WITHOUT_DIALOG, *args)


def test_enter_applies_only_a_pending_preview_outside_a_propagation() -> None:
    assert enter_applies(SimpleNamespace(pending={3, 4}), propagating=False)
    assert not enter_applies(SimpleNamespace(pending={3}), propagating=True)
    assert not enter_applies(SimpleNamespace(pending=set()), propagating=False)
    assert not enter_applies(None, propagating=False)


def test_backend_summary(tmp_path) -> None:  # noqa: ANN001
    checkpoint = tmp_path / "m.pt"
    checkpoint.write_bytes(b"x")
    local = Settings(backend="local", python="/usr/bin/python3", checkpoint=str(checkpoint))
    assert backend_summary(local, None) == "local worker (starts with the first box)"
    assert backend_summary(local, "local worker, cpu, fp32") == "local worker, cpu, fp32"
    remote = Settings(backend="remote", server_url="https://medsam.example.org", token="t")
    assert backend_summary(remote, None) == "remote server https://medsam.example.org"
    unset = backend_summary(Settings(backend="local"), "a running worker")
    assert unset.startswith("MedSAM2 is not set up: no Python for the local worker")
    assert unset.endswith("(Server and model settings…)")
