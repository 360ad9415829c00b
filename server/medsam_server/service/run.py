"""``medsam-server serve``: load the model once, warm it up, then serve it over HTTP (uvicorn).

Warm start: before the server answers anything (``/health`` included), one dummy prompt
and one tracking step run on the model's device, so the lazy work of a first call (CUDA
context and cuDNN plans, the allocator's first blocks, oneDNN primitives on CPU) is not
paid by the first user's first box. It leaves no state behind: results are the same.
"""

from __future__ import annotations

import argparse
import dataclasses
import ipaddress
import logging
import os
import signal
import socket
import sys
import threading
import time
from collections.abc import Callable
from pathlib import Path

import numpy as np

from ..checkpoints import resolve_checkpoint, sha256_file
from ..engine import DEFAULT_FEATURE_CACHE_BYTES, Engine, Prompt, Session
from .config import MB, ServiceConfig

ENV_TOKEN = "MEDSAM_TOKEN"
log = logging.getLogger("medsam_server.service")


def _fail(message: str) -> int:
    print(f"medsam-server: error: {message}", file=sys.stderr)
    return 2


def _setup_logging(log_file: str | None) -> None:
    fmt = logging.Formatter("%(asctime)s %(levelname)s %(name)s: %(message)s")
    handlers: list[logging.Handler] = [logging.StreamHandler(sys.stderr)]
    if log_file:
        handlers.append(logging.FileHandler(log_file, encoding="utf-8"))
    root = logging.getLogger()
    for h in handlers:
        h.setFormatter(fmt)
        root.addHandler(h)
    root.setLevel(logging.INFO)


def _bind(host: str, port: int) -> socket.socket:
    family, kind, proto, _, addr = socket.getaddrinfo(
        host, port, type=socket.SOCK_STREAM, flags=socket.AI_PASSIVE)[0]
    sock = socket.socket(family, kind, proto)
    sock.setsockopt(socket.SOL_SOCKET, socket.SO_REUSEADDR, 1)
    try:
        sock.bind(addr)
    except OSError:
        sock.close()
        raise
    sock.listen(128)
    return sock


def _is_loopback(sock: socket.socket) -> bool:
    return ipaddress.ip_address(sock.getsockname()[0]).is_loopback


def _checkpoint_sha256(path: Path) -> str:
    """The ``.sha256`` sidecar a verified download leaves, else hash the file (once)."""
    sidecar = path.with_name(path.name + ".sha256")
    try:
        token = sidecar.read_text().split()[0].lower()
        if len(token) == 64:
            return token
    except (OSError, IndexError):
        pass
    return sha256_file(path)


def _pid_alive(pid: int) -> bool:
    """Whether process ``pid`` exists (never signals it: os.kill(pid, 0) kills on Windows)."""
    if os.name == "nt":
        import ctypes

        kernel32 = ctypes.windll.kernel32  # type: ignore[attr-defined]
        handle = kernel32.OpenProcess(0x00100000, False, pid)  # SYNCHRONIZE
        if not handle:
            return kernel32.GetLastError() == 5  # ERROR_ACCESS_DENIED: exists, not ours
        try:
            return kernel32.WaitForSingleObject(handle, 0) == 0x102  # WAIT_TIMEOUT: running
        finally:
            kernel32.CloseHandle(handle)
    try:
        os.kill(pid, 0)
    except ProcessLookupError:
        return False
    except PermissionError:  # exists, owned by someone else
        return True
    return True


def _watch_parent(pid: int, on_gone: Callable[[], None], interval: float = 1.0) -> None:
    """Call ``on_gone`` once (from a daemon thread) when process ``pid`` has exited.

    If ``pid`` is our parent, being re-parented (``os.getppid()`` changes) also counts:
    that catches the parent dying even if its pid is reused at once.
    """
    was_parent = pid == os.getppid()

    def watch() -> None:
        while True:
            time.sleep(interval)
            if (was_parent and os.getppid() != pid) or not _pid_alive(pid):
                log.warning("parent process %d has exited; shutting down", pid)
                on_gone()
                return

    threading.Thread(target=watch, name="medsam-parent-watch", daemon=True).start()


def _exit_like_sigterm() -> None:
    """Take the SIGTERM path: before the handlers are set, that ends the process (the
    model is still loading, nothing to clean up); after, it stops uvicorn and the worker."""
    if os.name == "nt":
        os._exit(1)  # os.kill(own pid, SIGTERM) is TerminateProcess there anyway
    os.kill(os.getpid(), signal.SIGTERM)


def warm_up(engine: Engine) -> float:
    """One prompt and tracking steps on a dummy volume (a throw-away session and cache):
    one slice prompted, then one full encoder batch ahead of the chain (its own kernels
    and plans on a GPU); returns the seconds it took, the device synchronised."""
    t0 = time.perf_counter()
    volume = np.zeros((1 + engine.encode_batch, 64, 64), np.uint8)
    volume[:, 16:48, 16:48] = 200  # something for the decoder and memory encoder to find
    session = Session(engine, volume, undo_depth=0)
    session.add_prompt(1, "k", 0, Prompt(box=(16.0, 16.0, 48.0, 48.0)))
    session.propagate(1, "k", direction="forward")
    if engine.device.type == "cuda":
        import torch

        torch.cuda.synchronize(engine.device)
    return time.perf_counter() - t0


