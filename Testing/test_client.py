"""MedSAMClient against a REAL medsam-server process (random-weight checkpoint, CPU).

Results are compared voxel for voxel with an in-process ``medsam_server.engine.Session``
run on the same input. Transport corner cases (non-JSON answers, retries) use a tiny
stdlib HTTP stub instead.
"""

from __future__ import annotations

import json
import os
import signal
import sys
import threading
import time
from http.server import BaseHTTPRequestHandler, ThreadingHTTPServer

import numpy as np
import pytest
from conftest import run_concurrently, shared
from medsam_client import protocol as P
from medsam_client.client import JOB_GONE, SESSION_GONE, MedSAMClient, MedSAMError, slice_mask
from medsam_client.worker import LocalWorker

CT = "totalseg_ct_abdomen_3mm/example_ct_sm.nii.gz"
K0, K1 = 11, 17  # 6 real CT slices around the liver: ~0.6 s per encoded slice on CPU
KEY, BOX = 3, (45, 27, 104, 85)  # slice 14 of the full CT, the liver's box
BOX2 = (15, 40, 50, 80)
FIX_KEY, FIX_BOX = 5, (50, 30, 100, 80)
WINDOW = (40.0, 400.0)


# ---------------------------------------------------------------- fixtures
@pytest.fixture(scope="module")
def ct_crop() -> np.ndarray:
    """Raw HU voxels (int16) of the crop: the server windows them itself."""
    from medsam_server.io.volumes import read_volume

    return np.ascontiguousarray(read_volume(shared(CT)).array[K0:K1])




@pytest.fixture
def client(server):
    with MedSAMClient(server.url, server.token) as c:
        yield c


@pytest.fixture(scope="module")
def crop_session(server, ct_crop):
    """One uploaded crop shared by tests that use distinct object ids (features encode once)."""
    with MedSAMClient(server.url, server.token) as c:
        yield _upload(c, ct_crop)


@pytest.fixture(scope="module")
def reference(engine, ct_crop):
    """The same steps in process: obj 1 (box, propagate, later corrected), obj 2, and obj 9
    propagated only to the next slice (what each of the 4 parallel clients does)."""
    from medsam_server.engine.preprocess import window_to_uint8
    from medsam_server.engine.prompts import Prompt
    from medsam_server.engine.session import Session

    s = Session(engine, window_to_uint8(ct_crop, "ct", WINDOW))
    ref = {"key_slice": s.add_prompt(1, "k", KEY, Prompt(box=BOX)).mask}
    s.propagate(1)
    ref["obj1"] = s.mask(1)
    s.add_prompt(2, "k", KEY, Prompt(box=BOX2))
    s.propagate(2)
    ref["obj2"] = s.mask(2)
    s.add_prompt(1, "k", FIX_KEY, Prompt(box=FIX_BOX))
    s.propagate(1)
    ref["obj1_fixed"] = s.mask(1)
    s.add_prompt(9, "k", KEY, Prompt(box=BOX))  # objects are independent: id 9 = a fresh obj 1
    s.propagate(9, first=KEY, last=KEY + 1)
    ref["obj1_near"] = s.mask(9)
    assert 0 < ref["obj1"].sum() < ref["obj1"].size  # a comparison worth making
    return ref


def _upload(client: MedSAMClient, vol: np.ndarray, **kw):
    return client.upload(vol, spacing=(3.0, 3.0, 3.0), origin=(0.0, 0.0, 0.0),
                         direction=(1, 0, 0, 0, 1, 0, 0, 0, 1), modality="ct", window=WINDOW,
                         name=kw.pop("name", "crop"), **kw)


# ---------------------------------------------------------------- real server
def test_info_and_token(server, client):
    info = client.info()
    assert info.protocol == P.PROTOCOL_VERSION and info.device == "cpu"
    assert client.health().status == "ok"
    with pytest.raises(MedSAMError, match="rejected the token") as err:
        MedSAMClient(server.url, "wrong-token").info()
    assert err.value.status == 401


