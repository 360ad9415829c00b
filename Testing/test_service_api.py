"""The HTTP service end to end: a real ``medsam-server serve`` process driven with requests.

Results must equal, voxel for voxel, what an in-process ``Session`` gives on the same
volume and prompt (same random-weight checkpoint, same thread count).
"""

from __future__ import annotations

import re
import secrets
import subprocess
import sys
import threading
import time
from collections.abc import Iterator
from contextlib import contextmanager
from dataclasses import dataclass, field
from pathlib import Path

import numpy as np
import pytest
import requests
import torch
from conftest import shared
from medsam_client import protocol as P
from medsam_server.checkpoints import sha256_file
from medsam_server.engine.preprocess import window_to_uint8
from medsam_server.engine.prompts import Prompt
from medsam_server.engine.session import Session

KEY, BOX = 3, (45, 27, 104, 85)  # conftest's liver box, key slice 14 of the CT = 3 of the crop
CROP = slice(11, 17)  # 6 slices: the encoder costs ~0.6 s a slice on CPU
FINISHED = ("done", "cancelled", "failed")


@dataclass
class LiveServer:
    url: str
    token: str
    process: subprocess.Popen
    log: list[str] = field(default_factory=list)

    @property
    def headers(self) -> dict[str, str]:
        return {"Authorization": f"Bearer {self.token}"}

    def request(self, method: str, path: str, headers: dict | None = None,
                **kw) -> requests.Response:
        return requests.request(method, self.url + path, headers={**self.headers, **(headers or {})},
                                timeout=120, **kw)

    def get(self, path: str, **kw) -> requests.Response:
        return self.request("GET", path, **kw)

    def post(self, path: str, **kw) -> requests.Response:
        return self.request("POST", path, **kw)

    def put(self, path: str, **kw) -> requests.Response:
        return self.request("PUT", path, **kw)

    def delete(self, path: str, **kw) -> requests.Response:
        return self.request("DELETE", path, **kw)


@contextmanager
def live_server(checkpoint: Path, *extra: str, token: str | None = None) -> Iterator[LiveServer]:
    """``medsam-server serve`` on a free loopback port (``--port 0``, read from its banner);
    a random token unless ``token`` is given (replicas share one)."""
    token = token or secrets.token_urlsafe(24)
    cmd = [sys.executable, "-m", "medsam_server.cli", "serve", "--host", "127.0.0.1",
           "--port", "0", f"--token={token}", "--checkpoint", str(checkpoint), "--device", "cpu",
           "--threads", str(torch.get_num_threads()), *extra]
    proc = subprocess.Popen(cmd, stderr=subprocess.PIPE, stdout=subprocess.DEVNULL, text=True)
    lines: list[str] = []
    url: list[str] = []
    ready = threading.Event()

    def drain() -> None:  # keep reading stderr so the server never blocks on a full pipe
        for line in proc.stderr:  # type: ignore[union-attr]
            lines.append(line)
            if m := re.search(r"listening on (http://\S+)", line):
                url.append(m.group(1))
                ready.set()
        ready.set()

    threading.Thread(target=drain, daemon=True).start()
    try:
        if not ready.wait(180) or not url:
            raise RuntimeError("server did not start:\n" + "".join(lines))
        server = LiveServer(url[0], token, proc, lines)
        assert requests.get(server.url + "/health", timeout=10).json()["status"] == "ok"
        yield server
    finally:
        proc.terminate()
        try:
            proc.wait(20)
        except subprocess.TimeoutExpired:
            proc.kill()
            proc.wait()


def ct_int16() -> np.ndarray:
    from medsam_server.io.volumes import read_volume

    return read_volume(shared("totalseg_ct_abdomen_3mm/example_ct_sm.nii.gz")).array


