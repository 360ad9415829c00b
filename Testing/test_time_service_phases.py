"""Capability "phases" on the service: 3D + time sessions over a 4D volume built from the real
abdomen CT with a known shift per phase (3 slices, 3 phases). One upload; a box on the key
phase propagated in 3D, then along t to the other phases, streamed per (phase, slice) with
progress and cancel; masks per phase equal to ``segment_phases`` (engine/phases.py) on the
same inputs; bad input refused with the session unchanged; the older client and server (from
git history, the commit before the capability) keep working with the new ones."""

from __future__ import annotations

import json
import os
import subprocess
import sys
import textwrap
import time
from pathlib import Path

import numpy as np
import pytest
import SimpleITK as sitk
from conftest import shared
from medsam_client.client import MedSAMClient, MedSAMError, slice_mask
from medsam_client.worker import LocalWorker

REPO = Path(__file__).resolve().parents[1]
BEFORE_PHASES = "9a8d1c5"  # the last commit before capability "phases" (client and server)
SLICES = slice(13, 16)  # three slices through the liver around its key slice 14
KEY_SLICE, BOX = 1, (45.0, 27.0, 104.0, 85.0)  # conftest's liver box, on the crop's slice 1
SHIFTS = (-3, 0, 3)  # phase p is the CT moved by SHIFTS[p] voxels along i
KEY_PHASE = 1
SPACING = (3.0, 3.0, 3.0)


@pytest.fixture(scope="module")
def phases() -> np.ndarray:
    """(3 phases, 3 slices, 101, 122) int16 HU: the CT shifted along i per phase."""
    ct = sitk.GetArrayFromImage(sitk.ReadImage(str(shared(
        "totalseg_ct_abdomen_3mm/example_ct_sm.nii.gz"))))[SLICES]
    return np.stack([np.roll(ct, shift, axis=2) for shift in SHIFTS])


def start(checkpoint: Path, log: Path, env: dict[str, str] | None = None) -> LocalWorker:
    return LocalWorker(sys.executable, checkpoint, device="cpu", log_path=log,
                       extra_args=["--precision", "fp32", "--no-warm-start"],
                       startup_timeout=180, env=env).start()


@pytest.fixture(scope="module")
def live(random_checkpoint: Path, tmp_path_factory: pytest.TempPathFactory):  # noqa: ANN201
    w = start(random_checkpoint, tmp_path_factory.mktemp("phases-server") / "server.log")
    try:
        yield w
    finally:
        w.stop()


@pytest.fixture(scope="module")
def expected(random_checkpoint: Path, phases: np.ndarray) -> np.ndarray:
    """segment_phases' labels on the same voxels, windowed as the CLI does (no largest
    component: the service keeps the model's masks as they are)."""
    from medsam_server.engine import (
        Engine,
        ObjectSpec,
        Prompt,
        segment_phases,
        window_to_uint8,
    )

    u8 = window_to_uint8(phases.reshape(-1, *phases.shape[2:]), "ct").reshape(phases.shape)
    for p, shift in enumerate(SHIFTS):  # the premise: the known motion is in the voxels
        np.testing.assert_array_equal(np.roll(u8[KEY_PHASE], shift, axis=2), u8[p])
    engine = Engine.from_checkpoint(random_checkpoint, "cpu", precision="fp32")
    spec = ObjectSpec(1, "liver", "k", KEY_SLICE, Prompt(box=BOX), (1.0, 0.0, 0.0))
    labels, _ = segment_phases(engine, np.ascontiguousarray(u8), KEY_PHASE, [spec], lcc=False)
    return labels == 1


