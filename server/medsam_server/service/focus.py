"""Work while the user draws: encode the slice a user looks at, then its neighbours.

A radiologist scrolls to a slice, studies it, then draws a box: the seconds in between
are enough to encode that slice and several around it, so the box then costs only the
decoder. ``POST /sessions/{sid}/focus`` queues a ``FocusWork`` as the session's idle
work on the model worker (worker.py):

- Priority: one slice per turn, only when no prompt, undo, deletion or job is queued;
  anything a user asks for waits at most one slice's encoding. One focus per session:
  a newer one (the user scrolled on) replaces it. On a session with a job, the job goes
  first (it encodes what it needs); the focus then finds those slices cached.
- Memory: it never evicts. A slice is encoded only if its features fit in the session's
  feature cache budget and in the server's memory budget as they are (``room``); when
  either is full the focus stops. Features a prompt or a job uses are never pushed out
  for a guess, and other sessions' caches are never trimmed because of it.
- Claims: a queued focus holds no claim; each slice takes a claim on the session for the
  time of its encoding only (claims.py), so a focus never keeps a session from being
  closed, expiring or being budget-trimmed; a closed session ends its focus at its turn.
- Clocks: the request is the client's work, like a prompt (it renews the idle clock and
  the lease: a user scrolling through the volume is using the session); the encoding it
  causes renews neither, so a focus never keeps a session open by itself.
"""

from __future__ import annotations

import logging
import threading
from collections.abc import Callable, Iterator

from .errors import Busy, SessionGone
from .sessions import ServiceSession

log = logging.getLogger(__name__)


def focus_order(index: int, n: int) -> Iterator[int]:
    """``index``, then outwards: index+1, index-1, index+2, ... within 0..n-1."""
    yield index
    for d in range(1, max(index + 1, n - index)):
        for i in (index + d, index - d):
            if 0 <= i < n:
                yield i


class FocusWork:
    """One session's focus, run by the model worker one slice per ``step``.

    ``room()`` gives the bytes the server's memory budget has left. ``ended`` says why
    it stopped (done, full, closed, busy, replaced, failed); ``finished`` is set then.
    """

    def __init__(self, s: ServiceSession, axis: str, index: int, num_slices: int,
                 room: Callable[[], int]) -> None:
        # the service session, never its engine session: a closed one must be freeable
        self.service_session = s
        self.axis = axis
        self.index = index
        self.encoded: list[int] = []  # slices this focus encoded, in order
        self.ended: str | None = None
        self.finished = threading.Event()
        self._order = focus_order(index, num_slices)
        self._room = room

    def step(self) -> bool:
        """Encode the next slice not yet cached; False when the focus is over."""
        if self.finished.is_set():
            return False
        s = self.service_session
        try:
            claim = s.work.claim()
        except SessionGone:
            return self.end("closed")
        except Busy:  # its job runs first and encodes what it needs
            return self.end("busy")
        try:
            es = s.session
            if es is None:
                return self.end("closed")
            for index in self._order:
                if (self.axis, index) in es.cache:
                    continue  # encoded already: costs nothing, take the next one now
                if not es.prefetch(self.axis, index, max_bytes=self._room()):
                    return self.end("full")
                self.encoded.append(index)
                return True
            return self.end("done")
        except Exception:
            log.exception("session %s: focus on %s %d failed", s.session_id, self.axis,
                          self.index)
            return self.end("failed")
        finally:
            claim.release()

    def end(self, reason: str) -> bool:
        """Stop here (idempotent: the first reason stays); always False, for ``step``."""
        if self.ended is None:
            self.ended = reason
            level = logging.DEBUG if reason == "replaced" else logging.INFO
            log.log(level, "session %s: focus on slice %d along %s ended (%s), %d slice(s) "
                    "encoded", self.service_session.session_id, self.index, self.axis, reason,
                    len(self.encoded))
        self.finished.set()
        return False