def open_session(server: LiveServer, volume: np.ndarray, encoding: str = "zstd") -> str:
    meta = P.VolumeMeta(shape=list(volume.shape), dtype=volume.dtype.name,
                        sha256=P.sha256_array(volume), encoding=encoding, window=[40.0, 400.0])
    r = server.post("/sessions", json=P.to_json(meta))
    assert r.status_code == 200, r.text
    info = P.from_json(P.SessionInfo, r.json())
    assert info.state == "awaiting_volume" and info.shape == list(volume.shape)
    body = P.compress(np.ascontiguousarray(volume, volume.dtype.newbyteorder("<")).tobytes(),
                      encoding)
    r = server.put(f"/sessions/{info.session_id}/volume", data=body,
                   headers={"Content-Type": "application/octet-stream"})
    assert r.status_code == 200, r.text
    assert r.json()["state"] == "ready" and r.json()["volume_sha256"] == meta.sha256
    return info.session_id


def poll(server: LiveServer, job_id: str, until=lambda job: job.state in FINISHED,
         since: int = 0, timeout: float = 240) -> tuple[P.JobInfo, list[P.SliceUpdate]]:
    """Long-poll a job from update ``since``, collecting updates, until ``until(job)``."""
    updates: list[P.SliceUpdate] = []
    deadline = time.monotonic() + timeout
    while time.monotonic() < deadline:
        r = server.get(f"/jobs/{job_id}", params={"since": since, "wait": 10})
        assert r.status_code == 200, r.text
        job = P.from_json(P.JobInfo, r.json())
        assert job.next_since == since + len(job.updates) == job.done_slices
        updates += job.updates
        since = job.next_since
        if until(job):
            return job, updates
    raise AssertionError(f"job {job_id} did not get there in {timeout} s")


@pytest.fixture(scope="module")
def server(random_checkpoint: Path) -> Iterator[LiveServer]:
    with live_server(random_checkpoint) as s:
        yield s
    assert not any(s.token in line for line in s.log), "the token leaked into the log"


def test_health_and_info(server: LiveServer, random_checkpoint: Path) -> None:
    r = requests.get(server.url + "/health", timeout=10)
    assert r.status_code == 200 and r.json()["status"] == "ok" and r.json()["version"]
    assert "server" not in r.headers  # no banner for fingerprinting
    info = P.from_json(P.Info, server.get("/info").json())
    assert info.protocol == P.PROTOCOL_VERSION
    assert info.model == random_checkpoint.stem
    assert info.checkpoint_sha256 == sha256_file(random_checkpoint)
    assert info.device == "cpu"
    assert "zstd" in info.encodings and "zlib" in info.encodings
    assert {"volumes", "features", "masks", "undo", "total", "budget"} <= set(info.memory)
    assert info.limits["max_upload_bytes"] == 1024 << 20
    assert info.limits["idle_timeout_s"] == 1800 and info.limits["max_wait_s"] == 30
    assert info.limits["lease_timeout_s"] == 60
    assert set(info.capabilities) == {"lease", "undo", "focus", "time", "phases"}
    assert info.replica == "" and info.warm_start_s > 0  # serve warms up by default
    assert any("warm start: a dummy prompt and tracking step on cpu took" in line
               for line in server.log)
    assert server.get("/docs").status_code == 404 and server.get("/redoc").status_code == 404
    assert "/sessions/{sid}/prompt" in server.get("/openapi.json").json()["paths"]