@pytest.fixture(scope="module")
def carried(live: LocalWorker, phases: np.ndarray):  # noqa: ANN201
    """A 3D + time session: one upload, a box on the key phase, 3D, then along t."""
    client = MedSAMClient(live.url, live.token)
    puts: list[str] = []
    send = client._http.request

    def counted(method: str, url: str, **kw: object):  # noqa: ANN202
        puts.extend([url] if method == "PUT" else [])
        return send(method, url, **kw)

    client._http.request = counted  # type: ignore[method-assign]
    session = client.upload_phases(phases, key_phase=KEY_PHASE, spacing=SPACING, name="ct4d")
    prompt = client.prompt(session, 1, "k", KEY_SLICE, box=BOX, phase=KEY_PHASE)
    spatial = client.propagate(session, [1], axis="k")
    seen: list[tuple[int, int, int]] = []  # (state, done, total) per poll
    along_t = client.propagate_phases(
        session, [1], on_job=lambda j: seen.append((j.state, j.done_slices, j.total_slices)))
    yield client, session, puts, prompt, spatial, along_t, seen
    client.close_session(session)
    client.close()


def test_phases_session_gives_segment_phases_masks_per_phase(carried, phases, expected,
                                                             live) -> None:
    client, session, puts, prompt, spatial, along_t, seen = carried
    info = client.info()
    assert {"time", "phases"} <= set(info.capabilities)
    assert len(puts) == 1  # every phase in one upload
    assert session.shape == phases.shape and session.key_phase == KEY_PHASE
    assert (prompt.axis, prompt.index, prompt.phase) == ("k", KEY_SLICE, KEY_PHASE)
    assert spatial.state == "done" and {u.phase for u in spatial.updates} == {KEY_PHASE}
    # the premise: the engine's recipe carries something to every other phase
    carried_slices = [z for z in range(phases.shape[1]) if expected[KEY_PHASE, z].any()]
    assert len(carried_slices) >= 2 and all(expected[p].any() for p in range(len(SHIFTS)))
    others = [p for p in range(len(SHIFTS)) if p != KEY_PHASE]
    assert along_t.state == "done"
    got = {(u.phase, u.index): u for u in along_t.updates}
    assert len(got) == len(along_t.updates)  # one update per (phase, slice)
    assert set(got) == {(p, z) for p in others for z in carried_slices}
    assert {u.axis for u in along_t.updates} == {"k"}
    for (p, z), update in got.items():  # streamed as stored
        np.testing.assert_array_equal(slice_mask(update), expected[p, z])
    # progress: polled counts only grow, to the job's total, which every update filled
    done = [d for _, d, _ in seen]
    assert done == sorted(done) and seen[-1] == ("done", len(got), len(got))
    for p in range(len(SHIFTS)):  # per phase, equal to engine/phases.py
        np.testing.assert_array_equal(client.object_mask(session, 1, phase=p), expected[p])
    np.testing.assert_array_equal(client.object_mask(session, 1), expected)  # all at once


def test_cancel_along_t_stops_between_slices_and_keeps_the_session(carried, expected) -> None:
    client, session, *_, along_t, _ = carried
    full = len(along_t.updates)
    job_id = client.start_propagation(session, [1], axis="t")
    job = client.poll(job_id, 0, wait=60)
    deadline = time.monotonic() + 60
    while not job.updates and job.state in ("queued", "running") \
            and time.monotonic() < deadline:  # the poll also wakes on queued -> running
        job = client.poll(job_id, 0, wait=10)
    assert job.state == "running" and 1 <= len(job.updates) < full  # it was under way
    client.cancel(job_id)
    deadline = time.monotonic() + 60
    while job.state not in ("done", "cancelled", "failed") and time.monotonic() < deadline:
        job = client.poll(job_id, 0, wait=5)
    assert job.state == "cancelled"
    assert job.total_slices == full and len(job.updates) < full  # the premise: work was left
    time.sleep(0.5)
    assert client.poll(job_id, 0).done_slices == len(job.updates)  # nothing after the cancel
    # consistent: what it streamed is stored, the rest is the last full run's
    np.testing.assert_array_equal(client.object_mask(session, 1), expected)
    # and the session is free for the next job, which runs through
    again = client.propagate_phases(session, [1], first=KEY_PHASE, last=len(SHIFTS) - 1,
                                    direction="forward")
    assert again.state == "done" and {u.phase for u in again.updates} == {KEY_PHASE + 1}
    np.testing.assert_array_equal(client.object_mask(session, 1), expected)


