"""Where the model runs: a private local worker process, or a remote (team) server.

Pure Python on top of medsam_client; every method that talks to a process or the
network is called from the worker thread (tasks.py), never from the GUI thread.
``generation`` counts restarts of the server behind the backend: a session made on
an older generation is gone (server_session.py replays it).
"""

from __future__ import annotations

import os
import threading
from collections.abc import Callable
from dataclasses import dataclass
from pathlib import Path

from medsam_client.client import MedSAMClient, MedSAMError
from medsam_client.worker import LocalWorker


@dataclass(frozen=True)
class ServerReport:
    """What "Test connection" shows."""

    url: str
    version: str
    device: str
    model: str
    checkpoint_sha256: str
    sessions: int
    notes: tuple[str, ...] = ()  # features switched off against an older server, and why
    precision: str = ""  # fp32 or bf16 (empty from servers before precisions)
    kernels: str = ""  # CPU kernels: onednn or stock (empty from servers before them)

    def summary(self) -> str:
        on = f"{self.device} in {self.precision}" if self.precision else self.device
        if self.kernels and self.kernels != "stock":
            on += f" ({self.kernels} kernels)"
        text = (f"medsam-server {self.version} at {self.url}: model {self.model} on "
                f"{on}, checkpoint sha256 {self.checkpoint_sha256[:12]}…, "
                f"{self.sessions} open session(s)")
        return "\n".join((text, *self.notes))


class Backend:
    """Interface: a client for a server that is up, and a restart counter."""

    generation: int = 0

    def client(self) -> MedSAMClient:  # pragma: no cover - interface
        raise NotImplementedError

    def describe(self) -> str:  # pragma: no cover - interface
        raise NotImplementedError

    def test_connection(self) -> ServerReport:
        client = self.client()
        info = client.info()
        return ServerReport(client.url, info.version, info.device, info.model,
                            info.checkpoint_sha256, info.sessions, tuple(client.notes),
                            info.precision, info.kernels)

    def close(self) -> None:
        """Release what the backend holds (stops a local worker)."""


class RemoteBackend(Backend):
    """A medsam-server run by someone else (a team GPU server), reached by URL + token."""

    def __init__(self, url: str, token: str, *, timeout: tuple[float, float] = (5.0, 60.0)) -> None:
        url = url.strip()
        if not url.startswith(("http://", "https://")):
            raise MedSAMError(f"server URL {url!r} must start with http:// or https://",
                              code="bad_url")
        if not token:
            raise MedSAMError("a remote medsam-server needs its access token (ask its admin)",
                              code="no_token")
        self.url = url.rstrip("/")
        self._client = MedSAMClient(self.url, token, timeout=timeout)

    def client(self) -> MedSAMClient:
        return self._client

    def describe(self) -> str:
        return f"remote server {self.url}"

    def close(self) -> None:
        self._client.close()


class LocalBackend(Backend):
    """A private ``medsam-server serve`` on loopback with a random token (LocalWorker)."""

    def __init__(self, python: str, checkpoint: str | os.PathLike, *, log_path: Path,
                 device: str = "auto", startup_timeout: float = 300.0,
                 on_message: Callable[[str], None] | None = None) -> None:
        if not python:
            raise MedSAMError("no Python interpreter is set for the local MedSAM2 worker; "
                              "install it from the MedSAMSegment module panel", code="no_python")
        if not checkpoint or not Path(checkpoint).is_file():
            raise MedSAMError(f"MedSAM2 checkpoint {checkpoint!s} not found; download it or "
                              "choose the file in the MedSAMSegment module panel",
                              code="no_checkpoint")
        self.worker = LocalWorker(python, checkpoint, device=device, log_path=log_path,
                                  startup_timeout=startup_timeout, on_message=on_message)
        self._lock = threading.Lock()

    @property
    def log_path(self) -> Path:
        return self.worker.log_path

    def client(self) -> MedSAMClient:
        """Start the worker on first use; restart it once if it died (sessions then lost)."""
        with self._lock:
            was_running = self.worker.is_running()
            restarted = self.worker.ensure_running()  # also the first start
            if restarted or not was_running:
                self.generation += 1
            return self.worker.client()

    def running(self) -> bool:
        return self.worker.is_running()

    def describe(self) -> str:
        state = f"running (pid {self.worker.pid}, {self.worker.url})" if self.running() \
            else "not running"
        return f"local worker {state}; log {self.worker.log_path}"

    def close(self) -> None:
        self.worker.stop()
