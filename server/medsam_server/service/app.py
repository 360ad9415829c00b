"""FastAPI routes: HTTP in, ``Service`` calls, protocol messages out. Nothing else.

Every error leaves as ``ErrorBody`` JSON: ``errors.ServiceError`` subclasses map to
their status here, validation errors to 422, codec/prompt/preprocess errors to 400,
anything unexpected to a 500 that names no internals.
"""

# No ``from __future__ import annotations``: FastAPI reads the route signatures at run
# time, and they refer to names local to create_app.
import asyncio
import logging
from collections.abc import Callable
from typing import Annotated

from fastapi import APIRouter, Depends, FastAPI, Query, Request
from fastapi.concurrency import run_in_threadpool
from fastapi.exceptions import RequestValidationError
from fastapi.responses import JSONResponse
from fastapi.security import HTTPBearer
from medsam_client.protocol import (
    CodecError,
    Deleted,
    ErrorBody,
    Focused,
    FocusRequest,
    Health,
    Info,
    JobInfo,
    Lease,
    ObjectMask,
    PromptRequest,
    PropagateRequest,
    SessionInfo,
    SliceUpdate,
    Undone,
    VolumeMeta,
    array_nbytes,
)
from starlette.exceptions import HTTPException as StarletteHTTPException

from .. import __version__
from ..engine import Engine, PreprocessError, PromptError
from . import errors
from .config import ServiceConfig
from .jobs import Job
from .middleware import AccessLogMiddleware, BodyLimitMiddleware, TokenMiddleware
from .operations import Service
from .sessions import ServiceSession

log = logging.getLogger(__name__)

STATUS = {
    errors.BadInput: 400, errors.Unauthorized: 401, errors.NotFound: 404,
    errors.WrongState: 409, errors.TooLarge: 413, errors.TooManySessions: 429,
    errors.Unavailable: 503, errors.OutOfMemory: 507,
}
CODE_FOR_STATUS = {400: "bad_input", 401: "unauthorized", 404: "not_found",
                   405: "method_not_allowed", 409: "wrong_state", 413: "too_large",
                   422: "invalid_request", 429: "too_many_sessions", 503: "unavailable",
                   507: "out_of_memory"}


def _error(status: int, code: str, message: str, headers: dict | None = None) -> JSONResponse:
    return JSONResponse({"error": code, "message": message}, status_code=status,
                        headers=headers)


def _install_error_handlers(app: FastAPI) -> None:
    async def service_error(request: Request, exc: errors.ServiceError) -> JSONResponse:
        status = next(code for cls, code in STATUS.items() if isinstance(exc, cls))
        headers = {"WWW-Authenticate": "Bearer"} if status == 401 else None
        return _error(status, exc.code, exc.message, headers)

    async def input_error(request: Request, exc: Exception) -> JSONResponse:
        return _error(400, "bad_input", str(exc))

    async def validation_error(request: Request, exc: RequestValidationError) -> JSONResponse:
        # where and what, never the input itself (it may be megabytes of base64)
        problems = [f"{'.'.join(str(p) for p in e.get('loc', ()))}: {e.get('msg', 'invalid')}"
                    for e in exc.errors()[:5]]
        more = len(exc.errors()) - len(problems)
        return _error(422, "invalid_request", "; ".join(problems) + (f" (+{more} more)"
                                                                     if more > 0 else ""))

    async def http_error(request: Request, exc: StarletteHTTPException) -> JSONResponse:
        message = exc.detail if isinstance(exc.detail, str) else "request refused"
        if exc.status_code == 404 and message == "Not Found":
            message = f"no route {request.method} {request.url.path}; see /openapi.json"
        code = CODE_FOR_STATUS.get(exc.status_code, "http_error")
        return _error(exc.status_code, code, message, getattr(exc, "headers", None))

    async def internal_error(request: Request, exc: Exception) -> JSONResponse:
        log.error("unexpected error on %s %s", request.method, request.url.path,
                  exc_info=(type(exc), exc, exc.__traceback__))
        return _error(500, "internal", "internal server error; the server log has the details")

    app.add_exception_handler(errors.ServiceError, service_error)
    for cls in (CodecError, PromptError, PreprocessError):
        app.add_exception_handler(cls, input_error)
    app.add_exception_handler(RequestValidationError, validation_error)
    app.add_exception_handler(StarletteHTTPException, http_error)
    app.add_exception_handler(Exception, internal_error)


