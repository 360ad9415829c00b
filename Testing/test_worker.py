"""LocalWorker: starting, checking, restarting and stopping a local medsam-server process.

Tests marked with the real server start ``medsam-server serve`` on the random-weight
checkpoint (a few seconds each); the others use tiny fake "pythons" (shell scripts)
to exercise timeouts and port races without loading a model.
"""

from __future__ import annotations

import importlib.util
import os
import signal
import socket
import stat
import subprocess
import sys
import time
from pathlib import Path

import pytest
from medsam_client import worker as worker_mod
from medsam_client.client import MedSAMClient, MedSAMError
from medsam_client.worker import LocalWorker

needs_service = pytest.mark.skipif(
    importlib.util.find_spec("medsam_server") is None,
    reason="medsam-server is not installed in this Python (no server to start)")


def _fake_python(tmp_path: Path, body: str) -> str:
    script = tmp_path / "fake-python"
    script.write_text(f"#!/bin/sh\n{body}\n")
    script.chmod(script.stat().st_mode | stat.S_IEXEC)
    return str(script)


def _kill9(worker: LocalWorker) -> None:
    os.kill(worker.pid, signal.SIGKILL)
    deadline = time.monotonic() + 10
    while worker.is_running() and time.monotonic() < deadline:
        time.sleep(0.05)
    assert not worker.is_running()


def _worker(ckpt: Path, log: Path, **kw) -> LocalWorker:
    return LocalWorker(sys.executable, ckpt, device="cpu", log_path=log, startup_timeout=120, **kw)


# ---------------------------------------------------------------- real server
@needs_service
def test_start_health_stop(random_checkpoint, tmp_path):
    log = tmp_path / "logs" / "worker.log"  # the folder is created on demand
    with _worker(random_checkpoint, log) as w:
        assert w.is_running() and w.url.startswith("http://127.0.0.1:")
        client = w.client()
        assert client.health().status == "ok"
        info = client.info()
        assert info.device == "cpu" and info.protocol == 1
        assert w.client() is client  # one client per server
        pid = w.pid
    assert not w.is_running()
    with pytest.raises(ProcessLookupError):
        os.kill(pid, 0)  # the process is really gone
    with pytest.raises(MedSAMError, match="is it running"):
        MedSAMClient(w.url, w.token, retries=0).health()
    text = log.read_text()
    assert "starting:" in text and "serve" in text
    assert w.token not in text  # the token never lands in the log


@needs_service
def test_restart_once_after_kill_then_second_death_raises(random_checkpoint, tmp_path):
    messages: list[str] = []
    w = _worker(random_checkpoint, tmp_path / "w.log", on_message=messages.append).start()
    try:
        assert w.ensure_running() is False  # alive: nothing to do
        port, first_pid = w.port, w.pid
        _kill9(w)
        assert w.ensure_running() is True
        assert w.pid != first_pid and w.port == port  # same address: clients keep working
        assert w.client().health().status == "ok"
        assert len(messages) == 1 and "restarting" in messages[0]
        _kill9(w)
        with pytest.raises(MedSAMError, match="stopped again") as err:
            w.ensure_running()
        assert err.value.code == "worker_died"
        assert "exit status -9" in str(err.value)
    finally:
        w.stop()


@needs_service
def test_two_launchers_get_their_own_servers_even_when_offered_the_same_port(
        random_checkpoint, tmp_path, monkeypatch):
    a = _worker(random_checkpoint, tmp_path / "a.log").start()
    blocker = socket.socket()  # a port some other program holds
    blocker.bind(("127.0.0.1", 0))
    blocker.listen()
    try:
        # B is offered A's port first (A's server answers, but not to B's token), then the
        # blocked port (B's server fails to bind), then a free one.
        offers = iter([a.port, blocker.getsockname()[1]])
        real = worker_mod._free_port
        monkeypatch.setattr(worker_mod, "_free_port", lambda host: next(offers, None) or real(host))
        with _worker(random_checkpoint, tmp_path / "b.log") as b:
            assert b.port not in (a.port, blocker.getsockname()[1])
            assert a.token != b.token
            assert a.client().info().protocol == b.client().info().protocol == 1
            for url, token in ((a.url, b.token), (b.url, a.token)):
                with pytest.raises(MedSAMError, match="rejected the token") as err:
                    MedSAMClient(url, token).info()
                assert err.value.status == 401
            assert "address already in use" in (tmp_path / "b.log").read_text().lower()
        assert a.is_running()  # B's attempts never touched A
    finally:
        blocker.close()
        a.stop()


