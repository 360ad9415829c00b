"""Undo of an object's last prompt: the engine restores slices exactly, the service and the
client expose it (``POST /sessions/{sid}/objects/{oid}/undo``, capability "undo").

Real CT crop (4 slices around the liver), random-weight checkpoint on CPU. "Exactly": the
masks are voxel-equal to the state before the prompt, and what is computed next from the
restored state (a propagation) is voxel-equal to what the state before gave.
"""

from __future__ import annotations

import numpy as np
import pytest
from conftest import shared
from fastapi.testclient import TestClient
from medsam_client import protocol as P
from medsam_client.client import MedSAMClient, MedSAMError, slice_mask
from medsam_server.engine.preprocess import window_to_uint8
from medsam_server.engine.prompts import Prompt, PromptError
from medsam_server.engine.session import Session
from medsam_server.service.app import create_app
from medsam_server.service.config import ServiceConfig

CT = "totalseg_ct_abdomen_3mm/example_ct_sm.nii.gz"
K0, K1 = 12, 16
KEY, BOX = 2, (45, 27, 104, 85)  # slice 14 of the CT
FIX_KEY, FIX_BOX = 3, (50, 30, 100, 80)
POINT = (70.0, 60.0)
WINDOW = (40.0, 400.0)


@pytest.fixture(scope="module")
def ct_crop() -> np.ndarray:
    from medsam_server.io.volumes import read_volume

    return np.ascontiguousarray(read_volume(shared(CT)).array[K0:K1])


@pytest.fixture(scope="module")
def box_run(engine, ct_crop):
    """The state to come back to: a box on KEY, propagated (copies), and its session."""
    s = Session(engine, window_to_uint8(ct_crop, "ct", WINDOW))
    key = s.add_prompt(1, "k", KEY, Prompt(box=BOX))
    s.propagate(1)
    assert 0 < s.mask(1).sum() < s.mask(1).size
    return {"key_slice": key.mask, "mask": s.mask(1), "session": s,
            "logits": s.slice_logits(1, "k", KEY), "scores": s.slice_scores(1, "k", FIX_KEY)}


def test_engine_undo_restores_slices_exactly(box_run) -> None:
    s = box_run["session"]  # goes on from the box's run (and ends with the object undone)
    # before the box, every slice was empty and had no logits: that history costs nothing
    assert s.memory()["undo"] == 0 and s.undo_left(1) == 1

    # points refine the key slice only; undo gives back its mask and logits exactly
    refined = s.add_prompt(1, "k", KEY, Prompt(points=(POINT,), labels=(0,)))
    assert not np.array_equal(refined.mask, box_run["key_slice"])
    report = s.undo(1)
    assert (report.kind, report.index, report.slices, report.object_removed) == (
        "points", KEY, [KEY], False)
    np.testing.assert_array_equal(s.mask(1), box_run["mask"])
    np.testing.assert_array_equal(s.slice_logits(1, "k", KEY), box_run["logits"])

    # a correction box, propagated: undo restores every slice it and its run changed
    s.add_prompt(1, "k", FIX_KEY, Prompt(box=FIX_BOX))
    changed = s.propagate(1).slices
    assert not np.array_equal(s.mask(1), box_run["mask"])
    assert s.memory()["undo"] > 0  # the logits it replaced, kept for the undo
    report = s.undo(1)
    assert (report.kind, report.index, report.undo_left) == ("box", FIX_KEY, 1)
    assert report.slices == sorted(set(changed) | {FIX_KEY})
    np.testing.assert_array_equal(s.mask(1), box_run["mask"])
    assert s.slice_scores(1, "k", FIX_KEY) == box_run["scores"]
    # ... and what the next propagation starts from: the box's run again, voxel for voxel
    s.propagate(1)
    np.testing.assert_array_equal(s.mask(1), box_run["mask"])

    # the first prompt made the object: undoing it removes the object and its memory
    report = s.undo(1)
    assert report.object_removed and report.kind == "box" and s.object_ids == []
    memory = s.memory()
    assert (memory["masks"], memory["logits"], memory["undo"]) == (0, 0, 0)
    with pytest.raises(PromptError, match="unknown object 1"):
        s.undo(1)


def test_undo_history_is_bounded(engine, ct_crop) -> None:
    s = Session(engine, window_to_uint8(ct_crop, "ct", WINDOW), undo_depth=2)
    s.add_prompt(1, "k", KEY, Prompt(box=BOX))
    for x in (60.0, 70.0):
        s.add_prompt(1, "k", KEY, Prompt(points=((x, 50.0),), labels=(1,)))
    assert s.undo_left(1) == 2  # the box is beyond the depth: it cannot be taken back
    s.undo(1)
    s.undo(1)
    assert s.object_ids == [1]
    with pytest.raises(PromptError, match="no prompt to undo"):
        s.undo(1)


def test_client_undo_through_the_service(server, ct_crop, box_run) -> None:
    with MedSAMClient(server.url, server.token) as client:
        assert client.supports("undo") and client.notes == []
        session = client.upload(ct_crop, modality="ct", window=WINDOW)
        first = client.prompt(session, 1, "k", KEY, box=BOX)
        client.propagate(session, [1])
        client.prompt(session, 1, "k", FIX_KEY, box=FIX_BOX)
        client.propagate(session, [1])

        undone = client.undo(session, 1)
        assert (undone.object_id, undone.axis, undone.index, undone.kind) == (1, "k", FIX_KEY,
                                                                              "box")
        assert not undone.object_removed and undone.undo_left == 1
        restored = {u.index: slice_mask(u) for u in undone.updates}
        assert FIX_KEY in restored
        for index, mask in restored.items():  # each update is the slice as it is now
            np.testing.assert_array_equal(mask, box_run["mask"][index])
        np.testing.assert_array_equal(client.object_mask(session, 1), box_run["mask"])

        undone = client.undo(session, 1)
        assert undone.object_removed and undone.index == KEY and undone.undo_left == 0
        assert KEY in {u.index for u in undone.updates}
        assert not any(slice_mask(u).any() for u in undone.updates)
        assert client.session_info(session).objects == []
        with pytest.raises(MedSAMError) as err:
            client.undo(session, 1)
        assert (err.value.status, err.value.code) == (404, "object_not_found")
        assert first.index == KEY
        client.close_session(session)


def test_undo_with_nothing_left_is_a_409(engine) -> None:
    app = create_app(ServiceConfig(token="t", undo_depth=1), engine)
    with TestClient(app, headers={"Authorization": "Bearer t"}) as c:
        volume = np.random.default_rng(2).integers(0, 255, (2, 16, 16)).astype(np.uint8)
        sid = c.post("/sessions", json={"shape": [2, 16, 16], "dtype": "uint8",
                                        "sha256": P.sha256_array(volume), "encoding": "raw",
                                        "modality": "none"}).json()["session_id"]
        assert c.put(f"/sessions/{sid}/volume", content=volume.tobytes()).status_code == 200
        box = {"object_id": 4, "axis": "k", "index": 0, "box": [2, 2, 12, 12]}
        for index in (0, 1):
            assert c.post(f"/sessions/{sid}/prompt", json={**box, "index": index}).status_code \
                == 200
        r = c.post(f"/sessions/{sid}/objects/4/undo")
        assert r.status_code == 200 and r.json()["index"] == 1 and r.json()["undo_left"] == 0
        r = c.post(f"/sessions/{sid}/objects/4/undo")
        assert r.status_code == 409 and r.json()["error"] == "wrong_state"
        assert "no prompt left to undo" in r.json()["message"]
    app.state.service.close()
