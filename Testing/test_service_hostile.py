"""Hostile and broken clients: every refusal is a 4xx JSON ``{"error", "message"}``.

Auth and body-size limits are checked against a real uvicorn process (they live in the
HTTP stack); input validation runs in-process with TestClient around the same app.
"""

from __future__ import annotations

import base64
import http.client
import json
import os
import socket
import subprocess
import sys
import zlib
from collections.abc import Iterator
from pathlib import Path
from urllib.parse import urlsplit

import numpy as np
import pytest
import requests
from fastapi.testclient import TestClient
from medsam_client import protocol as P
from medsam_server.service.app import create_app
from medsam_server.service.config import ServiceConfig
from test_service_api import LiveServer, live_server

TOKEN = "hostile-test-token"
AUTH = {"Authorization": f"Bearer {TOKEN}"}


def assert_error(r, status: int | tuple[int, ...], code: str | None = None) -> dict:
    assert r.status_code in (status if isinstance(status, tuple) else (status,)), r.text
    assert r.headers["content-type"].startswith("application/json")
    body = r.json()
    assert set(body) == {"error", "message"} and body["message"], body
    if code is not None:
        assert body["error"] == code, body
    return body


# ---- against a real server ---------------------------------------------------------
@pytest.fixture(scope="module")
def server(random_checkpoint: Path) -> Iterator[LiveServer]:
    with live_server(random_checkpoint, "--max-upload-mb", "1") as s:
        yield s
    assert not any(s.token in line for line in s.log), "the token leaked into the log"


def _operations(server: LiveServer) -> list[tuple[str, str]]:
    spec = server.get("/openapi.json").json()
    ops = [(method.upper(), path.replace("{sid}", "abc").replace("{jid}", "abc")
            .replace("{oid}", "1")) for path, item in spec["paths"].items() for method in item]
    assert len(ops) >= 12  # every route of the protocol
    return ops + [("GET", "/openapi.json")]


def test_every_route_but_health_needs_the_token(server: LiveServer) -> None:
    for method, path in _operations(server):
        if path == "/health":
            continue
        for headers in ({}, {"Authorization": "Bearer wrong-token"},
                        {"Authorization": f"Basic {server.token}"},
                        {"Authorization": f"Bearer {server.token}x"},
                        {"Authorization": "Bearer "}):
            r = requests.request(method, server.url + path, headers=headers, json={}, timeout=30)
            assert_error(r, 401, "unauthorized")
            assert r.headers["www-authenticate"] == "Bearer"
    assert requests.get(server.url + "/health", timeout=10).status_code == 200


def test_strangers_get_401_before_the_body_is_read(server: LiveServer) -> None:
    """The token is checked before body parsing and size limits: no 422, no 413."""
    url = "/sessions/abc/prompt"
    for body in (b"{not json at all", b"\xff\xfe" * 100):
        r = requests.post(server.url + url, data=body, timeout=30,
                          headers={"Content-Type": "application/json"})
        assert_error(r, 401, "unauthorized")
        assert r.headers["www-authenticate"] == "Bearer"
    # over the JSON limit, announced and streamed: still a 401, not a 413
    status, body = _raw_request(server, "POST", "/sessions",
                                {"Authorization": "Bearer nope", "Content-Length": str(2 << 20),
                                 "Content-Type": "application/json"})
    assert status == 401 and body["error"] == "unauthorized"
    status, body = _raw_request(server, "POST", "/sessions",
                                {"Authorization": "Bearer nope", "Transfer-Encoding": "chunked",
                                 "Content-Type": "application/json"}, [b"{" * (64 << 10)] * 20)
    assert status == 401 and body["error"] == "unauthorized"
    assert requests.get(server.url + "/health", timeout=10).status_code == 200


