"""Leases and capabilities: a crashed client's session is freed within its lease, a
heartbeating one is kept, and old and new clients and servers work together.

A real ``medsam-server serve`` with a 2 s lease (real CT crop, random weights, CPU). The
killed client is a real process (SIGKILL: no chance to close anything). The old client
is the real 0.1 client, taken from git history; the old server is a stub answering as the
0.1 server did (no capabilities, no lease fields).
"""

from __future__ import annotations

import json
import os
import signal
import subprocess
import sys
import textwrap
import threading
import time
from collections.abc import Iterator
from http.server import BaseHTTPRequestHandler, ThreadingHTTPServer
from pathlib import Path

import numpy as np
import pytest
from conftest import REPO, shared
from medsam_client import protocol as P
from medsam_client.client import UNSUPPORTED, MedSAMClient, MedSAMError
from test_service_api import LiveServer, live_server

LEASE = 2.0  # s: the client heartbeats every 0.67 s
CT = "totalseg_ct_abdomen_3mm/example_ct_sm.nii.gz"
KEY, BOX = 6, (45, 27, 104, 85)  # slice 14 of the CT in the crop 8..20
OLD_CLIENT_COMMIT = "8a80777"  # medsam-client 0.1, before capabilities (server/medsam_client)


@pytest.fixture(scope="module")
def crop(tmp_path_factory: pytest.TempPathFactory) -> Path:
    """12 raw CT slices (int16) around the liver, as a .npy file for client processes."""
    from medsam_server.io.volumes import read_volume

    path = tmp_path_factory.mktemp("leases") / "crop.npy"
    np.save(path, np.ascontiguousarray(read_volume(shared(CT)).array[8:20]))
    return path


@pytest.fixture(scope="module")
def long_crop(crop: Path) -> Path:
    """The crop mirrored to 72 slices (key slice and box unchanged): a propagation from it
    runs far longer than the lease takes to lapse (2 s + a sweep), however fast the kernels
    (0.15-0.5 s a slice on CPU), so the lapse cancels it mid-way."""
    vol = np.load(crop)
    order = [i for _ in range(6) for i in (*range(12), *range(11, -1, -1))][:72]
    path = crop.with_name("long_crop.npy")
    np.save(path, np.ascontiguousarray(vol[order]))
    return path


@pytest.fixture(scope="module")
def server(random_checkpoint: Path) -> Iterator[LiveServer]:
    with live_server(random_checkpoint, "--lease-timeout", str(LEASE), "--no-warm-start") as s:
        yield s


def run_client(script: str, *args: str, pythonpath: str | None = None) -> subprocess.Popen:
    env = dict(os.environ)
    if pythonpath is not None:
        env["PYTHONPATH"] = pythonpath
    return subprocess.Popen([sys.executable, "-c", textwrap.dedent(script), *args], env=env,
                            stdin=subprocess.PIPE, stdout=subprocess.PIPE, text=True)


def wait_for(condition, what: str, timeout: float) -> None:  # noqa: ANN001
    deadline = time.monotonic() + timeout
    while not condition():
        if time.monotonic() > deadline:
            raise AssertionError(f"not within {timeout:g} s: {what}")
        time.sleep(0.1)


KILLED_CLIENT = """
    import sys
    import numpy as np
    from medsam_client.client import MedSAMClient

    url, token, path = sys.argv[1:4]
    client = MedSAMClient(url, token)
    session = client.upload(np.load(path), modality="ct", window=(40.0, 400.0))
    client.prompt(session, 1, "k", 6, box=(45, 27, 104, 85))
    print(session.session_id, flush=True)
    sys.stdin.readline()  # idle: only the heartbeat thread talks to the server
    print(client.start_propagation(session, [1]), flush=True)
    sys.stdin.readline()  # until killed
"""