def test_prompt_and_propagation_match_in_process_session(server: LiveServer, engine) -> None:
    crop = ct_int16()[CROP]
    sid = open_session(server, crop)
    ref = Session(engine, window_to_uint8(crop, "ct", (40.0, 400.0)))

    r = server.post(f"/sessions/{sid}/prompt",
                    json={"object_id": 1, "axis": "k", "index": KEY, "box": list(BOX)})
    assert r.status_code == 200, r.text
    update = P.from_json(P.SliceUpdate, r.json())
    assert (update.object_id, update.axis, update.index) == (1, "k", KEY)
    assert update.mask.full_shape == [101, 122]
    assert all(0 <= o < n for o, n in zip(update.mask.offset, update.mask.full_shape, strict=True))
    ref_prompt = ref.add_prompt(1, "k", KEY, Prompt(box=BOX))
    np.testing.assert_array_equal(P.uncrop_mask(update.mask), ref_prompt.mask)
    assert update.iou == pytest.approx(ref_prompt.iou, abs=1e-5)

    r = server.post(f"/sessions/{sid}/propagate", json={"object_ids": [1], "axis": "k"})
    assert r.status_code == 200, r.text
    job = P.from_json(P.JobInfo, r.json())
    assert job.state in ("queued", "running") and job.total_slices == crop.shape[0]
    assert job.session_id == sid
    job, updates = poll(server, job.job_id)
    assert job.state == "done" and job.error is None
    # forward from the key slice, then backward: every slice reported exactly once
    assert sorted(u.index for u in updates) == list(range(crop.shape[0]))
    assert updates[0].index == KEY

    r = server.get(f"/sessions/{sid}/objects/1/mask")
    assert r.status_code == 200, r.text
    served = P.uncrop_mask(P.from_json(P.ObjectMask, r.json()).mask)
    ref.propagate(1, "k")
    np.testing.assert_array_equal(served, ref.mask(1))  # voxel-exact
    assert served.any()
    for u in updates:  # each update is that slice of the final mask
        np.testing.assert_array_equal(P.uncrop_mask(u.mask), served[u.index])
    assert server.get(f"/sessions/{sid}").json()["objects"] == [1]

    # delete the object, then the session
    assert server.delete(f"/sessions/{sid}/objects/1").json() == {"deleted": "1"}
    r = server.get(f"/sessions/{sid}/objects/1/mask")
    assert r.status_code == 404 and r.json()["error"] == "object_not_found"
    assert server.delete(f"/sessions/{sid}").json() == {"deleted": sid}
    for r in (server.get(f"/sessions/{sid}"),
              server.post(f"/sessions/{sid}/prompt",
                          json={"object_id": 1, "axis": "k", "index": KEY, "box": list(BOX)})):
        assert r.status_code == 404 and r.json()["error"] == "session_gone"
    assert server.get("/info").json()["sessions"] == 0


def test_cancel_midway_then_keep_serving(server: LiveServer) -> None:
    volume = ct_int16()  # 30 slices, none encoded yet: the job takes a while
    sid = open_session(server, volume, encoding="zlib")
    box = {"object_id": 3, "axis": "k", "index": 14, "box": list(BOX)}
    assert server.post(f"/sessions/{sid}/prompt", json=box).status_code == 200
    job = P.from_json(P.JobInfo, server.post(f"/sessions/{sid}/propagate",
                                             json={"object_ids": [3]}).json())
    assert job.total_slices == 30
    job, first = poll(server, job.job_id, until=lambda j: j.done_slices >= 1)
    # while it runs, the session refuses a second job and prompts
    busy = server.post(f"/sessions/{sid}/propagate", json={"object_ids": [3]})
    assert busy.status_code == 409 and busy.json()["error"] == "busy"
    # another user's prompt does not wait for the whole job: it runs between two slices
    other = open_session(server, volume[14:15])
    r = server.post(f"/sessions/{other}/prompt", json={**box, "index": 0})
    assert r.status_code == 200, r.text
    now = server.get(f"/jobs/{job.job_id}").json()
    assert now["state"] == "running" and now["done_slices"] < 30
    r = server.post(f"/jobs/{job.job_id}/cancel")
    assert r.status_code == 200 and r.json()["state"] in ("running", "cancelled")
    job, rest = poll(server, job.job_id, since=len(first))
    assert job.state == "cancelled" and job.error is None
    assert 1 <= job.done_slices < 30
    assert len(first) + len(rest) == job.done_slices
    # the server and the session carry on: a new prompt and a full read still work
    r = server.post(f"/sessions/{sid}/prompt", json={**box, "index": 15})
    assert r.status_code == 200, r.text
    assert server.get(f"/sessions/{sid}/objects/3/mask").status_code == 200
    assert server.get(f"/jobs/{job.job_id}").json()["state"] == "cancelled"
    assert server.delete(f"/sessions/{sid}").status_code == 200
    assert server.delete(f"/sessions/{other}").status_code == 200
    assert server.get("/info").json()["jobs_queued"] == 0  # the refused job left no trace


