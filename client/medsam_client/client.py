"""HTTP client for medsam-server: what MedSAMSegment (inside 3D Slicer) talks through.

numpy + requests only (zstandard when present), no torch, no slicer. Every failure —
unreachable server, timeout, HTTP error, malformed answer — is raised as ``MedSAMError``
with a message a user can act on, the server's own message included.

Retries: only idempotent calls (GET, DELETE) are retried, on connection failures and
502/503/504. POST/PUT are never retried: a request may have reached the server even
when the connection broke, and a second prompt or propagation is not harmless.

Versions: the client refuses a server of another protocol major version, and otherwise
uses what the server's ``Info.capabilities`` lists: against an older server a missing
feature is switched off with a message (``notes``; ``undo`` then raises code
"unsupported"), and an older client simply never asks a newer server for new features.

Leases: sessions this client creates on a server with the "lease" capability are kept by
a background thread that heartbeats each of them every third of its lease timeout, on
its own HTTP connection (a long poll never delays it). When the client is closed, or its
process dies, the heartbeats stop and the server frees the sessions within the lease.
"""

from __future__ import annotations

import ipaddress
import logging
import threading
import time
import urllib.parse
import weakref
from collections.abc import Callable, Sequence
from typing import Any

import numpy as np
import requests

from . import protocol as P
from .errors import (  # noqa: F401  (SESSION_GONE, JOB_GONE: part of this module's API)
    JOB_GONE,
    SESSION_GONE,
    UNSUPPORTED,
    MedSAMError,
    error_from_response,
    reason,
)
from .heartbeat import Heartbeat
from .phases import WITHOUT_PHASES, PhasesMixin
from .volumes import SessionHandle, volume_meta, window_tuple, wire_volume

log = logging.getLogger(__name__)
Timeout = tuple[float, float]
TERMINAL_JOB_STATES = ("done", "cancelled", "failed")
_RETRY_STATUS = (502, 503, 504)
# what a missing capability switches off, said to the user (MedSAMClient.notes)
_WITHOUT = {
    "lease": "has no session leases: if this program crashes, its sessions stay on the "
             "server until they expire",
    "undo": "cannot take back prompts (undo is switched off)",
    "focus": "does not encode slices ahead while you scroll (boxes wait for the encoder)",
    "time": "has no time sessions: grey frames go as a volume (frame = slice k), colour "
            "frames cannot be sent",
    "phases": WITHOUT_PHASES,
}


def slice_mask(update: P.SliceUpdate) -> np.ndarray:
    """The full 2D bool mask of a slice update (the wire carries it cropped)."""
    try:
        return P.uncrop_mask(update.mask)
    except P.CodecError as exc:
        raise MedSAMError(f"medsam-server sent an undecodable slice mask: {exc}") from None


def _is_loopback(url: str) -> bool:
    host = urllib.parse.urlsplit(url).hostname or ""
    if host == "localhost":
        return True
    try:
        return ipaddress.ip_address(host).is_loopback
    except ValueError:
        return False