def test_a_killed_client_frees_its_session_within_the_lease(server: LiveServer,
                                                            long_crop: Path) -> None:
    info = P.from_json(P.Info, server.get("/info").json())
    assert "lease" in info.capabilities and info.limits["lease_timeout_s"] == LEASE
    assert info.warm_start_s is None  # --no-warm-start
    proc = run_client(KILLED_CLIENT, server.url, server.token, str(long_crop))
    try:
        sid = proc.stdout.readline().strip()
        assert sid, "the client process did not start its session"
        # a heartbeating client that does nothing keeps its session, well past the lease
        time.sleep(3 * LEASE)
        state = P.from_json(P.SessionInfo, server.get(f"/sessions/{sid}").json())
        assert state.lease_timeout_s == LEASE and 0 < state.lease_left_s <= LEASE
        assert state.objects == [1]

        proc.stdin.write("\n")
        proc.stdin.flush()
        jid = proc.stdout.readline().strip()
        assert jid.startswith(sid + ".")
        job = server.get(f"/jobs/{jid}", params={"since": 0, "wait": 30}).json()
        assert job["done_slices"] >= 1 and job["state"] == "running"
        os.kill(proc.pid, signal.SIGKILL)
        proc.wait(10)
    finally:
        if proc.poll() is None:
            proc.kill()
            proc.wait()

    # nobody renews it now (GET /sessions/{sid} renews nothing): closed within the lease
    wait_for(lambda: server.get(f"/sessions/{sid}").status_code == 404,
             "the killed client's session closed", 3 * LEASE + 5)
    r = server.get(f"/sessions/{sid}")
    assert r.json()["error"] == "session_gone"
    # its job was cancelled with it: it stops at the end of the slice at hand
    wait_for(lambda: server.get(f"/jobs/{jid}", params={"wait": 5}).json()["state"] != "running",
             "the job stopped", 60)
    job = server.get(f"/jobs/{jid}").json()
    assert job["state"] == "cancelled" and job["done_slices"] < job["total_slices"]
    wait_for(lambda: server.get("/info").json()["memory"]["total"] == 0,
             "its memory freed", 10)
    assert server.get("/info").json()["sessions"] == 0
    assert any(f"session {sid} closed" in line and "lease lapsed" in line for line in server.log)


def test_the_client_keeps_its_leases_and_forgets_closed_sessions(server: LiveServer) -> None:
    volume = np.zeros((2, 16, 16), np.int16)
    with MedSAMClient(server.url, server.token) as client:
        a, b = client.upload(volume), client.upload(volume)
        assert sorted(client.leased_sessions()) == sorted([a.session_id, b.session_id])
        client.close_session(a)
        assert client.leased_sessions() == [b.session_id]
        MedSAMClient(server.url, server.token).close_session(b)  # closed behind its back
        wait_for(lambda: client.leased_sessions() == [], "the heartbeat dropped it", 5)
        r = server.post(f"/sessions/{b.session_id}/heartbeat")
        assert r.status_code == 404 and r.json()["error"] == "session_gone"


# ---------------------------------------------------------------- an old client (0.1)
OLD_CLIENT = """
    import json, sys, time
    import numpy as np
    import medsam_client
    from medsam_client.client import SESSION_GONE, MedSAMClient, MedSAMError

    old, url, token, path, lease = sys.argv[1:6]
    assert medsam_client.__file__.startswith(old), medsam_client.__file__
    client = MedSAMClient(url, token)
    info = client.info()  # the old client checks protocol == 1
    session = client.upload(np.load(path), modality="ct", window=(40.0, 400.0))
    client.prompt(session, 1, "k", 6, box=(45, 27, 104, 85))
    job = client.propagate(session, [1], first=6, last=7)
    mask = client.object_mask(session, 1)
    time.sleep(2 * float(lease))  # no heartbeat: an old client asked for no lease
    alive = client.session_info(session).objects
    client.close_session(session)
    try:
        client.session_info(session)
        code = None
    except MedSAMError as exc:
        code = exc.code
    print(json.dumps({"job": job.state, "voxels": int(mask.sum()), "alive": alive,
                      "gone_is_session_gone": code == SESSION_GONE}))
"""


def test_an_old_client_works_with_a_new_server(server: LiveServer, crop: Path,
                                               tmp_path: Path) -> None:
    old = tmp_path / "old-client"
    package = old / "medsam_client"
    package.mkdir(parents=True)
    for name in ("__init__.py", "protocol.py", "client.py"):
        shown = subprocess.run(["git", "-C", str(REPO), "show",
                                f"{OLD_CLIENT_COMMIT}:server/medsam_client/{name}"],
                               capture_output=True)
        if shown.returncode != 0:
            pytest.skip(f"the 0.1 client (commit {OLD_CLIENT_COMMIT}) is not in this clone's "
                        f"git history: {shown.stderr.decode().strip()[:200]}")
        (package / name).write_bytes(shown.stdout)
    assert "capabilities" not in (package / "protocol.py").read_text()  # really the old one

    proc = run_client(OLD_CLIENT, str(old), server.url, server.token, str(crop), str(LEASE),
                      pythonpath=str(old))
    out, _ = proc.communicate(timeout=300)
    assert proc.returncode == 0, out
    result = json.loads(out.strip().splitlines()[-1])
    assert result == {"job": "done", "voxels": result["voxels"], "alive": [1],
                      "gone_is_session_gone": True}
    assert result["voxels"] > 0


