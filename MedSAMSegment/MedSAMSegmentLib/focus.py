"""Tell the server which slice the user looks at, once scrolling pauses (pure Python).

While the user scrolls a slice view or moves into one, the effect pokes a ``Debouncer``;
once no poke came for ``FOCUS_DELAY_S`` it hands the last view on, and the controller
sends the slice that view shows as a focus (``FocusSender``). The server then encodes
that slice and its neighbours while the user studies it, so the box drawn next costs
only the decoder. A focus is a hint: sent from the worker thread like every network
call, the newest target only, never twice in a row for the same slice, never to a
server session that does not exist yet (no upload for it), and a failure is logged,
not shown: the next real operation reports any real problem.
"""

from __future__ import annotations

import logging
import threading
from collections.abc import Callable
from typing import Any, Protocol

from .tasks import Task, TaskRunner

log = logging.getLogger(__name__)
# Scrolling fires a slice change per wheel step; the user has stopped on a slice when
# none came for this long (short enough to start encoding before the box is drawn).
FOCUS_DELAY_S = 0.3
TIMER_RESOLUTION_S = 0.001  # a timer's own granularity (QTimer: 1 ms) counts as on time


class Debouncer:
    """Calls ``on_settled(value)`` with the last ``poke``d value once ``delay_s`` passed
    without a poke.

    ``start_timer(seconds)`` arms a one-shot timer that calls ``fire`` (in Slicer a
    single-shot QTimer); at most one is armed at a time: a poke while armed only moves
    the deadline, which ``fire`` re-checks against ``clock``.
    """

    def __init__(self, delay_s: float, on_settled: Callable[[Any], None], *,
                 clock: Callable[[], float], start_timer: Callable[[float], None]) -> None:
        self.delay_s = delay_s
        self.on_settled = on_settled
        self.clock = clock
        self.start_timer = start_timer
        self._value: Any = None
        self._pending = False
        self._armed = False
        self._last_poke = 0.0

    def poke(self, value: Any) -> None:
        self._value, self._pending, self._last_poke = value, True, self.clock()
        if not self._armed:
            self._armed = True
            self.start_timer(self.delay_s)

    def fire(self) -> None:
        """The timer ran out: hand the value on if it has been quiet long enough."""
        self._armed = False
        if not self._pending:
            return
        left = self.delay_s - (self.clock() - self._last_poke)
        if left > TIMER_RESOLUTION_S:  # poked meanwhile: wait for the rest of the quiet time
            self._armed = True
            self.start_timer(left)
            return
        value, self._value, self._pending = self._value, None, False
        self.on_settled(value)

    def cancel(self) -> None:
        """Forget the pending value (an armed timer then fires for nothing)."""
        self._value, self._pending = None, False


class FocusTarget(Protocol):
    """What a focus is sent through (server_session.ServerSession)."""

    def focus(self, axis: str, index: int) -> bool: ...


class FocusSender:
    """Sends focus targets on the worker thread: the newest only, each slice once."""

    def __init__(self, runner: TaskRunner) -> None:
        self.runner = runner
        self._lock = threading.Lock()
        self._next: tuple[FocusTarget, str, int] | None = None
        self._last: tuple[FocusTarget, str, int] | None = None
        self._queued = False

    def send(self, session: FocusTarget, axis: str, index: int) -> bool:
        """Queue a focus on slice ``index`` along ``axis`` (main thread); False when that
        slice of that session was the last one asked for."""
        target = (session, axis, index)
        with self._lock:
            last = self._last
            if last is not None and last[0] is session and last[1:] == (axis, index):
                return False
            self._last = self._next = target
            if self._queued:
                return True  # the queued task sends the newest target when it runs
            self._queued = True
        self.runner.submit(Task(f"focus on slice {index}", self._work, on_error=_log_failure))
        return True

    def _work(self, task: Task) -> bool:
        with self._lock:
            target, self._next, self._queued = self._next, None, False
        if target is None:
            return False
        session, axis, index = target
        return session.focus(axis, index)


def _log_failure(exc: BaseException) -> None:
    log.warning("MedSAM2: focus not sent (the next prompt reports any real problem): %s", exc)