def test_segment_two_objects_with_correction_matches_in_process(client, crop_session, ct_crop,
                                                                reference):
    session = crop_session
    assert session.shape == ct_crop.shape
    assert session.volume_sha256 == P.sha256_array(ct_crop)
    update = client.prompt(session, 1, "k", KEY, box=BOX)
    assert (update.object_id, update.axis, update.index) == (1, "k", KEY)
    np.testing.assert_array_equal(slice_mask(update), reference["key_slice"])

    seen: list[int] = []
    job = client.propagate(session, [1], on_update=lambda u: seen.append(u.index))
    assert job.state == "done"
    assert sorted(set(seen)) == list(range(ct_crop.shape[0]))
    assert [u.index for u in job.updates] == seen
    np.testing.assert_array_equal(client.object_mask(session, 1), reference["obj1"])

    client.prompt(session, 2, "k", KEY, box=BOX2)
    client.propagate(session, [2])
    np.testing.assert_array_equal(client.object_mask(session, 2), reference["obj2"])

    # correction: a box on another slice, propagated again
    client.prompt(session, 1, "k", FIX_KEY, box=FIX_BOX)
    assert client.propagate(session, [1]).state == "done"
    fixed = client.object_mask(session, 1)
    np.testing.assert_array_equal(fixed, reference["obj1_fixed"])
    np.testing.assert_array_equal(client.object_mask(session, 2), reference["obj2"])  # untouched
    assert sorted(client.session_info(session).objects) == [1, 2]

    client.delete_object(session, 2)
    with pytest.raises(MedSAMError, match="has no object 2") as err:
        client.object_mask(session, 2)
    assert (err.value.status, err.value.code) == (404, "object_not_found")


def test_closed_session_is_reported_as_gone(client):
    session = _upload(client, np.zeros((2, 16, 16), np.int16))
    assert client.session_info(session).state == "ready"
    client.close_session(session)
    client.close_session(session)  # closing twice is fine
    with pytest.raises(MedSAMError, match="no longer has this session") as err:
        client.prompt(session, 1, "k", 0, box=(1, 1, 9, 9))
    assert (err.value.status, err.value.code) == (404, SESSION_GONE)


def test_cancel_midway_then_propagate_again(client, crop_session, ct_crop, reference):
    session = crop_session  # object 3 = the same box as object 1 in the reference
    client.prompt(session, 3, "k", KEY, box=BOX)
    cancel = threading.Event()
    got: list[P.SliceUpdate] = []

    def on_update(u: P.SliceUpdate) -> None:
        got.append(u)
        cancel.set()  # after the key slice: the server is then busy tracking the others

    job = client.propagate(session, [3], on_update=on_update, cancel=cancel, poll_wait=0.2)
    assert job.state == "cancelled"
    assert 1 <= len(got) < ct_crop.shape[0] and got[0].index == KEY
    # the cancelled run is redone in full on the next propagation
    assert client.propagate(session, [3]).state == "done"
    np.testing.assert_array_equal(client.object_mask(session, 3), reference["obj1"])


def test_four_clients_at_once_each_with_its_own_session(server, ct_crop, reference):
    def run(n: int) -> tuple[str, np.ndarray]:
        with MedSAMClient(server.url, server.token) as c:
            s = _upload(c, ct_crop, name=f"client{n}")
            c.prompt(s, 1, "k", KEY, box=BOX)
            c.propagate(s, [1], first=KEY, last=KEY + 1)
            result = (s.session_id, c.object_mask(s, 1))
            c.close_session(s)
            return result

    results = run_concurrently(run, 4, timeout=120)
    assert len({sid for sid, _ in results.values()}) == 4
    for _, mask in results.values():
        np.testing.assert_array_equal(mask, reference["obj1_near"])


def test_ensure_session_uploads_only_when_needed(server, client, ct_crop, monkeypatch):
    uploads: list[str] = []
    real = client._upload

    def counting(vol, meta):
        uploads.append(meta.sha256)
        return real(vol, meta)

    monkeypatch.setattr(client, "_upload", counting)
    kw = {"modality": "ct", "window": WINDOW}
    first = client.ensure_session(ct_crop, **kw)
    assert client.ensure_session(ct_crop.copy(), **kw) is first
    assert len(uploads) == 1
    changed = ct_crop.copy()
    changed[0, 0, 0] += 1
    second = client.ensure_session(changed, **kw)
    assert len(uploads) == 2 and second.session_id != first.session_id
    with pytest.raises(MedSAMError, match="no longer has this session"):
        client.session_info(first)  # the replaced session was closed
    third = client.ensure_session(changed, modality="ct", window=(50.0, 350.0))
    assert len(uploads) == 3 and third.session_id != second.session_id
    # the server forgot the session (another client closed it): upload again
    MedSAMClient(server.url, server.token).close_session(third)
    fourth = client.ensure_session(changed, modality="ct", window=(50.0, 350.0))
    assert len(uploads) == 4 and fourth.session_id != third.session_id
    client.close_session(fourth)


def test_session_expiry_and_server_restart_give_clear_errors(random_checkpoint, tmp_path):
    small = np.zeros((4, 32, 32), np.int16)
    with LocalWorker(sys.executable, random_checkpoint, device="cpu", startup_timeout=120,
                     log_path=tmp_path / "w.log", extra_args=["--idle-timeout", "1"]) as w:
        c = w.client()
        s = _upload(c, small)
        time.sleep(2.5)  # idle (every request would reset the clock), swept every 0.25 s
        with pytest.raises(MedSAMError, match="no longer has this session") as err:
            c.session_info(s)
        assert err.value.code == SESSION_GONE

        s = _upload(c, small)
        os.kill(w.pid, signal.SIGKILL)
        with pytest.raises(MedSAMError, match="cannot reach medsam-server.*is it running"):
            c.session_info(s)
        assert w.ensure_running() is True
        assert w.client() is c  # same port and token after the restart
        with pytest.raises(MedSAMError, match="no longer has this session.*upload again"):
            c.prompt(s, 1, "k", 0, box=(1, 1, 20, 20))