def _raw_request(server: LiveServer, method: str, path: str, headers: dict[str, str],
                 body_chunks: list[bytes] = ()) -> tuple[int, dict]:
    """Send headers (and maybe chunks) on a raw socket, then read the answer."""
    url = urlsplit(server.url)
    conn = http.client.HTTPConnection(url.hostname, url.port, timeout=30)
    conn.putrequest(method, path)
    for k, v in {**server.headers, **headers}.items():
        conn.putheader(k, v)
    conn.endheaders()
    try:
        for chunk in body_chunks:
            conn.send(b"%x\r\n%s\r\n" % (len(chunk), chunk))
    except (BrokenPipeError, ConnectionResetError):
        pass  # the server answered and closed: read that answer below
    resp = conn.getresponse()
    body = json.loads(resp.read())
    conn.close()
    return resp.status, body


def test_oversized_body_refused_from_content_length(server: LiveServer) -> None:
    sid = server.post("/sessions", json=P.to_json(P.VolumeMeta(
        shape=[64, 128, 128], dtype="int16", sha256="0" * 64, encoding="raw"))).json()["session_id"]
    for path in (f"/sessions/{sid}/volume", "/sessions"):
        # headers only: the answer comes before any body byte is sent
        status, body = _raw_request(server, "PUT" if "volume" in path else "POST", path,
                                    {"Content-Length": str(2 << 20),
                                     "Content-Type": "application/octet-stream"})
        assert status == 413 and body["error"] == "too_large" and "limit" in body["message"]
    assert server.get(f"/sessions/{sid}").json()["state"] == "awaiting_volume"


def test_oversized_chunked_body_counted_and_refused(server: LiveServer) -> None:
    meta = P.VolumeMeta(shape=[64, 128, 128], dtype="int16", sha256="0" * 64, encoding="raw")
    sid = server.post("/sessions", json=P.to_json(meta)).json()["session_id"]
    chunks = [b"\0" * (64 << 10)] * 20  # 1.25 MB, no Content-Length
    status, body = _raw_request(server, "PUT", f"/sessions/{sid}/volume",
                                {"Transfer-Encoding": "chunked"}, chunks)
    assert status == 413 and body["error"] == "too_large"
    # also for JSON routes, whose body FastAPI reads itself
    status, body = _raw_request(server, "POST", f"/sessions/{sid}/prompt",
                                {"Transfer-Encoding": "chunked",
                                 "Content-Type": "application/json"}, chunks)
    assert status == 413 and body["error"] == "too_large"
    # the session is untouched and the server well
    assert server.get(f"/sessions/{sid}").json()["state"] == "awaiting_volume"
    assert server.get("/info").status_code == 200


def test_malformed_http_does_not_kill_the_server(server: LiveServer) -> None:
    url = urlsplit(server.url)
    with socket.create_connection((url.hostname, url.port), timeout=10) as sock:
        sock.sendall(b"NONSENSE / HTTP/9.9\r\n\x00\x01\r\n\r\n")
        sock.recv(1024)
    assert requests.get(server.url + "/health", timeout=10).status_code == 200


@pytest.mark.parametrize(("extra", "env_token", "says"), [
    ([], None, "token is required"),
    (["--host", "0.0.0.0"], "short", "at least 16 characters"),
])
def test_serve_refuses_unsafe_setups(extra: list[str], env_token: str | None, says: str,
                                     tmp_path: Path) -> None:
    env = {k: v for k, v in os.environ.items() if k != "MEDSAM_TOKEN"}
    if env_token is not None:
        env["MEDSAM_TOKEN"] = env_token
    r = subprocess.run([sys.executable, "-m", "medsam_server.cli", "serve", "--port", "0",
                        "--checkpoint", str(tmp_path / "never-read.pt"), *extra],
                       env=env, capture_output=True, text=True, timeout=120)
    assert r.returncode == 2
    lines = r.stderr.strip().splitlines()
    assert len(lines) == 1 and lines[0].startswith("medsam-server: error:") and says in lines[0]