@needs_service
def test_bad_checkpoint_fails_with_the_log_tail(tmp_path):
    w = LocalWorker(sys.executable, tmp_path / "missing.pt", device="cpu",
                    log_path=tmp_path / "w.log", startup_timeout=60)
    with pytest.raises(MedSAMError, match="exited with status") as err:
        w.start()
    assert err.value.code == "startup_failed"
    assert "missing.pt" in str(err.value)  # the server's own complaint, from the log
    assert not w.is_running()


ORPHAN_PARENT = """
import sys, time
from medsam_client.worker import LocalWorker
w = LocalWorker(sys.executable, sys.argv[1], device="cpu", log_path=sys.argv[2],
                startup_timeout=120).start()
print(w.pid, w.url, flush=True)
time.sleep(600)
"""


def _port_answers(url: str) -> bool:
    host, port = url.rsplit("/", 1)[-1].rsplit(":", 1)
    try:
        socket.create_connection((host, int(port)), timeout=1).close()
    except OSError:
        return False
    return True


@needs_service
@pytest.mark.skipif(os.name == "nt", reason="SIGKILL")
def test_server_exits_when_its_launcher_is_killed(random_checkpoint, tmp_path):
    """Slicer crashing (no atexit) must not leave the local worker running forever."""
    log = tmp_path / "w.log"
    parent = subprocess.Popen([sys.executable, "-c", ORPHAN_PARENT, str(random_checkpoint),
                               str(log)], stdout=subprocess.PIPE, text=True)
    server_pid = None
    try:
        line = parent.stdout.readline().split()
        assert len(line) == 2, f"the launcher did not start a worker:\n{log.read_text()}"
        server_pid, url = int(line[0]), line[1]
        assert f"--parent-pid {parent.pid}" in log.read_text()
        assert _port_answers(url)
        parent.kill()
        parent.wait(5)
        deadline = time.monotonic() + 15
        while time.monotonic() < deadline:
            try:
                os.kill(server_pid, 0)
            except ProcessLookupError:
                break
            # reaped by init; a zombie still answers kill(0) until then, not the port
            time.sleep(0.2)
        else:
            pytest.fail(f"the server outlived its killed launcher:\n{log.read_text()}")
        assert not _port_answers(url)
        assert "parent process" in log.read_text()
        server_pid = None
    finally:
        if parent.poll() is None:
            parent.kill()
            parent.wait(5)
        parent.stdout.close()
        if server_pid is not None:
            try:
                os.kill(server_pid, signal.SIGKILL)
            except ProcessLookupError:
                pass


@pytest.mark.parametrize("pid", ["0", "-5"])
def test_serve_rejects_a_bad_parent_pid_before_loading(pid, tmp_path, capsys):
    from medsam_server.cli.main import main

    rc = main(["serve", "--token", "t", "--port", "0", "--parent-pid", pid,
               "--checkpoint", str(tmp_path / "never-loaded.pt")])
    err = capsys.readouterr().err
    assert rc == 2
    assert err.strip().count("\n") == 0 and "--parent-pid must be a positive" in err


