"""``MedSAMError``, the one exception of the client, and how a failed answer becomes one.

Every failure talking to medsam-server ends as a ``MedSAMError`` whose message a user can
act on (the server's own words included) and whose ``code`` a program can test.
"""

from __future__ import annotations

import requests

from . import protocol as P

# MedSAMError.code for a session / job the server does not know (any more): upload again
# (the protocol's own error codes: one name per condition, on the wire and here)
SESSION_GONE = P.SESSION_GONE
JOB_GONE = P.JOB_GONE
UNSUPPORTED = "unsupported"  # the server lacks the capability a call needs


class MedSAMError(Exception):
    """Any failure talking to medsam-server. ``status``: HTTP status; ``code``: error code."""

    def __init__(self, message: str, status: int | None = None, code: str | None = None) -> None:
        super().__init__(message)
        self.message = message
        self.status = status
        self.code = code


def error_from_response(url: str, resp: requests.Response, method: str,
                        path: str) -> MedSAMError:
    """The error for an HTTP answer >= 400 from the server at ``url``."""
    status = resp.status_code
    try:
        body = resp.json()
    except ValueError:
        body = None
    if isinstance(body, dict) and "message" in body:
        code, message = str(body.get("error", "")), str(body["message"])
        code = P.LEGACY_ERROR_CODES.get(code, code)  # an older server's name for it
    elif isinstance(body, dict) and "detail" in body:  # a framework default error
        code, message = "http_error", str(body["detail"])
    else:
        code, message = "http_error", f"HTTP {status} ({resp.text[:120]!r})"
    if status == 401:
        return MedSAMError(f"medsam-server at {url} rejected the token: {message}", status, code)
    if status == 404 and code == SESSION_GONE:
        return MedSAMError("the server no longer has this session (restarted, expired, or "
                           f"its lease lapsed); upload again ({message})", status, SESSION_GONE)
    if status == 404 and code == JOB_GONE:
        return MedSAMError("the server no longer knows this propagation job (restarted?); "
                           f"start it again ({message})", status, JOB_GONE)
    return MedSAMError(f"medsam-server: {message} [{method} {path} → {status}]", status, code)


def reason(exc: Exception) -> str:
    """Why a connection failed, in a few words."""
    # requests nests urllib3 errors several levels deep; the innermost text says why
    text = str(exc)
    for marker in ("Connection refused", "Name or service not known", "timed out",
                   "No route to host", "Connection reset", "Remote end closed"):
        if marker.lower() in text.lower():
            return marker.lower()
    return text[:200]
