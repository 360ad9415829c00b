"""Capability "time" on the service: sessions over the real echo clip's frames (the 120-frame
RGB clip in one upload, the grey cine), axis "t" on the wire, results per frame as the
in-process engine gives them; the older client and the older server (both from git history,
the commit before the capability) keep working with the new ones."""

from __future__ import annotations

import json
import os
import subprocess
import sys
import textwrap
from pathlib import Path

import numpy as np
import pytest
from conftest import shared
from medsam_client.client import MedSAMClient, MedSAMError, slice_mask
from medsam_client.worker import LocalWorker

REPO = Path(__file__).resolve().parents[1]
BEFORE_TIME = "da74750"  # the last commit before capability "time" (client and server)
BOX = (225.0, 95.0, 325.0, 225.0)  # SOURCES.md's approximate LV box on the cropped frames
KEY, FIRST, LAST = 2, 0, 4  # a box on frame 2, propagated through frames 0..4


@pytest.fixture(scope="module")
def clip_rgb() -> np.ndarray:
    """All 120 colour frames of the real multi-frame US DICOM, (120, 480, 640, 3) uint8."""
    pydicom = pytest.importorskip("pydicom")
    ds = pydicom.dcmread(shared("echo_a4c/echo_a4c_us_multiframe.dcm"))
    return np.ascontiguousarray(ds.pixel_array)


@pytest.fixture(scope="module")
def cine() -> np.ndarray:
    """The first frames of the grey cine NRRD (frames along SimpleITK's k)."""
    import SimpleITK as sitk

    img = sitk.ReadImage(str(shared("echo_a4c/echo_a4c_cine.nrrd")))
    return sitk.GetArrayFromImage(img)[:LAST + 1]


def start(checkpoint: Path, log: Path, env: dict[str, str] | None = None) -> LocalWorker:
    return LocalWorker(sys.executable, checkpoint, device="cpu", log_path=log,
                       extra_args=["--precision", "fp32"], startup_timeout=180,
                       env=env).start()


@pytest.fixture(scope="module")
def live(random_checkpoint: Path, tmp_path_factory: pytest.TempPathFactory):  # noqa: ANN201
    w = start(random_checkpoint, tmp_path_factory.mktemp("time-server") / "server.log")
    try:
        yield w
    finally:
        w.stop()


def in_process(random_checkpoint: Path, frames: np.ndarray) -> np.ndarray:
    from medsam_server.engine import Engine, Prompt, Session

    session = Session(Engine.from_checkpoint(random_checkpoint, "cpu", precision="fp32"), frames)
    session.add_prompt(1, "k", KEY, Prompt(box=BOX))
    session.propagate(1, "k", first=FIRST, last=LAST)
    return session.mask(1)


def test_the_120_frame_colour_clip_is_one_upload_and_propagates_along_t(
        live: LocalWorker, clip_rgb: np.ndarray, random_checkpoint: Path) -> None:
    assert clip_rgb.shape == (120, 480, 640, 3)  # the premise: the whole RGB clip
    client = MedSAMClient(live.url, live.token)
    assert "time" in client.info().capabilities
    frames = np.ascontiguousarray(clip_rgb[:, 31:415, 84:596])  # the sector, as the cine
    puts = []
    send = client._http.request

    def counted(method: str, url: str, **kw: object):  # noqa: ANN202
        puts.extend([url] if method == "PUT" else [])
        return send(method, url, **kw)

    client._http.request = counted  # type: ignore[method-assign]
    session = client.upload(frames, modality="none", time=True, name="echo")
    assert len(puts) == 1 and session.time and session.shape == (120, 384, 512, 3)
    update = client.prompt(session, 1, "t", KEY, box=BOX)
    assert (update.axis, update.index) == ("t", KEY) and slice_mask(update).any()
    job = client.propagate(session, [1], axis="t", first=FIRST, last=LAST)
    assert job.state == "done"
    assert sorted(u.index for u in job.updates) == list(range(FIRST, LAST + 1))
    assert {u.axis for u in job.updates} == {"t"}
    mask = client.object_mask(session, 1)
    assert mask.shape == (120, 384, 512)
    assert not mask[LAST + 1:].any()  # nothing outside the range asked for
    # the frames went to the model in colour: the same masks as the engine on the RGB frames
    expected = in_process(random_checkpoint, frames[:LAST + 1])
    np.testing.assert_array_equal(mask[:LAST + 1], expected)
    client.close_session(session)