def test_segment_cli_with_server_writes_mask_on_input_grid(server, ct_crop, reference, tmp_path,
                                                          capsys):
    import SimpleITK as sitk
    from medsam_server.cli.main import main
    from medsam_server.engine.postprocess import largest_connected_component

    full = sitk.ReadImage(str(shared(CT)))
    crop = full[:, :, K0:K1]  # keeps the physical geometry of those slices
    src = tmp_path / "crop.nii.gz"
    sitk.WriteImage(crop, str(src))
    out = tmp_path / "mask.nii.gz"
    args = [str(src), "-o", str(out), "--slice", str(KEY), "--box", *map(str, BOX),
            "--quiet", "--server", server.url]
    assert main(["segment", *args, f"--token={server.token}"]) == 0  # it may start with "-"
    mask = sitk.ReadImage(str(out))
    assert mask.GetSize() == crop.GetSize()
    assert mask.GetSpacing() == pytest.approx(crop.GetSpacing())
    assert mask.GetOrigin() == pytest.approx(crop.GetOrigin())
    assert mask.GetDirection() == pytest.approx(crop.GetDirection())
    expected = largest_connected_component(reference["obj1"]).astype(np.uint8)
    np.testing.assert_array_equal(sitk.GetArrayFromImage(mask), expected)

    # server errors: one line, exit 2, nothing written
    bad = tmp_path / "bad.nii.gz"
    capsys.readouterr()
    assert main(["segment", *args[:-1], server.url, "--token", "nope", "-o", str(bad)]) == 2
    err = capsys.readouterr().err.strip().splitlines()
    assert len(err) == 1 and "rejected the token" in err[0]
    assert not bad.exists()


# ---------------------------------------------------------------- transport (stub server)
class _Stub(BaseHTTPRequestHandler):
    routes: dict[tuple[str, str], list[tuple[int, str]]] = {}
    seen: list[tuple[str, str]] = []

    def _answer(self) -> None:
        path = self.path.split("?")[0]
        self.seen.append((self.command, path))
        length = int(self.headers.get("Content-Length") or 0)
        self.rfile.read(length)
        queue = self.routes.get((self.command, path)) or [(404, '{"error":"nf","message":"?"}')]
        status, body = queue.pop(0) if len(queue) > 1 else queue[0]
        self.send_response(status)
        self.send_header("Content-Length", str(len(body)))
        self.end_headers()
        self.wfile.write(body.encode())

    do_GET = do_POST = do_PUT = do_DELETE = _answer

    def log_message(self, *args: object) -> None:
        pass


@pytest.fixture
def stub():
    _Stub.routes, _Stub.seen = {}, []
    httpd = ThreadingHTTPServer(("127.0.0.1", 0), _Stub)
    threading.Thread(target=httpd.serve_forever, args=(0.05,), daemon=True).start()
    yield _Stub.routes, _Stub.seen, f"http://127.0.0.1:{httpd.server_port}"
    httpd.shutdown()
    httpd.server_close()


def _info(protocol: int = 1) -> str:
    return json.dumps(P.to_json(P.Info("9.9", protocol, "m", "", "cpu", 0, 0, {}, {}, [])))


def test_non_json_answer_and_protocol_mismatch(stub):
    routes, seen, url = stub
    routes[("GET", "/health")] = [(200, "<html>a web page</html>")]
    routes[("GET", "/info")] = [(200, _info(protocol=99))]
    c = MedSAMClient(url, "t")
    with pytest.raises(MedSAMError, match="not JSON.*is it a medsam-server"):
        c.health()
    with pytest.raises(MedSAMError, match="speaks protocol 99") as err:
        c.info()
    assert err.value.code == "protocol_mismatch"


def test_get_is_retried_on_503_but_post_is_not(stub):
    routes, seen, url = stub
    busy = (503, '{"error": "busy", "message": "server is busy"}')
    routes[("GET", "/info")] = [busy, (200, _info())]
    routes[("POST", "/jobs/j1/cancel")] = [busy, (200, "{}")]
    c = MedSAMClient(url, "t")
    assert c.info().protocol == 1
    with pytest.raises(MedSAMError, match="server is busy") as err:
        c.cancel("j1")
    assert (err.value.status, err.value.code) == (503, "busy")
    assert seen == [("GET", "/info")] * 2 + [("POST", "/jobs/j1/cancel")]


