"""The lease heartbeat of a ``MedSAMClient``: one daemon thread per client."""

from __future__ import annotations

import logging
import threading

import requests

log = logging.getLogger(__name__)


class Heartbeat:
    """Renews the leases of a client's sessions from one daemon thread.

    Its own ``requests.Session`` (a long poll or an upload on the client's never delays a
    heartbeat) and no reference to the client, so a client that is dropped is collected
    and its finalizer stops this. A session the server no longer has is dropped from the
    set; other failures (server unreachable a moment) are retried at the next beat.
    """

    MIN_INTERVAL_S = 0.1

    def __init__(self, url: str, headers: dict[str, str], trust_env: bool,
                 connect_timeout: float) -> None:
        self.url = url
        self._headers = headers
        self._trust_env = trust_env
        self._connect_timeout = connect_timeout
        self._leases: dict[str, float] = {}  # session id → its lease timeout (s)
        self._lock = threading.Lock()
        self._wake = threading.Event()
        self._stopped = threading.Event()
        self._thread: threading.Thread | None = None

    def add(self, session_id: str, lease_timeout_s: float) -> None:
        with self._lock:
            if self._stopped.is_set():
                return
            self._leases[session_id] = float(lease_timeout_s)
            if self._thread is None:
                self._thread = threading.Thread(target=self._run, name="medsam-heartbeat",
                                                daemon=True)
                self._thread.start()
        self._wake.set()  # a shorter lease may need an earlier beat

    def remove(self, session_id: str) -> None:
        with self._lock:
            self._leases.pop(session_id, None)

    def sessions(self) -> list[str]:
        with self._lock:
            return list(self._leases)

    def stop(self) -> None:
        self._stopped.set()
        self._wake.set()

    def _run(self) -> None:
        http = requests.Session()
        http.trust_env = self._trust_env
        http.headers.update(self._headers)
        try:
            while not self._stopped.is_set():
                with self._lock:
                    leases = dict(self._leases)
                interval = max(self.MIN_INTERVAL_S, min(leases.values(), default=60.0) / 3.0)
                self._wake.wait(interval)
                self._wake.clear()
                if self._stopped.is_set():
                    return
                for sid in leases:
                    self._beat(http, sid, min(interval, 10.0))
        finally:
            http.close()

    def _beat(self, http: requests.Session, sid: str, read_timeout: float) -> None:
        try:
            resp = http.post(f"{self.url}/sessions/{sid}/heartbeat",
                             timeout=(self._connect_timeout, read_timeout))
        except requests.RequestException as exc:
            log.debug("heartbeat of session %s failed: %s", sid, exc)
            return
        if resp.status_code == 404:  # closed or lost: the next call says so to the caller
            self.remove(sid)
        elif resp.status_code >= 400:
            log.debug("heartbeat of session %s: HTTP %d", sid, resp.status_code)
