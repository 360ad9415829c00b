"""ASGI middleware: bearer token, request body size limits and a sanitised access log."""

from __future__ import annotations

import hmac
import json
import logging
import time
from collections.abc import Callable

from starlette.exceptions import HTTPException
from starlette.types import ASGIApp, Message, Receive, Scope, Send

log = logging.getLogger("medsam_server.service.access")


class BodyTooLarge(HTTPException):
    """Raised from ``receive`` past the limit. An HTTPException so that FastAPI's body
    parsing passes it on unchanged instead of turning it into a generic 400."""

    def __init__(self, limit: int) -> None:
        super().__init__(413, f"request body is over this server's {limit}-byte limit for this "
                              "route (see /info limits)")


async def send_error(send: Send, status: int, code: str, message: str,
                     headers: list[tuple[bytes, bytes]] = ()) -> None:
    body = json.dumps({"error": code, "message": message}).encode()
    await send({"type": "http.response.start", "status": status,
                "headers": [(b"content-type", b"application/json"),
                            (b"content-length", str(len(body)).encode()),
                            (b"connection", b"close"), *headers]})
    await send({"type": "http.response.body", "body": body})


UNAUTHORIZED = ("missing or wrong bearer token: send the header "
                "'Authorization: Bearer <token>' the server was started with")


class TokenMiddleware:
    """Check the bearer token before anything else reads the request (body included),
    on every path but ``open_paths``: strangers get a 401 and no parsing at all."""

    def __init__(self, app: ASGIApp, token: str, open_paths: frozenset[str] = frozenset()) -> None:
        self.app = app
        self.token = token.encode()
        self.open_paths = open_paths

    async def __call__(self, scope: Scope, receive: Receive, send: Send) -> None:
        if scope["type"] != "http" or scope["path"] in self.open_paths:
            await self.app(scope, receive, send)
            return
        given = b""
        for name, value in scope["headers"]:
            if name == b"authorization":
                given = value
                break
        scheme, _, credentials = given.partition(b" ")
        # the scheme is case-insensitive (RFC 7235); the token compared in constant time
        ok = hmac.compare_digest(credentials.strip(), self.token)
        if not (ok and scheme.lower() == b"bearer"):
            await send_error(send, 401, "unauthorized", UNAUTHORIZED,
                             [(b"www-authenticate", b"Bearer")])
            return
        await self.app(scope, receive, send)


class BodyLimitMiddleware:
    """Refuse oversized bodies from Content-Length at once (nothing is read), and count
    streamed bytes (chunked uploads, lying Content-Length) as the app reads them."""

    def __init__(self, app: ASGIApp, limit_for: Callable[[str], int]) -> None:
        self.app = app
        self.limit_for = limit_for

    async def __call__(self, scope: Scope, receive: Receive, send: Send) -> None:
        if scope["type"] != "http":
            await self.app(scope, receive, send)
            return
        limit = self.limit_for(scope["path"])
        length = dict(scope["headers"]).get(b"content-length")
        if length is not None:
            if not length.isdigit():
                await send_error(send, 400, "bad_input", "Content-Length is not a number")
                return
            if int(length) > limit:
                await send_error(send, 413, "too_large",
                                 f"request body of {int(length)} bytes is over this server's "
                                 f"{limit}-byte limit for this route (see /info limits)")
                return
        received = 0

        async def counting_receive() -> Message:
            nonlocal received
            message = await receive()
            if message["type"] == "http.request":
                received += len(message.get("body", b""))
                if received > limit:
                    raise BodyTooLarge(limit)
            return message

        await self.app(scope, counting_receive, send)


class AccessLogMiddleware:
    """One line per request: method, path, status, time. Never headers (the token) nor
    bodies (image data)."""

    def __init__(self, app: ASGIApp) -> None:
        self.app = app

    async def __call__(self, scope: Scope, receive: Receive, send: Send) -> None:
        if scope["type"] != "http":
            await self.app(scope, receive, send)
            return
        t0 = time.perf_counter()
        status = 0

        async def send_status(message: Message) -> None:
            nonlocal status
            if message["type"] == "http.response.start":
                status = message["status"]
            await send(message)

        try:
            await self.app(scope, receive, send_status)
        finally:
            quiet = scope["method"] == "GET" and status < 400  # polls would flood the log
            log.log(logging.DEBUG if quiet else logging.INFO, "%s %s %d %.1f ms",
                    scope["method"], scope["path"], status, (time.perf_counter() - t0) * 1e3)