def test_bad_input_is_refused_clearly_and_changes_nothing(carried, phases, live) -> None:
    client, session, *_ = carried
    before = client.object_mask(session, 1)
    sessions_before = client.info().sessions
    http, sid = client._http, session.session_id
    meta = {"dtype": "int16", "sha256": "0" * 64, "modality": "ct"}

    def refused(method: str, path: str, says: str, **kw: object) -> None:
        r = http.request(method, live.url + path, timeout=30, **kw)
        assert 400 <= r.status_code < 500 and says in r.json()["message"], (path, r.text)

    refused("POST", "/sessions", "key_phase 3 is outside 0..2",
            json={**meta, "shape": [3, 3, 8, 8], "phases": True, "key_phase": 3})
    refused("POST", "/sessions", "(phases, k, j, i)",
            json={**meta, "shape": [3, 3, 8, 8, 2], "phases": True})
    refused("POST", "/sessions", "must be 3 positive sizes", json={**meta, "shape": [3, 3, 8, 8, 2]})
    refused("POST", "/sessions", "exclude each other",
            json={**meta, "shape": [3, 3, 8, 8], "phases": True, "time": True})
    refused("POST", "/sessions", "key_phase names a phase",
            json={**meta, "shape": [3, 8, 8], "key_phase": 1})
    box = {"object_id": 1, "axis": "k", "index": KEY_SLICE, "box": list(BOX)}
    refused("POST", f"/sessions/{sid}/prompt", "prompts go on the key phase 1",
            json={**box, "phase": 0})
    refused("POST", f"/sessions/{sid}/prompt", "phase 5 is outside 0..2", json={**box, "phase": 5})
    refused("POST", f"/sessions/{sid}/prompt", "axis t is for propagating",
            json={**box, "axis": "t"})
    refused("POST", f"/sessions/{sid}/prompt", "(101, 122)", json={  # a key phase slice's
        "object_id": 1, "axis": "k", "index": 0, "phase": KEY_PHASE, "mask": {
            "dtype": "uint8", "shape": [4, 4], "data": "A" * 22 + "==", "encoding": "raw"}})
    along_t = {"object_ids": [1], "axis": "t"}
    refused("POST", f"/sessions/{sid}/propagate", "hold the key phase 1",
            json={**along_t, "first": 2, "last": 2})
    refused("POST", f"/sessions/{sid}/propagate", "within 0..2", json={**along_t, "last": 9})
    refused("POST", f"/sessions/{sid}/propagate", "starts on the key phase",
            json={**along_t, "start": 0})
    refused("GET", f"/sessions/{sid}/objects/1/mask?phase=3", "phase 3 is outside 0..2")
    # a raw body that does not hold the announced 4D shape: refused, nothing kept
    shape = [2, 2, 4, 4]
    created = http.post(live.url + "/sessions", json={
        "shape": shape, "dtype": "uint8", "sha256": "0" * 64, "encoding": "raw",
        "phases": True, "key_phase": 1}, timeout=30).json()["session_id"]
    refused("PUT", f"/sessions/{created}/volume", "need 64", data=b"\0" * 48)
    assert client.session_info(created).state == "awaiting_volume"
    client.close_session(created)
    # the client refuses what cannot be a 3D + time volume before sending anything
    with pytest.raises(MedSAMError, match="one grid"):
        client.upload_phases([phases[0], phases[1][:, :-1]], key_phase=0)
    with pytest.raises(MedSAMError, match="must be 4D"):
        client.upload_phases(phases[..., None], key_phase=0)
    with pytest.raises(MedSAMError, match="key phase 3 is outside 0..2"):
        client.upload_phases(phases, key_phase=3)
    with pytest.raises(MedSAMError, match="upload_phases"):
        client.upload(phases)  # a 4D array is not a volume
    # the session is as it was
    assert client.info().sessions == sessions_before
    assert client.session_info(session).objects == [1]
    np.testing.assert_array_equal(client.object_mask(session, 1), before)


