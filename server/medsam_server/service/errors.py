"""What a request can get wrong, as protocol error codes (``ErrorBody.error``).

Plain exceptions, no HTTP: ``app.py`` maps each class to a status code.
"""

from __future__ import annotations


class ServiceError(Exception):
    """Base: ``code`` goes on the wire, ``message`` says what to do about it."""

    code = "bad_input"

    def __init__(self, message: str) -> None:
        super().__init__(message)
        self.message = message


class BadInput(ServiceError):
    code = "bad_input"


class Unauthorized(ServiceError):
    code = "unauthorized"


class NotFound(ServiceError):
    """Something addressed by the request does not exist (404); the subclasses say what."""

    code = "not_found"


class SessionGone(NotFound):
    """The session is unknown: closed, expired (idle, or its client's lease lapsed), or
    lost in a server restart (404). The client uploads the volume again."""

    code = "session_gone"


class ObjectNotFound(NotFound):
    """The session exists but holds no such object (404)."""

    code = "object_not_found"


class JobGone(NotFound):
    """The propagation job is unknown or was forgotten after finishing (404)."""

    code = "job_gone"


class WrongState(ServiceError):
    code = "wrong_state"


class Busy(WrongState):
    code = "busy"


class TooLarge(ServiceError):
    code = "too_large"


class TooManySessions(ServiceError):
    code = "too_many_sessions"


class TooManyObjects(WrongState):
    """A session holds ``ServiceConfig.max_objects`` objects: delete one first (409)."""

    code = "too_many_objects"


class OutOfMemory(ServiceError):
    """The memory budget is held by work in progress (uploads, running sessions) and
    cannot take this upload now (507); retry later or close sessions."""

    code = "out_of_memory"


class Unavailable(ServiceError):
    """The server is shutting down and takes no more work (503)."""

    code = "unavailable"
