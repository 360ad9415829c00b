"""Two medsam-server replicas behind a real nginx (Debian's package), routed by session.

nginx runs with the shipped example routing (``examples/nginx``: the upstream file with
the replicas' real addresses put in, the locations file as it is), on loopback, with its
own prefix, config, pid file and temp folders (never the system's). Four clients, each
with its own session, go through it: every result equals a direct in-process run,
sessions spread over both replicas, and jobs follow their session. Then one replica is
killed: its clients get "session gone" and, uploading again, land on the other replica;
the other replica's clients notice nothing.
"""

from __future__ import annotations

import os
import secrets
import shutil
import signal
import socket
import subprocess
import time
from collections.abc import Iterator
from pathlib import Path

import numpy as np
import pytest
import requests
from conftest import REPO, run_concurrently, shared
from medsam_client import protocol as P
from medsam_client.client import MedSAMClient, MedSAMError, SessionHandle
from test_service_api import live_server

EXAMPLES = REPO / "examples" / "nginx"
# the addresses the example gives its two replicas: replaced by the test's own
EXAMPLE_ADDRESSES = {"r1": "127.0.0.1:8801", "r2": "127.0.0.1:8802"}
CT = "totalseg_ct_abdomen_3mm/example_ct_sm.nii.gz"
KEY, BOX = 3, (45, 27, 104, 85)  # slice 14 of the CT in the crop 11..17
WINDOW = (40.0, 400.0)


def _nginx() -> str:
    found = shutil.which("nginx") or next(
        (p for p in ("/usr/sbin/nginx", "/usr/local/sbin/nginx") if os.access(p, os.X_OK)), None)
    if found is None:
        pytest.skip("nginx is not installed (Debian: apt-get install nginx-light; .ci/run "
                    "installs it): the replica routing cannot be tested without it")
    return found


def _free_port() -> int:
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return int(s.getsockname()[1])


@pytest.fixture(scope="module")
def crop() -> np.ndarray:
    from medsam_server.io.volumes import read_volume

    return np.ascontiguousarray(read_volume(shared(CT)).array[11:17])


@pytest.fixture(scope="module")
def reference(engine, crop: np.ndarray) -> np.ndarray:
    """What every client does, in process: the box, propagated to the next slice."""
    from medsam_server.engine.preprocess import window_to_uint8
    from medsam_server.engine.prompts import Prompt
    from medsam_server.engine.session import Session

    s = Session(engine, window_to_uint8(crop, "ct", WINDOW))
    s.add_prompt(1, "k", KEY, Prompt(box=BOX))
    s.propagate(1, first=KEY, last=KEY + 1)
    assert s.mask(1).any()
    return s.mask(1)


@pytest.fixture(scope="module")
def cluster(random_checkpoint: Path, tmp_path_factory: pytest.TempPathFactory
            ) -> Iterator[dict]:
    nginx = _nginx()
    token = secrets.token_urlsafe(24)  # the replicas of one service share its token
    with live_server(random_checkpoint, "--replica", "r1", "--no-warm-start",
                     token=token) as r1, \
            live_server(random_checkpoint, "--replica", "r2", "--no-warm-start",
                        token=token) as r2:
        prefix = tmp_path_factory.mktemp("nginx")
        upstreams = (EXAMPLES / "medsam-upstreams.conf").read_text()
        for name, replica in (("r1", r1), ("r2", r2)):
            assert EXAMPLE_ADDRESSES[name] in upstreams
            upstreams = upstreams.replace(EXAMPLE_ADDRESSES[name], replica.url.split("//")[1])
        (prefix / "medsam-upstreams.conf").write_text(upstreams)
        port = _free_port()
        user = "user root root;\n" if os.geteuid() == 0 else ""  # workers read our temp dirs
        (prefix / "nginx.conf").write_text(f"""{user}daemon off;
worker_processes 1;  # one round robin: new sessions alternate between the replicas
pid {prefix}/nginx.pid;
error_log {prefix}/error.log info;
events {{ worker_connections 128; }}
http {{
    access_log {prefix}/access.log;
    client_body_temp_path {prefix}/client_body;
    proxy_temp_path {prefix}/proxy;
    fastcgi_temp_path {prefix}/fastcgi;
    uwsgi_temp_path {prefix}/uwsgi;
    scgi_temp_path {prefix}/scgi;
    include {prefix}/medsam-upstreams.conf;
    server {{
        listen 127.0.0.1:{port};
        include {EXAMPLES}/medsam-locations.conf;
    }}
}}
""")
        proc = subprocess.Popen([nginx, "-p", str(prefix), "-c", str(prefix / "nginx.conf"),
                                 "-e", str(prefix / "error.log")],
                                stdout=subprocess.PIPE, stderr=subprocess.STDOUT, text=True)
        url = f"http://127.0.0.1:{port}"
        try:
            deadline = time.monotonic() + 30
            while True:
                if proc.poll() is not None:
                    pytest.fail(f"nginx exited ({proc.returncode}): {proc.stdout.read()}")
                try:
                    if requests.get(url + "/health", timeout=2).status_code == 200:
                        break
                except requests.RequestException:
                    pass
                if time.monotonic() > deadline:
                    pytest.fail("nginx did not answer /health through to a replica in 30 s")
                time.sleep(0.1)
            yield {"url": url, "token": token, "replicas": {"r1": r1, "r2": r2}}
        finally:
            proc.send_signal(signal.SIGQUIT)  # graceful: the master stops its workers
            try:
                proc.wait(15)
            except subprocess.TimeoutExpired:
                proc.kill()
                proc.wait()