@pytest.mark.parametrize(("extra", "says"), [
    (["--token", ""], "token is required"),
    (["--token", "a-token", "--idle-timeout", "0"], "idle_timeout_s"),
    (["--token", "a-token", "--idle-timeout", "nan"], "idle_timeout_s"),
])
def test_serve_refuses_bad_settings_before_binding(extra: list[str], says: str, tmp_path: Path,
                                                   monkeypatch, capsys) -> None:
    """In-process (no interpreter start-up): refused before the port or the model."""
    from medsam_server.cli import main as cli
    from medsam_server.service import run

    def no_bind(*a: object) -> None:
        raise AssertionError("bound the port before checking the settings")

    monkeypatch.delenv("MEDSAM_TOKEN", raising=False)
    monkeypatch.setattr(run, "_bind", no_bind)
    args = cli.build_parser().parse_args(["serve", "--port", "0", "--checkpoint",
                                          str(tmp_path / "never-read.pt"), *extra])
    assert args.func(args) == 2
    lines = capsys.readouterr().err.strip().splitlines()
    assert len(lines) == 1 and lines[0].startswith("medsam-server: error:") and says in lines[0]


# ---- in-process: input validation --------------------------------------------------
@pytest.fixture(scope="module")
def client(engine) -> Iterator[TestClient]:
    app = create_app(ServiceConfig(token=TOKEN, memory_budget_bytes=64 << 20,
                                   max_upload_bytes=4 << 20), engine)
    with TestClient(app, headers=AUTH, raise_server_exceptions=False) as c:
        yield c
    app.state.service.close()


def _volume() -> np.ndarray:
    return np.random.default_rng(0).integers(-200, 300, (2, 24, 32)).astype(np.int16)


def _new_session(client: TestClient, volume: np.ndarray, **meta) -> str:
    fields = {"shape": list(volume.shape), "dtype": volume.dtype.name,
              "sha256": P.sha256_array(volume), "encoding": "zstd", **meta}
    r = client.post("/sessions", json=fields)
    assert r.status_code == 200, r.text
    return r.json()["session_id"]


@pytest.fixture(scope="module")
def ready(client: TestClient) -> str:
    volume = _volume()
    sid = _new_session(client, volume)
    r = client.put(f"/sessions/{sid}/volume", content=P.compress(volume.tobytes(), "zstd"))
    assert r.status_code == 200 and r.json()["state"] == "ready"
    return sid


def test_bad_volume_meta(client: TestClient) -> None:
    good = {"shape": [2, 24, 32], "dtype": "int16", "sha256": "a" * 64}
    for patch, status in [({"dtype": "complex128"}, 400), ({"dtype": "bool"}, 400),
                          ({"shape": [24, 32]}, 400), ({"shape": [0, 24, 32]}, 400),
                          ({"shape": [-2, 24, 32]}, 400), ({"shape": [4096, 4096, 4096]}, 413),
                          ({"sha256": "xyz"}, 400), ({"encoding": "lz4"}, 422),
                          ({"modality": "mr", "window": [40, 400]}, 400),
                          ({"window": [40, 0]}, 400), ({"spacing": [1, 1]}, 400),
                          ({"shape": "big"}, 422), ({"dtype": 5}, 422), ({"name": "x" * 2000}, 400)]:
        assert_error(client.post("/sessions", json={**good, **patch}), status)
    r = client.post("/sessions", content=b'{"shape": [2, 24, 32], "dtype": "int16", "sha256": "'
                    + b"a" * 64 + b'", "spacing": [NaN, 1, 1]}',
                    headers={"Content-Type": "application/json"})
    assert "spacing" in assert_error(r, 400, "bad_input")["message"]
    for body in (b"{garbage", b"[]", b"null", b"", b"\xe9\xff", b'{"shape": 1e999}'):
        assert_error(client.post("/sessions", content=body,
                                 headers={"Content-Type": "application/json"}), (400, 422))