@pytest.mark.parametrize(("session_code", "job_code"), [
    ("session_gone", "job_gone"),  # the protocol's names
    ("session_not_found", "job_not_found"),  # what a 0.1 server says for the same conditions
])
def test_404_codes_map_without_extra_requests(stub, session_code, job_code):
    routes, seen, url = stub
    routes[("GET", "/sessions/s1/objects/1/mask")] = [
        (404, f'{{"error": "{session_code}", "message": "unknown session"}}')]
    routes[("DELETE", "/sessions/s1/objects/2")] = [
        (404, '{"error": "object_not_found", "message": "session s1 has no object 2"}')]
    routes[("GET", "/jobs/j1")] = [(404, f'{{"error": "{job_code}", "message": "unknown job"}}')]
    c = MedSAMClient(url, "t")
    with pytest.raises(MedSAMError, match="no longer has this session") as err:
        c.object_mask("s1", 1)
    assert (err.value.status, err.value.code) == (404, SESSION_GONE)
    with pytest.raises(MedSAMError, match="has no object 2") as err:
        c.delete_object("s1", 2)
    assert (err.value.status, err.value.code) == (404, "object_not_found")
    with pytest.raises(MedSAMError, match="no longer knows this propagation job") as err:
        c.poll("j1")
    assert (err.value.status, err.value.code) == (404, JOB_GONE)
    with pytest.raises(MedSAMError, match=r"\[GET /sessions/s2 → 404\]") as err:
        c.session_info("s2")  # a bare 404 (unknown route, old server) stays as it is
    assert (err.value.status, err.value.code) == (404, "nf")
    assert seen == [("GET", "/sessions/s1/objects/1/mask"), ("DELETE", "/sessions/s1/objects/2"),
                    ("GET", "/jobs/j1"), ("GET", "/sessions/s2")]  # no probing GET


def test_unreachable_server_is_one_clear_error():
    import socket

    with socket.socket() as s:  # a port nobody listens on
        s.bind(("127.0.0.1", 0))
        port = s.getsockname()[1]
    with pytest.raises(MedSAMError, match=f"cannot reach medsam-server at http://127.0.0.1:{port}"
                                          ".*is it running") as err:
        MedSAMClient(f"http://127.0.0.1:{port}", "t", retries=1).info()
    assert err.value.code == "unreachable"


def test_failing_callback_cancels_the_job(stub):
    routes, seen, url = stub
    upd = P.SliceUpdate(1, "k", 3, 0.9, 1.0, P.crop_mask(np.eye(4, dtype=bool)))
    job = P.JobInfo("j1", "s1", "running", 1, 8, [upd], 1)
    routes[("POST", "/sessions/s1/propagate")] = [(200, json.dumps(P.to_json(job)))]
    routes[("GET", "/jobs/j1")] = [(200, json.dumps(P.to_json(job)))]
    routes[("POST", "/jobs/j1/cancel")] = [(200, json.dumps(P.to_json(job)))]

    def boom(u: P.SliceUpdate) -> None:
        np.testing.assert_array_equal(slice_mask(u), np.eye(4, dtype=bool))
        raise RuntimeError("display failed")

    with pytest.raises(RuntimeError, match="display failed"):
        MedSAMClient(url, "t").propagate("s1", [1], on_update=boom)
    assert seen[-1] == ("POST", "/jobs/j1/cancel")  # the server is not left busy


def test_a_job_without_progress_is_cancelled_after_the_stall_timeout(stub):
    routes, seen, url = stub
    job = P.JobInfo("j2", "s1", "running", 0, 8, [], 0)
    routes[("POST", "/sessions/s1/propagate")] = [(200, json.dumps(P.to_json(job)))]
    routes[("GET", "/jobs/j2")] = [(200, json.dumps(P.to_json(job)))]
    routes[("POST", "/jobs/j2/cancel")] = [(200, json.dumps(P.to_json(job)))]
    polls = []
    t0 = time.monotonic()
    with pytest.raises(MedSAMError, match="no progress") as err:
        MedSAMClient(url, "t").propagate("s1", [1], poll_wait=0.05, stall_timeout=0.5,
                                         on_job=polls.append)
    assert err.value.code == "stalled"
    assert 0.5 <= time.monotonic() - t0 < 5
    assert polls and all(p.state == "running" and p.total_slices == 8 for p in polls)
    assert seen[-1] == ("POST", "/jobs/j2/cancel")  # the server is told to stop


def test_client_side_imports_neither_torch_nor_slicer():
    import subprocess

    code = ("import sys, medsam_client.client, medsam_client.worker, medsam_server.cli.remote; "
            "print(sorted(m for m in ('torch', 'slicer', 'fastapi') if m in sys.modules))")
    out = subprocess.run([sys.executable, "-c", code], capture_output=True, text=True, check=True)
    assert out.stdout.strip() == "[]"