def create_app(config: ServiceConfig, engine: Engine | Callable[[], Engine], *,
               worker_thread: bool = True) -> FastAPI:
    """The service app; starts its session sweeper and (``worker_thread``) model worker
    threads at once; ``app.state.service.close()`` stops them."""
    service = Service(config, engine if isinstance(engine, Engine) else engine())
    app = FastAPI(title="medsam-server", version=__version__, docs_url=None, redoc_url=None,
                  openapi_url=None, swagger_ui_oauth2_redirect_url=None)
    app.state.service = service
    _install_error_handlers(app)
    app.add_middleware(BodyLimitMiddleware, limit_for=lambda path: (
        config.max_upload_bytes if path.endswith("/volume") else config.json_limit_bytes))
    # outside the body limit: a stranger's request is refused before any byte is read
    app.add_middleware(TokenMiddleware, token=config.token, open_paths=frozenset({"/health"}))
    app.add_middleware(AccessLogMiddleware)

    bearer = HTTPBearer(auto_error=False, description="the token the server was started with")

    def session_dep(sid: str) -> ServiceSession:
        return service.sessions.get(sid)  # work: renews the idle clock and the lease

    def session_read_dep(sid: str) -> ServiceSession:
        return service.sessions.get(sid, work=False)  # renews nothing

    def job_dep(jid: str) -> Job:
        return service.jobs.get(jid)

    SessionDep = Annotated[ServiceSession, Depends(session_dep)]
    SessionReadDep = Annotated[ServiceSession, Depends(session_read_dep)]
    JobDep = Annotated[Job, Depends(job_dep)]

    @app.get("/health", response_model=Health)
    async def health() -> Health:
        return Health("ok", __version__)

    # documented error answers (all ErrorBody), so the schema tells clients the truth
    # TokenMiddleware enforces the token before any body is read; this dependency only
    # declares bearer auth in the OpenAPI schema
    api = APIRouter(dependencies=[Depends(bearer)], responses={
        status: {"model": ErrorBody, "description": code}
        for status, code in CODE_FOR_STATUS.items() if status != 405})

    @api.get("/openapi.json", include_in_schema=False)
    async def openapi() -> JSONResponse:
        return JSONResponse(app.openapi())

    @api.get("/info", response_model=Info)
    async def info() -> Info:
        return service.info()

    @api.post("/sessions", response_model=SessionInfo)
    async def create_session(meta: VolumeMeta) -> SessionInfo:
        return service.create_session(meta)

    @api.put("/sessions/{sid}/volume", response_model=SessionInfo, openapi_extra={
        "requestBody": {"required": True, "description": "the voxels as VolumeMeta announced",
                        "content": {"application/octet-stream": {
                            "schema": {"type": "string", "format": "binary"}}}}})
    async def upload_volume(request: Request, s: SessionDep) -> SessionInfo:
        meta = s.meta
        length = request.headers.get("content-length")
        if meta.encoding == "raw" and length is not None \
                and int(length) != array_nbytes(meta.shape, meta.dtype):
            raise errors.BadInput(f"raw body of {length} bytes, but dtype {meta.dtype} and shape "
                                  f"{meta.shape} need {array_nbytes(meta.shape, meta.dtype)}")
        # before reading a big body: one upload at a time, its memory reserved
        service.sessions.begin_upload(s)
        try:
            body = bytearray()
            async for chunk in request.stream():  # BodyLimitMiddleware counts these bytes
                body += chunk
            return await run_in_threadpool(service.upload, s, body, begun=True)
        finally:
            service.sessions.end_upload(s)

    @api.get("/sessions/{sid}", response_model=SessionInfo)
    async def get_session(s: SessionReadDep) -> SessionInfo:
        return service.session_info(s)  # the time left, as it is: a read renews nothing

    @api.post("/sessions/{sid}/heartbeat", response_model=Lease)
    async def heartbeat(s: SessionReadDep) -> Lease:
        return service.heartbeat(s)  # the lease only: a heartbeat is no work

    @api.delete("/sessions/{sid}", response_model=Deleted)
    async def delete_session(s: SessionDep) -> Deleted:
        return service.delete_session(s)

    @api.post("/sessions/{sid}/prompt", response_model=SliceUpdate)
    async def prompt(req: PromptRequest, s: SessionDep) -> SliceUpdate:
        # decoding a mask prompt is CPU work: not on the event loop
        future = await run_in_threadpool(service.prompt, s, req)
        # shield: a client that goes away must not cancel work already accepted
        return await asyncio.shield(asyncio.wrap_future(future))

    @api.post("/sessions/{sid}/propagate", response_model=JobInfo)
    async def propagate(req: PropagateRequest, s: SessionDep) -> JobInfo:
        return await asyncio.shield(asyncio.wrap_future(service.propagate(s, req)))

    @api.post("/sessions/{sid}/focus", response_model=Focused, status_code=202)
    async def focus(req: FocusRequest, s: SessionDep) -> Focused:
        # queued, not run: answers at once; a request of the client, so work (focus.py)
        return service.focus(s, req)

    @api.get("/sessions/{sid}/objects/{oid}/mask", response_model=ObjectMask)
    def object_mask(oid: int, s: SessionDep,
                    phase: int | None = None) -> ObjectMask:  # sync: runs in the threadpool
        return service.object_mask(s, oid, phase)  # phase: capability "phases"

    @api.post("/sessions/{sid}/objects/{oid}/undo", response_model=Undone)
    async def undo(oid: int, s: SessionDep) -> Undone:
        return await asyncio.shield(asyncio.wrap_future(service.undo(s, oid)))

    @api.delete("/sessions/{sid}/objects/{oid}", response_model=Deleted)
    async def delete_object(oid: int, s: SessionDep) -> Deleted:
        return await asyncio.shield(asyncio.wrap_future(service.delete_object(s, oid)))

    @api.get("/jobs/{jid}", response_model=JobInfo)
    async def job_status(job: JobDep, since: Annotated[int, Query(ge=0)] = 0,
                         wait: Annotated[float, Query(ge=0)] = 0.0) -> JobInfo:
        job.info(since)  # a bad ``since`` fails now, not after the wait
        service.sessions.touch(job.session_id)  # its client is polling: alive, and at work
        await job.wait(since, min(wait, config.max_wait_s))
        service.sessions.touch(job.session_id)
        return job.info(since)

    @api.post("/jobs/{jid}/cancel", response_model=JobInfo)
    async def cancel_job(job: JobDep) -> JobInfo:
        job.cancel()
        return job.info(len(job.updates))

    app.include_router(api)
    service.start(worker_thread)
    return app