# ---------------------------------------------------------------- an old server (0.1)
class _OldServer(BaseHTTPRequestHandler):
    """Answers as medsam-server 0.1 did: no capabilities, no lease fields, old 404 codes."""

    seen: list[tuple[str, str, bytes]] = []
    protocol = 1

    def _send(self, status: int, body: dict) -> None:
        data = json.dumps(body).encode()
        self.send_response(status)
        self.send_header("Content-Type", "application/json")
        self.send_header("Content-Length", str(len(data)))
        self.end_headers()
        self.wfile.write(data)

    def _answer(self) -> None:
        body = self.rfile.read(int(self.headers.get("Content-Length") or 0))
        self.seen.append((self.command, self.path, body))
        info = {"version": "0.1.0", "protocol": self.protocol, "model": "m",
                "checkpoint_sha256": "", "device": "cpu", "sessions": 0, "jobs_queued": 0,
                "memory": {}, "limits": {}, "encodings": ["zlib", "raw"]}
        session = {"session_id": "s1", "state": "awaiting_volume", "shape": [2, 4, 4],
                   "volume_sha256": "", "objects": [], "idle_timeout_s": 1800.0}
        if (self.command, self.path) == ("GET", "/info"):
            self._send(200, info)
        elif (self.command, self.path) == ("POST", "/sessions"):
            self._send(200, {**session, "volume_sha256": json.loads(body)["sha256"]})
        elif (self.command, self.path) == ("PUT", "/sessions/s1/volume"):
            self._send(200, {**session, "state": "ready"})
        else:  # the old server's word for a session it does not know
            self._send(404, {"error": "session_not_found", "message": "unknown session"})

    do_GET = do_POST = do_PUT = do_DELETE = _answer

    def log_message(self, *args: object) -> None:
        pass


@pytest.fixture
def old_server() -> Iterator[str]:
    _OldServer.seen, _OldServer.protocol = [], 1
    httpd = ThreadingHTTPServer(("127.0.0.1", 0), _OldServer)
    threading.Thread(target=httpd.serve_forever, args=(0.05,), daemon=True).start()
    yield f"http://127.0.0.1:{httpd.server_port}"
    httpd.shutdown()
    httpd.server_close()


def test_a_new_client_switches_off_what_an_old_server_lacks(old_server: str) -> None:
    client = MedSAMClient(old_server, "t")
    session = client.upload(np.zeros((2, 4, 4), np.uint8))
    assert session.session_id == "s1"
    assert len(client.notes) == 5  # lease, undo, focus, time, phases
    assert any("has no session leases" in n for n in client.notes)
    assert any("cannot take back prompts" in n for n in client.notes)
    assert any("does not encode slices ahead" in n for n in client.notes)
    created = next(body for method, path, body in _OldServer.seen
                   if (method, path) == ("POST", "/sessions"))
    assert "lease" not in json.loads(created)  # a field it never knew is never sent
    assert client.leased_sessions() == []  # nothing to heartbeat
    with pytest.raises(MedSAMError, match="cannot take back prompts") as err:
        client.undo(session, 1)
    assert err.value.code == UNSUPPORTED
    assert client.focus(session, "k", 0) is False  # a hint: a no-op, never an error
    with pytest.raises(MedSAMError, match="no longer has this session") as err:
        client.session_info(session)  # its old 404 code reads as the one name
    assert err.value.code == P.SESSION_GONE
    assert not any(word in path for _, path, _ in _OldServer.seen
                   for word in ("heartbeat", "undo", "focus"))
    client.close()
    # the Slicer settings panel's "Test connection" says so too
    from MedSAMSegmentLib.backend import RemoteBackend

    summary = RemoteBackend(old_server, "t" * 20).test_connection().summary()
    assert "medsam-server 0.1.0" in summary and "cannot take back prompts" in summary


@pytest.mark.parametrize(("major", "says"), [(2, "update this client"),
                                             (0, "update the server")])
def test_another_major_version_is_refused_clearly(old_server: str, major: int,
                                                  says: str) -> None:
    _OldServer.protocol = major
    with pytest.raises(MedSAMError, match=f"speaks protocol {major}.*{says}") as err:
        MedSAMClient(old_server, "t").info()
    assert err.value.code == "protocol_mismatch"