def test_a_deleted_object_takes_its_carried_phases_along(carried, expected) -> None:
    """Last on the shared session: object 1 is deleted and drawn again."""
    client, session, *_ = carried
    assert client.object_mask(session, 1, phase=0).any()  # the premise: phase 0 was carried
    client.delete_object(session, 1)
    client.prompt(session, 1, "k", KEY_SLICE, box=BOX, phase=KEY_PHASE)
    again = client.object_mask(session, 1)
    assert not again[[p for p in range(len(SHIFTS)) if p != KEY_PHASE]].any()
    np.testing.assert_array_equal(again[KEY_PHASE, KEY_SLICE], expected[KEY_PHASE, KEY_SLICE])


def old_tree(tmp_path: Path, *dirs: str) -> Path:
    """``dirs`` as they were before the capability (skips without that history)."""
    out = tmp_path / f"at-{BEFORE_PHASES}"
    out.mkdir()
    archive = subprocess.run(["git", "-C", str(REPO), "archive", BEFORE_PHASES, *dirs],
                             capture_output=True)
    if archive.returncode != 0:
        pytest.skip(f"commit {BEFORE_PHASES} is not in this clone's history: "
                    f"{archive.stderr.decode().strip()[:200]}")
    subprocess.run(["tar", "-x", "-C", str(out)], input=archive.stdout, check=True)
    return out


OLD_CLIENT = textwrap.dedent("""
    import json, sys
    import numpy as np
    import medsam_client
    from medsam_client.client import MedSAMClient

    old, url, token, path, key_slice = sys.argv[1:6]
    assert medsam_client.__file__.startswith(old), medsam_client.__file__
    client = MedSAMClient(url, token)
    session = client.upload(np.load(path), spacing=(3, 3, 3))
    update = client.prompt(session, 1, "k", int(key_slice), box=(45, 27, 104, 85))
    job = client.propagate(session, [1], axis="k")
    mask = client.object_mask(session, 1)
    client.close_session(session)
    print(json.dumps({"job": job.state, "axis": update.axis, "mask": mask.tolist()}))
""")


def test_the_older_client_segments_a_volume_on_the_new_server(live, phases, expected,
                                                              tmp_path) -> None:
    old = old_tree(tmp_path, "client/medsam_client")
    assert "phases" not in (old / "client/medsam_client/protocol.py").read_text()  # the old one
    path = tmp_path / "key_phase.npy"
    np.save(path, phases[KEY_PHASE])
    env = {**os.environ, "PYTHONPATH": str(old / "client")}
    proc = subprocess.run([sys.executable, "-c", OLD_CLIENT, str(old / "client"), live.url,
                           live.token, str(path), str(KEY_SLICE)], capture_output=True,
                          text=True, env=env, timeout=300)
    assert proc.returncode == 0, proc.stderr[-2000:]
    result = json.loads(proc.stdout.strip().splitlines()[-1])
    assert (result["job"], result["axis"]) == ("done", "k")
    # the key phase as a plain volume: the 3D + time session's key phase, voxel for voxel
    np.testing.assert_array_equal(np.array(result["mask"], bool), expected[KEY_PHASE])


def test_the_new_client_refuses_phases_to_an_older_server(random_checkpoint, phases,
                                                          tmp_path) -> None:
    old = old_tree(tmp_path, "server/medsam_server", "client/medsam_client")
    assert not (old / "server/medsam_server/service/phases_axis.py").exists()  # the old one
    env = {**os.environ,
           "PYTHONPATH": os.pathsep.join([str(old / "server"), str(old / "client")])}
    with start(random_checkpoint, tmp_path / "old-server.log", env) as w:
        client = MedSAMClient(w.url, w.token)
        assert "phases" not in client.info().capabilities
        assert any("has no 3D + time sessions" in n for n in client.notes)
        with pytest.raises(MedSAMError, match="has no 3D \\+ time sessions.*update the server"
                           ) as err:
            client.upload_phases(phases, key_phase=KEY_PHASE)
        assert err.value.code == "unsupported"
        assert client.info().sessions == 0  # nothing was created there
        # what it can do still works, with no field it never knew sent
        session = client.upload(phases[KEY_PHASE], spacing=SPACING)
        update = client.prompt(session, 1, "k", KEY_SLICE, box=BOX)
        assert update.phase is None and slice_mask(update).any()
        client.close_session(session)