def _segment(client: MedSAMClient, crop: np.ndarray) -> tuple[SessionHandle, str, np.ndarray]:
    session = client.upload(crop, modality="ct", window=WINDOW)
    client.prompt(session, 1, "k", KEY, box=BOX)
    jobs: list[str] = []
    client.propagate(session, [1], first=KEY, last=KEY + 1,
                     on_job=lambda job: jobs.append(job.job_id))
    return session, jobs[0], client.object_mask(session, 1)


def test_four_clients_through_nginx_then_a_replica_dies(cluster: dict, crop: np.ndarray,
                                                        reference: np.ndarray) -> None:
    clients = [MedSAMClient(cluster["url"], cluster["token"]) for _ in range(4)]
    done = run_concurrently(lambda n: _segment(clients[n], crop), 4, timeout=300)
    on: dict[str, list[int]] = {"r1": [], "r2": []}
    for n, (session, job_id, mask) in done.items():
        np.testing.assert_array_equal(mask, reference)  # as a direct run
        assert job_id.startswith(session.session_id + ".")  # the job routes with its session
        on[session.session_id.split(".")[0]].append(n)
    assert sorted(map(len, on.values())) == [2, 2], on  # spread over both replicas
    assert {c.leased_sessions()[0].split(".")[0] for c in clients} == {"r1", "r2"}

    # replica r1 dies
    r1 = cluster["replicas"]["r1"].process
    os.kill(r1.pid, signal.SIGKILL)
    r1.wait(10)
    for n in on["r1"]:
        session = done[n][0]
        with pytest.raises(MedSAMError, match="no longer has this session") as err:
            clients[n].object_mask(session, 1)
        assert err.value.code == P.SESSION_GONE
        again, _, mask = _segment(clients[n], crop)  # upload again: to the live replica
        assert again.session_id.startswith("r2.")
        np.testing.assert_array_equal(mask, reference)
    for n in on["r2"]:  # untouched: same session, same result
        session, _, before = done[n]
        np.testing.assert_array_equal(clients[n].object_mask(session, 1), before)
        assert clients[n].session_info(session).objects == [1]
    # heartbeats and job polls reach the session's replica (another would say "gone")
    auth = {"Authorization": f"Bearer {cluster['token']}"}
    for n in on["r2"]:
        session, job_id, _ = done[n]
        r = requests.post(f"{cluster['url']}/sessions/{session.session_id}/heartbeat",
                          headers=auth, timeout=30)
        assert r.status_code == 200 and r.json()["lease_left_s"] == 60.0, r.text
        r = requests.get(f"{cluster['url']}/jobs/{job_id}", headers=auth, timeout=30)
        assert r.status_code == 200 and r.json()["state"] == "done", r.text
    for c in clients:
        for sid in c.leased_sessions():
            c.close_session(sid)
        c.close()
