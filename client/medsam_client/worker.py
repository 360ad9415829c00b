"""Start and look after a local medsam-server process (the "local worker" of MedSAMSegment).

The worker runs in its own Python (the one with torch) and listens on 127.0.0.1 only,
on a free port, with a random token, so two Slicer instances on one machine never use
each other's server: a port another launcher's server holds answers /info with 401 to
our token, and we move on to another port.
"""

from __future__ import annotations

import atexit
import logging
import os
import secrets
import socket
import subprocess
import threading
import time
from collections.abc import Callable, Mapping, Sequence
from pathlib import Path

from .client import MedSAMClient, MedSAMError

log = logging.getLogger(__name__)

TAIL_LINES = 25
TOKEN_ENV = "MEDSAM_TOKEN"  # what ``medsam-server serve`` reads when --token is absent
# What "address already in use" looks like from uvicorn/asyncio on Linux, macOS, Windows.
_PORT_TAKEN_MARKERS = ("address already in use", "errno 98", "errno 48", "10048",
                       "only one usage of each socket address")
# Slicer's own Python settings would break a different interpreter.
_DROP_ENV = ("PYTHONHOME", "PYTHONPATH", "PYTHONSTARTUP", "PYTHONNOUSERSITE")


def _free_port(host: str) -> int:
    """A port the OS says is free right now (another process may still take it first)."""
    with socket.socket(socket.AF_INET, socket.SOCK_STREAM) as s:
        s.bind((host, 0))
        return int(s.getsockname()[1])


