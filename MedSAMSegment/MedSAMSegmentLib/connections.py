"""Signal connections a panel makes, so that its cleanup can undo every one of them.

Slicer's AbstractScriptedSegmentEditorEffect.cleanup (and the module widget's cleanup) is
where "any subclass-specific signals and slots" must be disconnected: a PythonQt connection
to a bound method or a lambda keeps the Python object, and whatever it holds, alive after
the C++ side is deleted (Slicer issue 7392). Pure Python: it works on any object with
PythonQt's ``connect(signal, callable)`` / ``disconnect(signal, callable)``.
"""

from __future__ import annotations

from collections.abc import Callable


class Connections:
    def __init__(self) -> None:
        self._made: list[tuple[object, str, Callable]] = []

    def connect(self, widget: object, signal: str, slot: Callable) -> None:
        """``widget.connect(signal, slot)``, remembered for ``disconnect_all``."""
        widget.connect(signal, slot)
        self._made.append((widget, signal, slot))

    def disconnect_all(self) -> int:
        """Undo every connection (latest first); returns how many. Safe to call twice."""
        made, self._made = self._made, []
        for widget, signal, slot in reversed(made):
            widget.disconnect(signal, slot)
        return len(made)

    def __len__(self) -> int:
        return len(self._made)