def test_time_session_refuses_what_it_cannot_do(live: LocalWorker, cine: np.ndarray) -> None:
    client = MedSAMClient(live.url, live.token)
    volume = client.upload(cine, modality="none")  # not a time session
    with pytest.raises(MedSAMError, match="axis 't' names the frames of a time session"):
        client.prompt(volume, 1, "t", 0, box=BOX)
    frames = client.upload(cine, modality="none", time=True)
    with pytest.raises(MedSAMError, match="along its frames"):
        client.prompt(frames, 1, "j", 0, box=(1, 1, 4, 4))
    bad = np.zeros((2, 8, 8, 3), np.float32)
    with pytest.raises(MedSAMError, match="uint8"):
        client.upload(bad, modality="none", time=True)
    # the RGB frames are not windowed: a CT window on them is refused by the server
    r = client._http.post(f"{live.url}/sessions", json={
        "shape": [2, 8, 8, 3], "dtype": "uint8", "sha256": "0" * 64, "time": True,
        "modality": "ct", "window": [40, 400]})
    assert r.status_code == 400 and "modality 'none'" in r.json()["message"]
    client.close_session(volume)
    client.close_session(frames)


def old_tree(tmp_path: Path, commit: str, *dirs: str) -> Path:
    """``dirs`` of the repository as they were at ``commit`` (skips without that history)."""
    out = tmp_path / f"at-{commit}"
    out.mkdir()
    archive = subprocess.run(["git", "-C", str(REPO), "archive", commit, *dirs],
                             capture_output=True)
    if archive.returncode != 0:
        pytest.skip(f"commit {commit} is not in this clone's history: "
                    f"{archive.stderr.decode().strip()[:200]}")
    subprocess.run(["tar", "-x", "-C", str(out)], input=archive.stdout, check=True)
    return out


OLD_CLIENT = textwrap.dedent("""
    import json, sys
    import numpy as np
    import medsam_client
    from medsam_client.client import MedSAMClient

    old, url, token, path = sys.argv[1:5]
    assert medsam_client.__file__.startswith(old), medsam_client.__file__
    client = MedSAMClient(url, token)
    session = client.upload(np.load(path), modality="none")  # frames as a volume
    client.prompt(session, 1, "k", 2, box=(225, 95, 325, 225))
    job = client.propagate(session, [1], first=0, last=4)
    mask = client.object_mask(session, 1)
    client.close_session(session)
    print(json.dumps({"job": job.state, "frames": [int(m.any()) for m in mask]}))
""")


def test_the_older_client_segments_frames_on_the_new_server(
        live: LocalWorker, cine: np.ndarray, tmp_path: Path) -> None:
    old = old_tree(tmp_path, BEFORE_TIME, "client/medsam_client")
    assert '"t"' not in (old / "client/medsam_client/protocol.py").read_text()  # the old one
    path = tmp_path / "cine.npy"
    np.save(path, cine)
    env = {**os.environ, "PYTHONPATH": str(old / "client")}
    proc = subprocess.run([sys.executable, "-c", OLD_CLIENT, str(old / "client"), live.url,
                           live.token, str(path)], capture_output=True, text=True, env=env,
                          timeout=300)
    assert proc.returncode == 0, proc.stderr[-2000:]
    result = json.loads(proc.stdout.strip().splitlines()[-1])
    assert result["job"] == "done" and len(result["frames"]) == LAST + 1

    # the new client's time session gives the old client's masks, named along "t"
    client = MedSAMClient(live.url, live.token)
    session = client.upload(cine, modality="none", time=True)
    client.prompt(session, 1, "t", KEY, box=BOX)
    client.propagate(session, [1], axis="t", first=FIRST, last=LAST)
    assert [int(m.any()) for m in client.object_mask(session, 1)] == result["frames"]
    client.close_session(session)


def test_the_new_client_uses_an_older_server_for_grey_frames(
        random_checkpoint: Path, cine: np.ndarray, tmp_path: Path) -> None:
    old = old_tree(tmp_path, BEFORE_TIME, "server/medsam_server", "client/medsam_client")
    assert not (old / "server/medsam_server/service/time_axis.py").exists()  # the old one
    env = {**os.environ,
           "PYTHONPATH": os.pathsep.join([str(old / "server"), str(old / "client")])}
    with start(random_checkpoint, tmp_path / "old-server.log", env) as w:
        client = MedSAMClient(w.url, w.token)
        assert "time" not in client.info().capabilities
        assert any("has no time sessions" in n for n in client.notes)
        session = client.upload(cine, modality="none", time=True)
        assert not session.time  # sent as a volume: its slices k are the frames
        update = client.prompt(session, 1, "t", KEY, box=BOX)  # "t" goes as "k"
        assert (update.axis, update.index) == ("k", KEY)
        job = client.propagate(session, [1], axis="t", first=FIRST, last=LAST)
        assert job.state == "done" and len(job.updates) == LAST - FIRST + 1
        colour = np.zeros((2, 8, 8, 3), np.uint8)
        with pytest.raises(MedSAMError, match="colour frames cannot be sent") as err:
            client.upload(colour, modality="none", time=True)
        assert err.value.code == "unsupported"
        client.close_session(session)