class MedSAMClient(PhasesMixin):
    """One medsam-server at ``url`` (e.g. ``http://127.0.0.1:8765``), bearer ``token``.

    ``timeout`` = (connect, read) seconds for every call; uploads read up to
    ``upload_timeout`` seconds (the server decompresses, hashes and windows the volume).
    Thread-safe enough for one propagation thread beside GUI-thread calls.
    """

    def __init__(self, url: str, token: str | None, *, timeout: Timeout = (5.0, 60.0),
                 upload_timeout: float = 300.0, retries: int = 2) -> None:
        self.url = url.rstrip("/")
        self.timeout = (float(timeout[0]), float(timeout[1]))
        self.upload_timeout = float(upload_timeout)
        self.retries = retries
        self._http = requests.Session()
        # A proxy from the environment (HTTP_PROXY) must not capture 127.0.0.1 traffic.
        self._http.trust_env = not _is_loopback(self.url)
        if token:
            self._http.headers["Authorization"] = f"Bearer {token}"
        self._last: SessionHandle | None = None  # ensure_session's current session
        self._server_encodings: tuple[str, ...] | None = None  # from /info, on first upload
        self._capabilities: frozenset[str] | None = None  # from /info, on first need
        self.notes: list[str] = []  # what is switched off against this server, and why
        self._heartbeat = Heartbeat(self.url, dict(self._http.headers), self._http.trust_env,
                                     self.timeout[0])
        # a client dropped without close() stops heartbeating too (the thread holds no
        # reference to it)
        weakref.finalize(self, self._heartbeat.stop)

    # ---- connection ----------------------------------------------------------------
    def health(self) -> P.Health:
        return self._call(P.Health, "GET", "/health")

    def info(self) -> P.Info:
        """Test the connection and the token, and learn what the server can do: another
        protocol major version is refused; missing capabilities are switched off (``notes``)."""
        info = self._call(P.Info, "GET", "/info")
        if info.protocol != P.PROTOCOL_VERSION:
            older = "this client" if info.protocol > P.PROTOCOL_VERSION else "the server"
            raise MedSAMError(
                f"medsam-server at {self.url} (version {info.version}) speaks protocol "
                f"{info.protocol}, this client speaks {P.PROTOCOL_VERSION}: different major "
                f"versions do not work together; update {older}", code="protocol_mismatch")
        self._server_encodings = tuple(info.encodings)
        capabilities = frozenset(info.capabilities or ())
        if capabilities != self._capabilities:
            self._capabilities = capabilities
            self.notes = [f"medsam-server {info.version} at {self.url} {_WITHOUT[c]}; update "
                          "the server to use it" for c in P.CAPABILITIES
                          if c in _WITHOUT and c not in capabilities]
            for note in self.notes:
                log.warning("%s", note)
        return info

    def leased_sessions(self) -> list[str]:
        """Ids of the sessions this client heartbeats (its leases on the server)."""
        return self._heartbeat.sessions()

    def supports(self, capability: str) -> bool:
        """Whether the server lists ``capability`` (asks /info once)."""
        if self._capabilities is None:
            self.info()
        return capability in (self._capabilities or ())

    def close(self) -> None:
        """Release the HTTP connections and stop heartbeating: the server keeps this
        client's sessions until they are closed, expire, or their lease lapses."""
        self._heartbeat.stop()
        self._http.close()

    def __enter__(self) -> MedSAMClient:
        return self

    def __exit__(self, *exc: object) -> None:
        self.close()

    # ---- sessions ------------------------------------------------------------------
    def upload(self, volume: np.ndarray, *, spacing: Sequence[float] = (1.0, 1.0, 1.0),
               origin: Sequence[float] = (0.0, 0.0, 0.0),
               direction: Sequence[float] = (1, 0, 0, 0, 1, 0, 0, 0, 1),
               modality: P.Modality = "ct", window: Sequence[float] | None = None,
               name: str = "", time: bool = False) -> SessionHandle:
        """Create a session and send the raw voxels (the server windows them).

        ``time``: frames along the first axis, grey (frames, rows, columns) or uint8 RGB
        (frames, rows, columns, 3) with modality "none", in one upload; prompt and propagate
        them along axis "t". A server without the "time" capability gets grey frames as a
        volume (axis "t" is sent as "k"); colour frames need the capability."""
        vol = wire_volume(volume, time)
        return self._upload(vol, volume_meta(vol, P.sha256_array(vol), spacing, origin,
                                              direction, modality, window, name, time))

    def ensure_session(self, volume: np.ndarray, **kwargs: Any) -> SessionHandle:
        """Upload ``volume`` unless the last session still holds the same voxels and settings.

        Same keyword arguments as ``upload``. A server restart or expiry (session gone)
        and a changed volume, modality or window all lead to a fresh upload; the
        replaced session is closed.
        """
        vol = wire_volume(volume, kwargs.get("time", False))
        meta = volume_meta(vol, P.sha256_array(vol), **kwargs)
        last = self._last
        if last is not None and (last.volume_sha256, last.modality, last.window, last.time) == (
                meta.sha256, meta.modality, window_tuple(meta.window), meta.time):
            try:
                info = self.session_info(last)
                if info.state == "ready" and info.volume_sha256 == meta.sha256:
                    return last
            except MedSAMError as exc:
                if exc.code != SESSION_GONE:
                    raise
        if last is not None:
            self.close_session(last, quiet=True)
        self._last = self._upload(vol, meta)
        return self._last

    def _upload(self, vol: np.ndarray, meta: P.VolumeMeta) -> SessionHandle:
        meta.encoding = self._upload_encoding()
        meta.lease = self.supports("lease")
        if meta.time and not self.supports("time"):
            if len(meta.shape) == 4:
                raise MedSAMError(f"{self.url} {_WITHOUT['time']}; update medsam-server to "
                                  "segment colour frames", code=UNSUPPORTED)
            meta.time = False  # grey frames: a volume whose slices k are the frames
        body = P.to_json(meta)
        for name in ("lease", "time", "phases", "key_phase"):
            if not body[name]:
                del body[name]  # a server without the capability never sees the field
        created = self._call(P.SessionInfo, "POST", "/sessions", json=body)
        if created.lease_timeout_s:  # from now on, until it is closed
            self._heartbeat.add(created.session_id, created.lease_timeout_s)
        le = np.ascontiguousarray(vol).astype(vol.dtype.newbyteorder("<"), copy=False)
        body = P.compress(le.tobytes(), meta.encoding)
        timeout = (self.timeout[0], max(self.timeout[1], self.upload_timeout))
        try:
            info = self._call(P.SessionInfo, "PUT", f"/sessions/{created.session_id}/volume",
                              data=body, headers={"Content-Type": "application/octet-stream"},
                              timeout=timeout)
        except MedSAMError:  # don't leave an empty session holding a slot on the server
            self.close_session(created.session_id, quiet=True)
            raise
        return SessionHandle(info.session_id, tuple(info.shape), info.volume_sha256,
                             meta.modality, window_tuple(meta.window), meta.time,
                             meta.key_phase if meta.phases else None)

    def _upload_encoding(self) -> P.Encoding:
        """Our best encoding if the server has it too, else zlib (both always have it)."""
        if self._server_encodings is None:
            self._server_encodings = tuple(self.info().encodings)
        best = P.best_encoding()
        return best if best in self._server_encodings else "zlib"

    def session_info(self, session: SessionHandle | str) -> P.SessionInfo:
        return self._call(P.SessionInfo, "GET", f"/sessions/{_sid(session)}")

    def close_session(self, session: SessionHandle | str, *, missing_ok: bool = True,
                      quiet: bool = False) -> None:
        """Free the session on the server; a session already gone counts as closed."""
        sid = _sid(session)
        if self._last is not None and self._last.session_id == sid:
            self._last = None
        self._heartbeat.remove(sid)
        try:
            self._call(P.Deleted, "DELETE", f"/sessions/{sid}")
        except MedSAMError as exc:
            if quiet or (missing_ok and exc.status == 404):
                return
            raise

    # ---- prompts and results -------------------------------------------------------
    def prompt(self, session: SessionHandle | str, object_id: int, axis: P.Axis, index: int,
               box: Sequence[float] | None = None,
               points: Sequence[Sequence[float]] | None = None,
               point_labels: Sequence[int] | None = None,
               mask: np.ndarray | None = None, phase: int | None = None) -> P.SliceUpdate:
        """Prompt one slice; returns that slice's new mask (see ``slice_mask``).
        ``phase``: the phase of a 3D + time session the slice lies in (its key phase)."""
        pts = [[float(x), float(y)] for x, y in (points or [])]
        labels = [int(v) for v in point_labels] if point_labels is not None else [1] * len(pts)
        req = P.PromptRequest(
            object_id=int(object_id), axis=self._wire_axis(axis), index=int(index),
            box=None if box is None else [float(v) for v in box], points=pts,
            point_labels=labels,
            mask=None if mask is None else P.encode_array(np.asarray(mask, dtype=bool)),
            phase=None if phase is None else int(phase))
        body = P.to_json(req)
        if req.phase is None:
            del body["phase"]  # a server without "phases" never sees the field
        return self._call(P.SliceUpdate, "POST", f"/sessions/{_sid(session)}/prompt", json=body)

    def object_mask(self, session: SessionHandle | str, object_id: int,
                    phase: int | None = None) -> np.ndarray:
        """The object's bool mask over the whole volume; of a 3D + time session: in
        ``phase`` (k, j, i), or in every phase (phases, k, j, i) when None."""
        om = self._call(P.ObjectMask, "GET", f"/sessions/{_sid(session)}/objects/{object_id}/mask",
                        params=None if phase is None else {"phase": int(phase)})
        try:
            return P.uncrop_mask(om.mask)
        except P.CodecError as exc:
            raise MedSAMError(f"medsam-server sent an undecodable mask: {exc}") from None

    def delete_object(self, session: SessionHandle | str, object_id: int) -> None:
        self._call(P.Deleted, "DELETE", f"/sessions/{_sid(session)}/objects/{object_id}")

    def undo(self, session: SessionHandle | str, object_id: int) -> P.Undone:
        """Take back the object's last prompt (box, points or mask): its slice and every
        slice changed since are as before it; ``Undone.updates`` carries them (see
        ``slice_mask``). MedSAMError code "unsupported" if the server cannot undo,
        "wrong_state" if the object has no prompt left to take back."""
        if not self.supports("undo"):
            raise MedSAMError(next(n for n in self.notes if "undo" in n), code=UNSUPPORTED)
        return self._call(P.Undone, "POST",
                          f"/sessions/{_sid(session)}/objects/{object_id}/undo")

    def focus(self, session: SessionHandle | str, axis: P.Axis, index: int) -> bool:
        """The server encodes that slice, then its neighbours, while idle (a box there then
        needs only the decoder); answers at once. False, a no-op, against a server
        without the "focus" capability (``notes`` says so)."""
        if not self.supports("focus"):
            return False
        self._call(P.Focused, "POST", f"/sessions/{_sid(session)}/focus",
                   json=P.to_json(P.FocusRequest(self._wire_axis(axis), int(index))))
        return True

    def _wire_axis(self, axis: P.Axis) -> P.Axis:
        """Axis "t" as the server knows it: "k" (the frames' axis) without "time"."""
        return "k" if axis == "t" and not self.supports("time") else axis

    # ---- propagation jobs ----------------------------------------------------------
    def start_propagation(self, session: SessionHandle | str, object_ids: Sequence[int], *,
                          axis: P.Axis | None = None, direction: P.Direction = "both",
                          start: int | None = None, first: int | None = None,
                          last: int | None = None, stop_after_empty: int = 0,
                          converge_iou: float = 0.98) -> str:
        req = P.PropagateRequest(object_ids=[int(o) for o in object_ids],
                                 axis=None if axis is None else self._wire_axis(axis),
                                 direction=direction, start=start, first=first, last=last,
                                 stop_after_empty=stop_after_empty, converge_iou=converge_iou)
        job = self._call(P.JobInfo, "POST", f"/sessions/{_sid(session)}/propagate",
                         json=P.to_json(req))
        return job.job_id

    def poll(self, job_id: str, since: int = 0, wait: float = 0.0) -> P.JobInfo:
        """Job state plus slice updates from ``since`` on; waits up to ``wait`` s for news."""
        timeout = (self.timeout[0], self.timeout[1] + wait)  # the server holds the answer
        return self._call(P.JobInfo, "GET", f"/jobs/{job_id}",
                          params={"since": int(since), "wait": float(wait)}, timeout=timeout)

    def cancel(self, job_id: str) -> P.JobInfo:
        return self._call(P.JobInfo, "POST", f"/jobs/{job_id}/cancel")

    def propagate(self, session: SessionHandle | str, object_ids: Sequence[int], *,
                  axis: P.Axis | None = None, direction: P.Direction = "both",
                  start: int | None = None, first: int | None = None, last: int | None = None,
                  stop_after_empty: int = 0, converge_iou: float = 0.98,
                  on_update: Callable[[P.SliceUpdate], None] | None = None,
                  on_job: Callable[[P.JobInfo], None] | None = None,
                  cancel: threading.Event | None = None, poll_wait: float = 1.0,
                  stall_timeout: float | None = None) -> P.JobInfo:
        """Run a propagation job to its end, calling ``on_update`` for each slice result.

        ``on_job`` hears each poll's JobInfo (state, done/total slices) for a progress bar.
        Setting ``cancel`` asks the server to stop; the job then ends "cancelled". With
        ``stall_timeout``, a job that reports no new slice for that many seconds is
        cancelled and raises MedSAMError (code "stalled"), so a caller never waits forever
        on a stuck server. Returns the final JobInfo with every update received; a failed
        job raises MedSAMError.
        """
        job_id = self.start_propagation(
            session, object_ids, axis=axis, direction=direction, start=start, first=first,
            last=last, stop_after_empty=stop_after_empty, converge_iou=converge_iou)
        received: list[P.SliceUpdate] = []
        since, cancel_sent = 0, False
        last_news = time.monotonic()
        try:
            while True:
                if cancel is not None and cancel.is_set() and not cancel_sent:
                    self.cancel(job_id)
                    cancel_sent = True
                # short waits while cancellable, so a cancel is sent within ~poll_wait
                job = self.poll(job_id, since, poll_wait)
                for update in job.updates:
                    received.append(update)
                    if on_update is not None:
                        on_update(update)
                if on_job is not None:
                    on_job(job)
                since = job.next_since if job.next_since >= since else since + len(job.updates)
                if job.state in TERMINAL_JOB_STATES:
                    break
                now = time.monotonic()
                if job.updates:
                    last_news = now
                elif stall_timeout is not None and now - last_news > stall_timeout:
                    raise MedSAMError(
                        f"medsam-server reported no progress on propagation job {job_id} for "
                        f"{stall_timeout:g} s (state {job.state}); it was cancelled. The server "
                        "may be overloaded or stuck: check its log, then try again.",
                        code="stalled")
        except BaseException:
            # the caller stops listening (error, Ctrl-C): don't leave the server busy
            if not cancel_sent:
                try:
                    self.cancel(job_id)
                except MedSAMError:
                    pass
            raise
        if job.state == "failed":
            err = job.error
            raise MedSAMError(f"propagation failed on the server: "
                              f"{err.message if err else 'no reason given'}",
                              code=err.error if err else "job_failed")
        job.updates = received
        return job

    # ---- transport -----------------------------------------------------------------
    def _call(self, cls: type, method: str, path: str, **kwargs: Any) -> Any:
        data = self._request(method, path, **kwargs)
        try:
            return P.from_json(cls, data)
        except P.CodecError as exc:
            raise MedSAMError(f"medsam-server at {self.url} sent a malformed {cls.__name__} "
                              f"for {method} {path}: {exc}", code="bad_response") from None

    def _request(self, method: str, path: str, *, timeout: Timeout | None = None,
                 **kwargs: Any) -> Any:
        timeout = timeout or self.timeout
        attempts = 1 + (self.retries if method in ("GET", "DELETE") else 0)
        for attempt in range(attempts):
            last_try = attempt == attempts - 1
            try:
                resp = self._http.request(method, self.url + path, timeout=timeout, **kwargs)
            except requests.Timeout:
                raise MedSAMError(f"medsam-server at {self.url} did not answer {method} {path} "
                                  f"within {timeout[1]:g} s (busy or stuck?)",
                                  code="timeout") from None
            except requests.ConnectionError as exc:
                if last_try:
                    raise MedSAMError(f"cannot reach medsam-server at {self.url}: "
                                      f"{reason(exc)}; is it running?",
                                      code="unreachable") from None
                time.sleep(0.25 * 2 ** attempt)
                continue
            except requests.RequestException as exc:
                raise MedSAMError(f"request to medsam-server at {self.url} failed: {exc}",
                                  code="request_failed") from None
            if resp.status_code in _RETRY_STATUS and not last_try:
                time.sleep(0.25 * 2 ** attempt)
                continue
            if resp.status_code >= 400:
                error = error_from_response(self.url, resp, method, path)
                if error.status == 404 and error.code == SESSION_GONE \
                        and path.startswith("/sessions/"):
                    self._heartbeat.remove(path.split("/")[2])  # no more heartbeats for it
                raise error
            try:
                return resp.json()
            except ValueError:
                raise MedSAMError(f"{self.url} answered {method} {path} with something that is "
                                  f"not JSON ({resp.text[:80]!r}); is it a medsam-server?",
                                  status=resp.status_code, code="bad_response") from None
        raise AssertionError("unreachable")  # pragma: no cover


def _sid(session: SessionHandle | str) -> str:
    return session.session_id if isinstance(session, SessionHandle) else str(session)
