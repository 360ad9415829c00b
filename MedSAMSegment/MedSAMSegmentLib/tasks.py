"""One persistent worker thread for everything slow; results come back on the main thread.

Slicer's GUI, VTK and MRML may only be touched from the main thread, and nothing slow
may run there. So: the main thread ``submit``s a task (a function run on the worker
thread); the task never touches MRML, only the network and numpy; anything it wants
to show is ``post``ed as a callback, and the main thread runs posted callbacks in
``drain()``, called by a Qt timer in Slicer (and in a loop by tests). No
``processEvents`` loops, no waiting on the main thread.

Tasks run one at a time, in order. Each has a cancel event the task checks between
steps; ``cancel`` never kills a thread, it asks the task to stop.
"""

from __future__ import annotations

import logging
import queue
import threading
import time
import traceback
from collections.abc import Callable
from dataclasses import dataclass, field
from typing import Any

log = logging.getLogger(__name__)


class TaskCancelled(Exception):
    """Raised inside a task that saw its cancel event (reported as cancelled, not failed)."""


@dataclass
class Task:
    """A unit of work for the worker thread and the callbacks that report on it."""

    title: str
    work: Callable[[Task], Any]
    on_done: Callable[[Any], None] | None = None
    on_error: Callable[[BaseException], None] | None = None
    on_cancelled: Callable[[], None] | None = None
    cancel_event: threading.Event = field(default_factory=threading.Event)
    state: str = "queued"  # queued, running, done, failed, cancelled
    _runner: TaskRunner | None = field(default=None, repr=False)

    def cancel(self) -> None:
        self.cancel_event.set()

    @property
    def cancelled(self) -> bool:
        return self.cancel_event.is_set()

    def check_cancelled(self) -> None:
        if self.cancel_event.is_set():
            raise TaskCancelled(self.title)

    def post(self, callback: Callable[..., None], *args: Any) -> None:
        """Run ``callback(*args)`` on the main thread at its next ``drain``."""
        assert self._runner is not None
        self._runner.post(callback, *args)


class TaskRunner:
    """The worker thread plus the queue of callbacks for the main thread."""

    def __init__(self, name: str = "MedSAM2 worker") -> None:
        self._tasks: queue.Queue[Task | None] = queue.Queue()
        self._posted: queue.Queue[tuple[Callable[..., None], tuple]] = queue.Queue()
        self._lock = threading.Lock()
        self._current: Task | None = None
        self._queued: list[Task] = []
        self._closed = False
        self._thread = threading.Thread(target=self._loop, name=name, daemon=True)
        self._thread.start()

    # ---- main thread ---------------------------------------------------------------
    def submit(self, task: Task) -> Task:
        if self._closed:
            raise RuntimeError("the MedSAM2 worker thread has been shut down")
        task._runner = self
        with self._lock:
            self._queued.append(task)
        self._tasks.put(task)
        return task

    def drain(self, budget_s: float = 0.05) -> int:
        """Run posted callbacks on the calling (main) thread for at most ``budget_s``."""
        deadline = time.monotonic() + budget_s
        n = 0
        while True:
            try:
                callback, args = self._posted.get_nowait()
            except queue.Empty:
                return n
            try:
                callback(*args)
            except Exception:  # a broken callback must not stop the others
                log.error("MedSAM2 callback failed:\n%s", traceback.format_exc())
            n += 1
            if time.monotonic() > deadline:
                return n

    @property
    def busy(self) -> bool:
        """True while a task is queued or running, or its callbacks are not yet drained."""
        with self._lock:
            return self._current is not None or bool(self._queued) or not self._posted.empty()

    @property
    def current(self) -> Task | None:
        with self._lock:
            return self._current

    def cancel_all(self) -> None:
        """Ask the running task and every queued one to stop."""
        with self._lock:
            tasks = [t for t in [self._current, *self._queued] if t is not None]
        for task in tasks:
            task.cancel()

    def shutdown(self, timeout: float = 5.0) -> bool:
        """Cancel everything and stop the thread; True if it ended within ``timeout``."""
        self._closed = True
        self.cancel_all()
        self._tasks.put(None)
        self._thread.join(timeout)
        return not self._thread.is_alive()

    # ---- any thread ----------------------------------------------------------------
    def post(self, callback: Callable[..., None], *args: Any) -> None:
        self._posted.put((callback, args))

    # ---- worker thread -------------------------------------------------------------
    def _loop(self) -> None:
        while True:
            task = self._tasks.get()
            if task is None:
                return
            with self._lock:
                self._queued.remove(task)
                self._current = task
            try:
                self._run(task)
            finally:
                with self._lock:
                    self._current = None

    def _run(self, task: Task) -> None:
        if task.cancelled:
            task.state = "cancelled"
            if task.on_cancelled is not None:
                self.post(task.on_cancelled)
            return
        task.state = "running"
        try:
            result = task.work(task)
        except TaskCancelled:
            task.state = "cancelled"
            if task.on_cancelled is not None:
                self.post(task.on_cancelled)
        except Exception as exc:  # reported to the user by on_error, never swallowed
            task.state = "failed"
            log.debug("task %r failed:\n%s", task.title, traceback.format_exc())
            if task.on_error is not None:
                self.post(task.on_error, exc)
            else:
                log.error("MedSAM2 task %r failed: %s", task.title, exc)
        else:
            task.state = "done"
            if task.on_done is not None:
                self.post(task.on_done, result)
