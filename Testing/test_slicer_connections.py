"""Connections: the panels' cleanup disconnects every signal they connected."""

from __future__ import annotations

from collections.abc import Callable

from MedSAMSegmentLib.connections import Connections


class Emitter:
    """Stands for a PythonQt-wrapped widget (no Qt application can exist here): connect and
    disconnect by signature and callable, as PythonQt's QObject wrapper does."""

    def __init__(self) -> None:
        self.slots: dict[str, list[Callable]] = {}

    def connect(self, signal: str, slot: Callable) -> None:
        self.slots.setdefault(signal, []).append(slot)

    def disconnect(self, signal: str, slot: Callable) -> None:
        self.slots[signal].remove(slot)  # ValueError, as a wrong pair would be a no-op

    def emit(self, signal: str, *args: object) -> None:
        for slot in list(self.slots.get(signal, [])):
            slot(*args)


def test_disconnect_all_undoes_every_connection_and_only_those() -> None:
    button, slider = Emitter(), Emitter()
    calls: list[object] = []
    other = calls.append
    slider.connect("valueChanged(double)", other)  # not ours: must stay
    connections = Connections()
    connections.connect(button, "clicked()", lambda: calls.append("clicked"))
    connections.connect(slider, "valueChanged(double)", lambda v: calls.append(("v", v)))
    button.emit("clicked()")
    slider.emit("valueChanged(double)", 0.5)
    assert calls == ["clicked", 0.5, ("v", 0.5)]
    assert len(connections) == 2

    assert connections.disconnect_all() == 2
    calls.clear()
    button.emit("clicked()")
    slider.emit("valueChanged(double)", 0.7)
    assert calls == [0.7]
    assert connections.disconnect_all() == 0  # cleanup may run twice (reload, editor delete)
