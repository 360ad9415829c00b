"""``medsam-server segment --time --server URL``: the frames of the real echo clip go to a REAL
medsam-server process (random-weight checkpoint, CPU, fp32) as one time session, and the
label files it writes equal those of the in-process path on the same checkpoint; a server
without capability "time" is refused before anything is uploaded or written."""

from __future__ import annotations

import json
import sys
import threading
from http.server import BaseHTTPRequestHandler, ThreadingHTTPServer
from pathlib import Path

import numpy as np
import pytest
import SimpleITK as sitk
from conftest import ERROR_PREFIX, cli, shared
from medsam_client.worker import LocalWorker
from medsam_server.io.sequences import read_label_sequence

BOX = ("225", "95", "325", "225")  # SOURCES.md's approximate LV box on the cropped frames
FRAMES = 4
LOCAL = ["--precision", "fp32", "--device", "cpu", "--threads", "1"]


@pytest.fixture(scope="module")
def live(random_checkpoint: Path, tmp_path_factory: pytest.TempPathFactory):  # noqa: ANN201
    w = LocalWorker(sys.executable, random_checkpoint, device="cpu",
                    log_path=tmp_path_factory.mktemp("time-remote") / "server.log",
                    extra_args=["--precision", "fp32", "--threads", "1"],
                    startup_timeout=180).start()
    try:
        yield w
    finally:
        w.stop()


@pytest.fixture(scope="module")
def cine(tmp_path_factory) -> Path:
    img = sitk.ReadImage(str(shared("echo_a4c/echo_a4c_cine.nrrd")))
    path = tmp_path_factory.mktemp("cine") / "cine.nrrd"
    sitk.WriteImage(img[:, :, :FRAMES], str(path))
    return path


@pytest.fixture(scope="module")
def video(tmp_path_factory) -> Path:
    """An MP4 made from the real colour clip's first frames (PyAV's own MPEG-4 encoder)."""
    av = pytest.importorskip("av")
    pydicom = pytest.importorskip("pydicom")
    rgb = pydicom.dcmread(shared("echo_a4c/echo_a4c_us_multiframe.dcm")).pixel_array
    path = tmp_path_factory.mktemp("video") / "echo.mp4"
    with av.open(str(path), "w") as container:
        stream = container.add_stream("mpeg4", rate=25)
        stream.width, stream.height, stream.pix_fmt = 512, 384, "yuv420p"
        for frame in np.ascontiguousarray(rgb[:FRAMES, 31:415, 84:596]):
            container.mux(stream.encode(av.VideoFrame.from_ndarray(frame, format="rgb24")))
        container.mux(stream.encode())
    return path


def test_grey_cine_two_objects_remote_equals_local(live, cine, random_checkpoint, tmp_path):
    prompts = tmp_path / "p.json"
    prompts.write_text(json.dumps({"objects": [
        {"label": 1, "name": "LV", "slice": 1, "box": [float(v) for v in BOX]},
        {"label": 2, "name": "LA", "slice": 3, "box": [240.0, 230.0, 330.0, 300.0]}]}))
    local, remote = tmp_path / "local.nrrd", tmp_path / "remote.nrrd"
    rc, _, err = cli("segment", cine, "--time", "--prompts", prompts, "--checkpoint",
                     random_checkpoint, *LOCAL, "--quiet", "-o", local)
    assert rc == 0, err
    rc, _, err = cli("segment", cine, "--time", "--prompts", prompts, "--server", live.url,
                     f"--token={live.token}", "-o", remote)
    assert rc == 0, err
    assert f"at {live.url}" in err and "uploading the frames" in err and "4 grey frames" in err
    a, b = sitk.ReadImage(str(local)), sitk.ReadImage(str(remote))
    expected = sitk.GetArrayFromImage(a)
    assert {1, 2} <= set(np.unique(expected).tolist())  # the premise: both objects segmented
    np.testing.assert_array_equal(sitk.GetArrayFromImage(b), expected)
    assert b.GetSpacing() == a.GetSpacing() == sitk.ReadImage(str(cine)).GetSpacing()
    assert b.GetOrigin() == a.GetOrigin()


def test_colour_video_forward_remote_equals_local_sequence(live, video, random_checkpoint,
                                                           tmp_path):
    args = [video, "--time", "--frame", 1, "--box", *BOX, "--direction", "forward",
            "--stop-after-empty", 2]
    local, remote = tmp_path / "local.seq.nrrd", tmp_path / "remote.seq.nrrd"
    rc, _, err = cli("segment", *args, "--checkpoint", random_checkpoint, *LOCAL, "--quiet",
                     "-o", local)
    assert rc == 0, err
    rc, _, err = cli("segment", *args, "--server", live.url, f"--token={live.token}",
                     "--quiet", "-o", remote)
    assert rc == 0, err
    expected = read_label_sequence(local)
    assert not expected.array[0].any() and expected.array[1:].any()  # forward from frame 1
    got = read_label_sequence(remote)
    np.testing.assert_array_equal(got.array, expected.array)
    assert got.spacing == expected.spacing and got.origin == expected.origin
    import nrrd

    header = nrrd.read_header(str(remote))
    assert header["axis 0 index values"] == "0 40 80 120"  # 25 fps: the video's own timing


class _NoTime(BaseHTTPRequestHandler):
    info: dict = {}
    seen: list[str] = []

    def log_message(self, *args: object) -> None:
        pass

    def _answer(self) -> None:
        self.seen.append(f"{self.command} {self.path}")
        if self.command == "GET" and self.path == "/info":
            body, status = json.dumps(self.info).encode(), 200
        else:
            body, status = b'{"error": "not_found", "message": "not here"}', 404
        self.send_response(status)
        self.send_header("Content-Type", "application/json")
        self.send_header("Content-Length", str(len(body)))
        self.end_headers()
        self.wfile.write(body)

    do_GET = do_POST = do_PUT = do_DELETE = _answer


def test_a_server_without_time_sessions_is_refused_before_the_upload(live, cine, tmp_path):
    import requests

    info = requests.get(f"{live.url}/info", timeout=30,
                        headers={"Authorization": f"Bearer {live.token}"}).json()
    assert "time" in info["capabilities"]  # the premise: the real server's info, less "time"
    _NoTime.info = {**info, "capabilities": [c for c in info["capabilities"] if c != "time"]}
    httpd = ThreadingHTTPServer(("127.0.0.1", 0), _NoTime)
    threading.Thread(target=httpd.serve_forever, daemon=True).start()
    try:
        out = tmp_path / "out.seq.nrrd"
        rc, _, err = cli("segment", cine, "--time", "--frame", 1, "--box", *BOX, "--server",
                         f"http://127.0.0.1:{httpd.server_port}", "--token", "t", "--quiet",
                         "-o", out)
    finally:
        httpd.shutdown()
        httpd.server_close()
    lines = err.strip().splitlines()
    assert rc == 2 and len(lines) == 1 and lines[0].startswith(ERROR_PREFIX), err
    assert "has no time sessions (capability 'time')" in lines[0]
    assert _NoTime.seen == ["GET /info"]  # nothing uploaded
    assert not out.exists() and list(tmp_path.iterdir()) == []