def test_bad_uploads_are_refused_and_harmless(client: TestClient) -> None:
    volume = _volume()
    sid = _new_session(client, volume)
    put = lambda body: client.put(f"/sessions/{sid}/volume", content=body)  # noqa: E731
    packed = P.compress(volume.tobytes(), "zstd")
    assert "bytes" in assert_error(put(P.compress(volume[:1].tobytes(), "zstd")), 400)["message"]
    assert_error(put(b"not zstd at all"), 400, "bad_input")
    assert_error(put(packed[: len(packed) // 2]), 400, "bad_input")
    bomb = P.compress(bytes(64 << 20), "zstd")  # 64 MB of zeros in a few kB
    assert len(bomb) < 1 << 20
    assert "expands" in assert_error(put(bomb), 400, "bad_input")["message"]
    flipped = (volume + 1).astype(np.int16)
    assert "sha256" in assert_error(put(P.compress(flipped.tobytes(), "zstd")), 400)["message"]
    assert client.get(f"/sessions/{sid}").json()["state"] == "awaiting_volume"
    assert client.put(f"/sessions/{sid}/volume", content=packed).status_code == 200
    assert_error(put(packed), 409, "wrong_state")  # one volume per session

    raw_sid = _new_session(client, volume, encoding="raw")
    assert_error(client.put(f"/sessions/{raw_sid}/volume", content=volume.tobytes()[:-2]), 400)

    nan = np.zeros((2, 8, 8), np.float32)
    nan[1, 3, 4] = np.nan
    nan_sid = _new_session(client, nan)
    r = client.put(f"/sessions/{nan_sid}/volume", content=P.compress(nan.tobytes(), "zstd"))
    assert "NaN" in assert_error(r, 400, "bad_input")["message"]


def test_bad_prompts(client: TestClient, ready: str) -> None:
    url = f"/sessions/{ready}/prompt"
    ok = {"object_id": 1, "axis": "k", "index": 0, "box": [2, 2, 20, 20]}
    mask = lambda a, **kw: {**P.to_json(P.encode_array(a, "zlib")), **kw}  # noqa: E731
    cases = [
        ({"box": [100, 100, 200, 200]}, 400), ({"box": [5, 5, 5, 5]}, 400),
        ({"box": [1, 2, 3]}, 400), ({"index": 2}, 400), ({"index": -1}, 400),
        ({"axis": "x"}, 422), ({"object_id": 0}, 400), ({"object_id": 2**40}, 400),
        ({"object_id": "one"}, 422), ({"box": "wide"}, 422),
        ({"box": None, "points": [[1, 2, 3]], "point_labels": [1]}, 400),
        ({"box": None, "points": [[1, 2]], "point_labels": []}, 400),
        ({"box": None, "points": [[1, 2]], "point_labels": [7]}, 400),
        ({"box": None, "points": [[100, 2]], "point_labels": [1]}, 400),
        ({"box": None}, 400),
        ({"box": None, "mask": mask(np.ones((24, 32), np.float32))}, 400),
        ({"box": None, "mask": mask(np.ones((24, 31), np.uint8))}, 400),
        ({"box": None, "mask": mask(np.full((24, 32), 2, np.uint8))}, 400),
        ({"box": None, "mask": mask(np.ones((24, 32), np.uint8), data="!!notbase64")}, 400),
        ({"box": None, "mask": mask(np.ones((24, 32), np.uint8), shape=[4000, 4000])}, 400),
        ({"box": None, "mask": {"dtype": "uint8", "shape": [24, 32], "encoding": "zlib",
                                "data": base64.b64encode(zlib.compress(bytes(10 << 20))).decode()}},
         400),
        ({"mask": mask(np.ones((24, 32), np.uint8))}, 400),  # box and mask together
    ]
    for patch, status in cases:
        assert_error(client.post(url, json={**ok, **patch}), status)
    r = client.post(url, content=b'{"object_id": 1, "axis": "k", "index": 0, "box": [NaN, 1, 9, 9]}',
                    headers={"Content-Type": "application/json"})
    assert_error(r, 400, "bad_input")


def test_wrong_state_and_unknown_ids(client: TestClient, ready: str) -> None:
    waiting = _new_session(client, _volume())
    box = {"object_id": 1, "axis": "k", "index": 0, "box": [2, 2, 20, 20]}
    assert_error(client.post(f"/sessions/{waiting}/prompt", json=box), 409, "wrong_state")
    assert_error(client.post(f"/sessions/{waiting}/propagate", json={"object_ids": [1]}), 409)
    assert_error(client.get(f"/sessions/{waiting}/objects/1/mask"), 409)
    for r in (client.get("/sessions/nope"), client.delete("/sessions/nope"),
              client.post("/sessions/nope/prompt", json=box),
              client.post("/sessions/nope/propagate", json={"object_ids": [1]}),
              client.get("/sessions/nope/objects/1/mask"),
              client.delete("/sessions/nope/objects/1"),
              client.put("/sessions/nope/volume", content=b"x")):
        assert_error(r, 404, "session_gone")
        assert "upload" in r.json()["message"]
    for r in (client.get(f"/sessions/{ready}/objects/99/mask"),
              client.delete(f"/sessions/{ready}/objects/99"),
              client.post(f"/sessions/{ready}/propagate", json={"object_ids": [99]})):
        assert_error(r, 404, "object_not_found")
    for r in (client.get("/jobs/nope"), client.post("/jobs/nope/cancel")):
        assert_error(r, 404, "job_gone")
    for r in (client.get("/no/such/route"), client.get(f"/sessions/{ready}/nothing")):
        assert_error(r, 404, "not_found")
    assert_error(client.get(f"/sessions/{ready}/objects/one/mask"), 422)
    assert_error(client.post("/info"), 405)


def test_bad_propagation_requests(client: TestClient, ready: str) -> None:
    url = f"/sessions/{ready}/propagate"
    box = {"object_id": 5, "axis": "k", "index": 0, "box": [2, 2, 20, 20]}
    assert client.post(f"/sessions/{ready}/prompt", json=box).status_code == 200
    for body, status in [({"object_ids": []}, 400), ({"object_ids": [5, 5]}, 400),
                         ({"object_ids": [5], "first": 1, "last": 0}, 400),
                         ({"object_ids": [5], "last": 9}, 400),
                         ({"object_ids": [5], "start": 1}, 400),
                         ({"object_ids": [5], "first": 1}, 400),  # no prompt in 1..1
                         ({"object_ids": [5], "axis": "j"}, 400),
                         ({"object_ids": [5], "stop_after_empty": -1}, 400),
                         ({"object_ids": [5], "direction": "sideways"}, 422),
                         ({"object_ids": "5"}, 422), ({}, 422)]:
        assert_error(client.post(url, json=body), status)
    r = client.post(url, json={"object_ids": [5], "direction": "forward"})
    assert r.status_code == 200, r.text
    jid = r.json()["job_id"]
    assert r.json()["total_slices"] == 2  # slices 0..1, from the engine's plan
    # the session is busy until the job ends; a bad ``since`` is refused
    assert_error(client.post(f"/sessions/{ready}/prompt", json=box), 409, "busy")
    assert_error(client.delete(f"/sessions/{ready}/objects/5"), 409, "busy")
    assert_error(client.get(f"/jobs/{jid}", params={"since": 99}), 400)
    assert_error(client.get(f"/jobs/{jid}", params={"since": -1}), 422)
    assert_error(client.get(f"/jobs/{jid}", params={"wait": "soon"}), 422)
    job = client.get(f"/jobs/{jid}", params={"wait": 60}).json()
    while job["state"] not in ("done", "failed", "cancelled"):
        job = client.get(f"/jobs/{jid}", params={"since": job["next_since"], "wait": 60}).json()
    assert job["state"] == "done" and job["error"] is None
    assert job["total_slices"] == job["done_slices"] == 2  # forward-only, no early stop

    # a prompt on slice 1, outside first..last around slice 0: still a valid job
    assert client.post(f"/sessions/{ready}/prompt", json={**box, "index": 1}).status_code == 200
    r = client.post(url, json={"object_ids": [5], "first": 0, "last": 0})
    assert r.status_code == 200, r.text
    assert r.json()["total_slices"] == 1
    job = client.get(f"/jobs/{r.json()['job_id']}", params={"wait": 60}).json()
    while job["state"] not in ("done", "failed", "cancelled"):
        job = client.get(f"/jobs/{job['job_id']}", params={"wait": 60}).json()
    assert job["state"] == "done" and job["error"] is None, job


def test_object_cap_axes_and_shutdown(engine) -> None:
    app = create_app(ServiceConfig(token=TOKEN, max_objects=1), engine)
    with TestClient(app, headers=AUTH, raise_server_exceptions=False) as c:
        volume = _volume()
        sid = _new_session(c, volume)
        assert c.put(f"/sessions/{sid}/volume",
                     content=P.compress(volume.tobytes(), "zstd")).status_code == 200
        url = f"/sessions/{sid}/prompt"
        box = {"object_id": 1, "axis": "k", "index": 0, "box": [2, 2, 20, 20]}
        assert c.post(url, json=box).status_code == 200
        assert c.get("/info").json()["memory"]["logits"] == 128 * 128 * 4
        assert_error(c.post(url, json={**box, "object_id": 2}), 409, "too_many_objects")
        # one object, one axis: the engine refuses a second one, as a 400
        r = c.post(url, json={**box, "axis": "j", "box": [2, 0, 20, 2]})
        assert "along axis k" in assert_error(r, 400, "bad_input")["message"]
        app.state.service.close()  # shutting down: no more work is taken
        assert_error(c.post(url, json=box), 503, "unavailable")
        assert_error(c.post(f"/sessions/{sid}/propagate", json={"object_ids": [1]}), 503,
                     "unavailable")


def test_uploads_in_progress_are_counted_and_exclusive(client: TestClient) -> None:
    sessions = client.app.state.service.sessions
    volume = _volume()
    sid = _new_session(client, volume)
    s = sessions.get(sid)
    sessions.begin_upload(s)  # as if a PUT were reading its body now
    try:
        packed = P.compress(volume.tobytes(), "zstd")
        assert_error(client.put(f"/sessions/{sid}/volume", content=packed), 409, "wrong_state")
        assert client.get("/info").json()["memory"]["uploads"] == volume.nbytes
        s.last_used -= 1e6
        s.last_seen -= 1e6
        s.lease = True
        assert sid not in sessions.expire()  # neither clock closes it mid-upload
        # a second announced volume that cannot fit beside the one in flight (budget 64 MB)
        big = _new_session(client, volume, shape=[40, 1024, 1024], dtype="uint8")
        sessions.begin_upload(sessions.get(big))
        try:
            other = _new_session(client, volume, shape=[40, 1024, 1024], dtype="uint8")
            assert_error(client.put(f"/sessions/{other}/volume", content=b"x"), 507,
                         "out_of_memory")
        finally:
            sessions.end_upload(sessions.get(big))
    finally:
        sessions.end_upload(s)
    assert client.put(f"/sessions/{sid}/volume", content=packed).status_code == 200
    for x in (big, other, sid):
        assert client.delete(f"/sessions/{x}").status_code == 200


def test_still_serves_after_all_that(client: TestClient, ready: str) -> None:
    r = client.post(f"/sessions/{ready}/prompt",
                    json={"object_id": 7, "axis": "k", "index": 1, "box": [3, 4, 25, 20]})
    assert r.status_code == 200, r.text
    update = P.from_json(P.SliceUpdate, r.json())
    assert update.index == 1 and P.uncrop_mask(update.mask).shape == (24, 32)
    info = client.get("/info").json()
    assert info["sessions"] >= 1 and info["memory"]["features"] > 0