def test_idle_sessions_expire(random_checkpoint: Path) -> None:
    with live_server(random_checkpoint, "--idle-timeout", "1.5") as server:
        volume = np.arange(2 * 8 * 8, dtype=np.uint8).reshape(2, 8, 8)
        kept, dropped = open_session(server, volume), open_session(server, volume)
        info = server.get("/info").json()
        assert info["sessions"] == 2 and info["memory"]["volumes"] == 2 * volume.size
        box = {"object_id": 1, "axis": "k", "index": 0, "box": [1, 1, 6, 6]}
        assert server.post(f"/sessions/{kept}/prompt", json=box).status_code == 200
        for _ in range(6):  # work keeps a session; reading its state renews nothing
            time.sleep(0.5)
            assert server.get(f"/sessions/{kept}/objects/1/mask").status_code == 200
            r = server.get(f"/sessions/{dropped}")
            if r.status_code == 200:  # counting down, without a lease
                assert r.json()["idle_left_s"] < 1.5 and r.json()["lease_left_s"] is None
        r = server.get(f"/sessions/{dropped}")
        assert r.status_code == 404 and r.json()["error"] == "session_gone"
        assert "expired" in r.json()["message"]
        time.sleep(2.5)
        assert server.get(f"/sessions/{kept}").status_code == 404
        info = server.get("/info").json()
        assert info["sessions"] == 0 and info["memory"]["total"] == 0


def test_memory_budget_evicts_idle_caches_then_idle_sessions(engine) -> None:
    """In-process, no model run: fake cached features, a fake clock for 'least recent'."""
    from medsam_server.service.config import ServiceConfig
    from medsam_server.service.errors import NotFound
    from medsam_server.service.sessions import SessionRegistry

    now = [0.0]
    registry = SessionRegistry(engine, ServiceConfig(token="t", memory_budget_bytes=1 << 20),
                               clock=lambda: now[0])
    def add(shape: tuple[int, int, int] = (3, 256, 256)) -> object:  # 192 kB of voxels
        now[0] += 1.0
        volume = np.zeros(shape, np.uint8)
        s = registry.create(P.VolumeMeta(shape=list(shape), dtype="uint8",
                                         sha256=P.sha256_array(volume), encoding="raw"))
        registry.upload(s, volume.tobytes())
        return s

    a, b = add(), add()
    busy = add()
    claim = busy.work.claim()  # as if a prompt were queued for it
    for s in (a, b, busy):  # 200 kB of "features" each: 1.15 MB in all
        s.session.cache.put(("k", 0), [torch.zeros(51200)])
    now[0] += 1.0
    registry.enforce_budget()
    # the least recently used idle cache went first, and that was enough
    assert (a.session.cache.nbytes, b.session.cache.nbytes) == (0, 204800)
    assert busy.session.cache.nbytes == 204800
    assert registry.memory()["total"] <= 1 << 20

    d = add((3, 300, 300))  # b's cache is not enough: then the least recent idle session
    assert b.session.cache.nbytes == 0
    assert a.closed and a.session is None and not b.closed
    with pytest.raises(NotFound):
        registry.get(a.session_id)
    assert not busy.closed and not d.closed  # at work / just uploaded: never evicted
    assert busy.session.cache.nbytes == 204800
    assert registry.memory()["total"] <= 1 << 20
    claim.release()
