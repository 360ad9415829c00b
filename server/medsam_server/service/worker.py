"""The one thread that runs the model, so all clients share one device in turn
(its own thread, or the main thread under ``medsam-server serve``).

Two queues: *urgent* items (a prompt, an object deletion: a user is waiting on them)
always go before *jobs* (propagation). A running job also serves urgent items between
its slices (``run_urgent``), so a prompt waits at most one slice, not a whole volume.

Below both, *idle work* (a focus: slices encoded ahead while the user draws): at most
one per session, a newer one replacing it; one ``step()`` (one slice) per turn, only
when no urgent item and no job is queued, sessions taking turns. So a prompt or a
propagation waits at most one step for it, and a running job never runs beside it.
"""

from __future__ import annotations

import logging
import threading
from collections import deque
from collections.abc import Callable
from concurrent.futures import Future
from dataclasses import dataclass
from typing import Any, Protocol

from .errors import Unavailable

log = logging.getLogger(__name__)


@dataclass
class _Item:
    fn: Callable[[], Any]
    future: Future
    tag: str  # the session it works on


class IdleWork(Protocol):
    def step(self) -> bool:
        """Do one small piece (one slice); False when nothing is left."""
        ...


class ModelWorker:
    def __init__(self, name: str = "medsam-model") -> None:
        self._urgent: deque[_Item] = deque()
        self._jobs: deque[_Item] = deque()
        self._idle: dict[str, IdleWork] = {}  # by session, in turn order
        self._cond = threading.Condition()
        self._stopping = False
        self._thread = threading.Thread(target=self._loop, name=name, daemon=True)

    def start(self) -> None:
        """Run the model on a thread of its own."""
        self._thread.start()

    def run_here(self) -> None:
        """Run the model on the calling thread until ``stop()``.

        ``serve`` puts the model on the main thread: with libgomp (CPU torch), OpenMP
        work started from the main thread wakes its team faster, ~10 ms less per prompt.
        """
        self._loop()

    def stop(self, timeout: float = 10.0) -> None:
        """Finish the item at hand, fail the queued ones, end the thread."""
        with self._cond:
            self._stopping = True
            left = list(self._urgent) + list(self._jobs)
            self._urgent.clear()
            self._jobs.clear()
            self._idle.clear()
            self._cond.notify_all()
        for item in left:
            if item.future.set_running_or_notify_cancel():
                item.future.set_exception(Unavailable("the server is shutting down"))
        if self._thread.is_alive() and threading.current_thread() is not self._thread:
            self._thread.join(timeout)

    @property
    def queued(self) -> int:
        return len(self._urgent) + len(self._jobs)

    def submit(self, fn: Callable[[], Any], *, urgent: bool, tag: str) -> Future:
        future: Future = Future()
        with self._cond:
            if self._stopping:
                raise Unavailable("the server is shutting down; retry once it is back")
            (self._urgent if urgent else self._jobs).append(_Item(fn, future, tag))
            self._cond.notify()
        return future

    def set_idle(self, tag: str, work: IdleWork) -> IdleWork | None:
        """Make ``work`` the idle work of session ``tag``; returns the one it replaced
        (which gets no further step, though one may be running now)."""
        with self._cond:
            if self._stopping:
                raise Unavailable("the server is shutting down; retry once it is back")
            old = self._idle.pop(tag, None)
            self._idle[tag] = work
            self._cond.notify()
        return old

    def drop_idle(self, tag: str) -> IdleWork | None:
        """Forget session ``tag``'s idle work (closed); returns it, if there was one."""
        with self._cond:
            return self._idle.pop(tag, None)

    def run_urgent(self, skip_tag: str | None = None) -> None:
        """Run queued urgent items now (called on the worker thread, between slices).

        Items tagged ``skip_tag`` (the session whose job is running) stay queued: they
        must not change that session under its own propagation.
        """
        while True:
            with self._cond:
                item = next((i for i in self._urgent if i.tag != skip_tag), None)
                if item is None:
                    return
                self._urgent.remove(item)
            self._run(item)

    def _loop(self) -> None:
        while True:
            with self._cond:
                while not (self._urgent or self._jobs or self._idle or self._stopping):
                    self._cond.wait()
                if self._stopping:
                    return
                if self._urgent or self._jobs:
                    item: _Item | None = (self._urgent or self._jobs).popleft()
                else:
                    item = None
                    tag, work = next(iter(self._idle.items()))
            if item is not None:
                self._run(item)
            else:
                self._step(tag, work)

    def _step(self, tag: str, work: IdleWork) -> None:
        try:
            more = work.step()
        except Exception:  # idle work must never stop the worker
            log.exception("idle work of session %s failed", tag)
            more = False
        with self._cond:
            if self._idle.get(tag) is work:  # not replaced nor dropped meanwhile
                del self._idle[tag]
                if more:
                    self._idle[tag] = work  # to the back: sessions take turns

    @staticmethod
    def _run(item: _Item) -> None:
        # Accepted work runs even if its waiter gave up: the item also releases its
        # session, and a prompt the client sent is applied like any request received.
        wanted = item.future.set_running_or_notify_cancel()
        try:
            result = item.fn()
        except BaseException as exc:  # the waiting request reports it
            if wanted:
                item.future.set_exception(exc)
        else:
            if wanted:
                item.future.set_result(result)