# ---------------------------------------------------------------- fake servers
def test_startup_timeout_kills_the_process_and_shows_the_log(tmp_path):
    python = _fake_python(tmp_path, 'echo "loading something slow"; exec sleep 60')
    w = LocalWorker(python, "x.pt", log_path=tmp_path / "w.log", startup_timeout=1.5)
    t0 = time.monotonic()
    with pytest.raises(MedSAMError, match="did not answer within 1.5 s") as err:
        w.start()
    assert time.monotonic() - t0 < 15
    assert "loading something slow" in str(err.value)
    assert not w.is_running()


def test_port_taken_every_time_gives_up_after_a_few_ports(tmp_path):
    python = _fake_python(
        tmp_path, 'echo "ERROR: [Errno 98] error while attempting to bind: address already in '
                  'use"; exit 1')
    w = LocalWorker(python, "x.pt", log_path=tmp_path / "w.log", port_attempts=3)
    with pytest.raises(MedSAMError, match="3 free ports in a row"):
        w.start()
    assert (tmp_path / "w.log").read_text().count("starting:") == 3


def test_missing_interpreter_is_a_clear_error(tmp_path):
    w = LocalWorker(str(tmp_path / "no-such-python"), "x.pt", log_path=tmp_path / "w.log")
    with pytest.raises(MedSAMError, match="cannot run .*no-such-python"):
        w.start()


def test_slicer_python_variables_are_not_passed_to_the_server(tmp_path, monkeypatch):
    monkeypatch.setenv("PYTHONHOME", "/slicer/python-home")
    monkeypatch.setenv("PYTHONPATH", "/slicer/lib")
    python = _fake_python(tmp_path, 'echo "HOME=[$PYTHONHOME] PATH=[$PYTHONPATH] '
                                    'UNBUF=[$PYTHONUNBUFFERED]"; exit 3')
    w = LocalWorker(python, "x.pt", log_path=tmp_path / "w.log")
    with pytest.raises(MedSAMError, match="status 3") as err:
        w.start()
    assert "HOME=[] PATH=[] UNBUF=[1]" in str(err.value)


FAKE_SERVER = """
import json, os, sys
from http.server import BaseHTTPRequestHandler, HTTPServer
port = int(sys.argv[sys.argv.index("--port") + 1])
token = os.environ["MEDSAM_TOKEN"]
INFO = {"version": "fake", "protocol": 1, "model": "fake", "checkpoint_sha256": "",
        "device": "cpu", "sessions": 0, "jobs_queued": 0, "memory": {}, "limits": {},
        "encodings": ["zlib"]}
class H(BaseHTTPRequestHandler):
    def do_GET(self):
        if self.path == "/health":
            status, body = 200, {"status": "ok", "version": "fake"}
        elif self.headers.get("Authorization") != "Bearer " + token:
            status, body = 401, {"error": "unauthorized", "message": "wrong token"}
        else:
            status, body = 200, INFO
        data = json.dumps(body).encode()
        self.send_response(status)
        self.send_header("Content-Length", str(len(data)))
        self.end_headers()
        self.wfile.write(data)
    def log_message(self, *args):
        pass
HTTPServer(("127.0.0.1", port), H).serve_forever()
"""


def test_a_failed_restart_is_not_tried_again_until_a_deliberate_stop(tmp_path):
    server = tmp_path / "fake_server.py"
    server.write_text(FAKE_SERVER)
    python = _fake_python(tmp_path, f'exec "{sys.executable}" "{server}" "$@"')
    messages: list[str] = []
    w = LocalWorker(python, "x.pt", log_path=tmp_path / "w.log", on_message=messages.append)
    try:
        assert w.start().client().info().model == "fake"
        w.python = str(tmp_path / "gone")  # e.g. the environment was deleted meanwhile
        _kill9(w)
        with pytest.raises(MedSAMError, match="cannot run .*gone"):
            w.ensure_running()
        assert len(messages) == 1
        with pytest.raises(MedSAMError, match="could not be restarted"):
            w.ensure_running()
        w.stop()
        w.python = python
        assert w.ensure_running() is False and w.is_running()  # a fresh start after stop()
    finally:
        w.stop()