class LocalWorker:
    """One ``medsam-server serve`` child process.

    ``python``: interpreter with medsam-server installed; ``log_path``: the server's
    stdout/stderr are appended there. ``on_message`` hears about restarts (default: log).
    """

    def __init__(self, python: str, checkpoint: str | os.PathLike, *, device: str = "auto",
                 log_path: str | os.PathLike, extra_args: Sequence[str] = (),
                 startup_timeout: float = 180.0, host: str = "127.0.0.1",
                 env: Mapping[str, str] | None = None, port_attempts: int = 5,
                 on_message: Callable[[str], None] | None = None) -> None:
        self.python = str(python)
        self.checkpoint = str(checkpoint)
        self.device = device
        self.log_path = Path(log_path)
        self.extra_args = [str(a) for a in extra_args]
        self.startup_timeout = float(startup_timeout)
        self.host = host
        self.port_attempts = port_attempts
        self.on_message = on_message or log.warning
        self._env = dict(env or {})
        self.token = secrets.token_urlsafe(32)
        self.port: int | None = None
        self.restarts = 0
        self._log_offset = 0  # where this run's lines start in the log
        self._proc: subprocess.Popen | None = None
        self._client: MedSAMClient | None = None
        self._lock = threading.RLock()

    # ---- state ---------------------------------------------------------------------
    @property
    def url(self) -> str:
        if self.port is None:
            raise MedSAMError("the local medsam-server has not been started")
        return f"http://{self.host}:{self.port}"

    @property
    def pid(self) -> int | None:
        return self._proc.pid if self._proc is not None else None

    def is_running(self) -> bool:
        return self._proc is not None and self._proc.poll() is None

    def client(self) -> MedSAMClient:
        """A client for the running server (the same object until the URL changes)."""
        with self._lock:
            if self._client is None or self._client.url != self.url:
                self._client = MedSAMClient(self.url, self.token)
            return self._client

    # ---- lifecycle -----------------------------------------------------------------
    def start(self) -> LocalWorker:
        """Start the server and wait until it answers /health and /info with our token."""
        with self._lock:
            if not self.is_running():
                self._launch(prefer_port=None)
                atexit.register(self.stop)
            return self

    def ensure_running(self) -> bool:
        """Restart the server once if it died; returns True if it was restarted.

        The restart keeps the port and token when it can, so existing clients keep
        working (their sessions are gone: they get "upload again" errors). A second
        death raises MedSAMError.
        """
        with self._lock:
            if self._proc is None:
                if self.restarts:  # the one restart itself failed: don't loop on it
                    raise MedSAMError("the local medsam-server could not be restarted; see "
                                      f"{self.log_path}", code="worker_died")
                self.start()
                return False
            rc = self._proc.poll()
            if rc is None:
                return False
            tail = self._tail(self._log_offset)
            if self.restarts >= 1:
                raise MedSAMError(
                    f"the local medsam-server stopped again (exit status {rc}) after one "
                    f"restart; not restarting it. Last lines of {self.log_path}:\n{tail}",
                    code="worker_died")
            self.restarts += 1
            self.on_message(f"the local medsam-server stopped unexpectedly (exit status {rc}); "
                            "restarting it (its sessions are lost, volumes will be re-sent)")
            self._proc = None
            self._launch(prefer_port=self.port)
            return True

    def stop(self) -> None:
        """Terminate the server (kill it if it does not exit within 10 s)."""
        with self._lock:
            proc, self._proc = self._proc, None
            self.restarts = 0  # a deliberate stop: the next start is a fresh one
            atexit.unregister(self.stop)
            if self._client is not None:
                self._client.close()
                self._client = None
            if proc is not None:
                _terminate(proc)

    def __enter__(self) -> LocalWorker:
        return self.start()

    def __exit__(self, *exc: object) -> None:
        self.stop()

    # ---- internals -----------------------------------------------------------------
    def _command(self, port: int) -> list[str]:
        # the token goes in MEDSAM_TOKEN, not argv: any local user can read a command line.
        # --parent-pid: the server exits by itself if we (Slicer) crash or are killed
        return [self.python, "-m", "medsam_server.cli", "serve", "--host", self.host,
                "--port", str(port), "--checkpoint", self.checkpoint,
                "--device", self.device, "--parent-pid", str(os.getpid()), *self.extra_args]

    def _launch(self, prefer_port: int | None) -> None:
        for attempt in range(self.port_attempts):
            port = prefer_port if attempt == 0 and prefer_port else _free_port(self.host)
            if self._try_start(port):
                return
            log.info("port %d was taken before medsam-server could bind it; retrying", port)
        raise MedSAMError(f"could not start medsam-server: {self.port_attempts} free ports in a "
                          "row were taken by other programs before it could bind them",
                          code="startup_failed")

    def _try_start(self, port: int) -> bool:
        """Start on ``port``; False if the port turned out to be taken (try another)."""
        self.log_path.parent.mkdir(parents=True, exist_ok=True)
        cmd = self._command(port)
        env = {k: v for k, v in os.environ.items() if k not in _DROP_ENV}
        env.update(self._env)
        env["PYTHONUNBUFFERED"] = "1"  # log lines reach the file as they happen
        env[TOKEN_ENV] = self.token
        with open(self.log_path, "ab") as logf:
            self._log_offset = logf.tell()
            shown = " ".join(cmd).replace(self.token, "***")
            logf.write(f"\n=== {time.strftime('%Y-%m-%d %H:%M:%S')} starting: {shown}\n".encode())
            logf.flush()
            try:
                proc = subprocess.Popen(
                    cmd, stdin=subprocess.DEVNULL, stdout=logf, stderr=subprocess.STDOUT,
                    env=env, creationflags=getattr(subprocess, "CREATE_NO_WINDOW", 0))
            except OSError as exc:
                raise MedSAMError(f"cannot run {self.python}: {exc}; check the Python "
                                  "interpreter set for the local server",
                                  code="startup_failed") from None
        # the server listens before it loads the model: a probe then waits, so keep it short
        probe = MedSAMClient(f"http://{self.host}:{port}", self.token, timeout=(1.0, 2.0),
                             retries=0)
        deadline = time.monotonic() + self.startup_timeout
        try:
            while True:
                rc = proc.poll()
                if rc is not None:
                    tail = self._tail(self._log_offset)
                    if any(m in tail.lower() for m in _PORT_TAKEN_MARKERS):
                        return False
                    raise MedSAMError(f"medsam-server exited with status {rc} while starting. "
                                      f"Last lines of {self.log_path}:\n{tail}",
                                      code="startup_failed")
                if time.monotonic() > deadline:
                    _terminate(proc)
                    raise MedSAMError(
                        f"medsam-server did not answer within {self.startup_timeout:g} s of "
                        f"starting. Last lines of {self.log_path}:\n{self._tail(self._log_offset)}",
                        code="startup_timeout")
                try:
                    probe.health()
                except MedSAMError:  # not up yet, or a foreign program answers: wait
                    time.sleep(0.2)
                    continue
                try:
                    probe.info()  # our token: proves this is our server, not a neighbour's
                except MedSAMError as exc:
                    if exc.code in ("unreachable", "timeout"):
                        time.sleep(0.2)
                        continue
                    _terminate(proc)
                    if exc.status == 401:  # another launcher's server holds this port
                        return False
                    raise MedSAMError(f"the medsam-server just started does not work: {exc}. "
                                      f"Last lines of {self.log_path}:\n"
                                      f"{self._tail(self._log_offset)}",
                                      exc.status, exc.code) from None
                self._proc, self.port = proc, port
                return True
        except BaseException:
            if self._proc is not proc and proc.poll() is None:
                _terminate(proc)
            raise
        finally:
            probe.close()

    def _tail(self, offset: int) -> str:
        try:
            with open(self.log_path, "rb") as f:
                f.seek(offset)
                text = f.read().decode("utf-8", errors="replace")
        except OSError as exc:
            return f"(cannot read the log: {exc})"
        lines = [ln for ln in text.splitlines() if ln.strip()]
        return "\n".join(lines[-TAIL_LINES:]).replace(self.token, "***")


def _terminate(proc: subprocess.Popen, grace: float = 10.0) -> None:
    if proc.poll() is not None:
        return
    try:
        proc.terminate()
        proc.wait(grace)
    except subprocess.TimeoutExpired:
        proc.kill()
        proc.wait(5)
    except ProcessLookupError:
        pass