def load_engine(args: argparse.Namespace, checkpoint: Path, budget_bytes: int) -> Engine:
    """The engine ``serve`` runs: device, threads, precision, and ``--compile``."""
    # one session's feature cache may use half the budget; the rest is shared
    engine = Engine.from_checkpoint(checkpoint, args.device, args.threads,
                                    precision=getattr(args, "precision", "auto"),
                                    feature_cache_bytes=min(DEFAULT_FEATURE_CACHE_BYTES,
                                                            budget_bytes // 2))
    if getattr(args, "compile", False):
        compile_encoder(engine)
    return engine


def compile_encoder(engine: Engine) -> None:
    """``serve --compile``: compile the image encoder now, and say loudly (log, ``/info``
    ``compiled``) when it could not be compiled and runs eager instead."""
    log.info("compiling the image encoder (torch.compile, batches of 1 and %d); this takes "
             "a while", engine.encode_batch)
    t0 = time.perf_counter()
    status = engine.compile_encoder()
    if status == "on":
        log.info("image encoder compiled in %.1f s", time.perf_counter() - t0)
    else:
        log.error("--compile: the image encoder could not be compiled, serving it eager: %s",
                  status.removeprefix("failed: "))


def serve(args: argparse.Namespace) -> int:
    token = args.token if args.token is not None else os.environ.get(ENV_TOKEN, "")
    if not token:
        return _fail(f"a bearer token is required: pass --token TOKEN or set {ENV_TOKEN} "
                     "(clients send it as 'Authorization: Bearer TOKEN')")
    if args.max_upload_mb < 1 or args.memory_budget_mb < 1:
        return _fail("--max-upload-mb and --memory-budget-mb must be >= 1")
    parent_pid = getattr(args, "parent_pid", None)
    if parent_pid is not None:
        if parent_pid <= 0:
            return _fail(f"--parent-pid must be a positive process id, not {parent_pid}")
        if not _pid_alive(parent_pid):
            return _fail(f"--parent-pid {parent_pid}: no such process")
    budget = args.memory_budget_mb * MB
    try:  # every limit checked before the port is bound and the model loaded
        config = ServiceConfig(token=token, idle_timeout_s=args.idle_timeout,
                               lease_timeout_s=getattr(args, "lease_timeout", 60.0),
                               replica=getattr(args, "replica", None) or "",
                               memory_budget_bytes=budget,
                               max_upload_bytes=args.max_upload_mb * MB)
    except ValueError as exc:
        return _fail(str(exc))
    try:
        sock = _bind(args.host, args.port)
    except OSError as exc:
        return _fail(f"cannot listen on {args.host}:{args.port}: {exc.strerror or exc}")
    try:
        return _serve(args, config, sock)
    finally:
        sock.close()  # on every path: refused, failed to load, or served and stopped


def _serve(args: argparse.Namespace, config: ServiceConfig, sock: socket.socket) -> int:
    import uvicorn

    from .app import create_app

    if not _is_loopback(sock) and len(config.token) < 16:
        return _fail("off loopback the token must be at least 16 characters "
                     "(e.g. python -c 'import secrets; print(secrets.token_urlsafe())')")
    _setup_logging(args.log_file)
    if getattr(args, "parent_pid", None):  # watch during the model load too
        _watch_parent(args.parent_pid, _exit_like_sigterm)
    checkpoint = resolve_checkpoint(args.checkpoint)  # CheckpointError: the CLI reports it
    engine = load_engine(args, checkpoint, config.memory_budget_bytes)
    warm_s = None
    if getattr(args, "warm_start", True):
        warm_s = warm_up(engine)
        log.info("warm start: a dummy prompt and tracking step on %s took %.2f s",
                 engine.device, warm_s)
    config = dataclasses.replace(config, model_name=checkpoint.stem,
                                 checkpoint_sha256=_checkpoint_sha256(checkpoint),
                                 warm_start_s=warm_s)
    app = create_app(config, engine, worker_thread=False)
    service = app.state.service
    host, port = sock.getsockname()[:2]
    url_host = f"[{host}]" if ":" in host else host

    class Server(uvicorn.Server):
        async def startup(self, sockets: list[socket.socket] | None = None) -> None:
            await super().startup(sockets)
            if self.started:
                print(f"medsam-server listening on http://{url_host}:{port}", file=sys.stderr,
                      flush=True)

    server = Server(uvicorn.Config(
        app, log_config=None, access_log=False, server_header=False, lifespan="off",
        limit_concurrency=256, timeout_keep_alive=5, timeout_graceful_shutdown=5,
        proxy_headers=False))
    log.info("serving %s on %s in %s (%s)%s, memory budget %d MB, idle timeout %g s, lease "
             "timeout %g s", checkpoint.name, engine.device, engine.precision,
             "loopback" if _is_loopback(sock) else "NETWORK",
             f", replica {config.replica}" if config.replica else "", args.memory_budget_mb,
             config.idle_timeout_s, config.lease_timeout_s)

    def run_http() -> None:
        try:
            server.run(sockets=[sock])
        finally:  # cancel jobs and end the model loop on the main thread
            service.close()

    # HTTP on a thread, the model on the main thread (see ModelWorker.run_here); uvicorn
    # leaves signals alone off the main thread, so we route them to it
    for sig in (signal.SIGINT, signal.SIGTERM):
        signal.signal(sig, server.handle_exit)
    http = threading.Thread(target=run_http, name="medsam-http")
    http.start()
    try:
        service.worker.run_here()
    finally:
        server.should_exit = True
        http.join()
    if not server.started:
        return _fail(f"the HTTP server on {args.host}:{port} did not start; see the log above")
    return 0
