"""ServerSession (the Slicer side's record of a server session) against a real server.

A small real CT crop keeps it fast. The server "forgetting" a session is made for real:
the session is closed on the server behind the ServerSession's back (what expiry or a
restart does); replays are compared with an uninterrupted session doing the same work.
"""

from __future__ import annotations

import numpy as np
import pytest
from conftest import shared
from medsam_client.client import MedSAMClient, slice_mask
from MedSAMSegmentLib.backend import RemoteBackend
from MedSAMSegmentLib.server_session import PromptOp, PropagateOp, ServerSession, VolumeUpload

CT = "totalseg_ct_abdomen_3mm/example_ct_sm.nii.gz"
K0, K1 = 11, 17  # 6 slices around the liver
KEY, BOX, BOX2 = 3, (45.0, 27.0, 104.0, 85.0), (15.0, 40.0, 50.0, 80.0)




@pytest.fixture(scope="module")
def volume() -> VolumeUpload:
    from medsam_server.io.volumes import read_volume

    arr = np.ascontiguousarray(read_volume(shared(CT)).array[K0:K1])
    return VolumeUpload(arr, (3.0, 3.0, 3.0), "ct", (40.0, 400.0), "crop")


def session(server, volume, notes=None):
    backend = RemoteBackend(server.url, server.token)
    notify = notes.append if notes is not None else None
    return ServerSession(lambda: backend, volume, notify=notify), backend


def work(s: ServerSession) -> None:
    s.prompt(PromptOp(1, "k", KEY, box=BOX))
    s.propagate(PropagateOp((1,), "k"), on_update=lambda u: None)
    s.prompt(PromptOp(2, "k", KEY, box=BOX2))
    s.propagate(PropagateOp((2,), "k", direction="forward"), on_update=lambda u: None)


def test_a_forgotten_session_is_rebuilt_by_replay_and_the_call_retried(server, volume):
    notes: list[str] = []
    broken, backend = session(server, volume, notes)
    reference, _ = session(server, volume)
    work(broken)
    work(reference)
    assert broken.uploads == 1
    client = backend.client()
    before = {oid: client.object_mask(reference.handle, oid) for oid in (1, 2)}
    # the server forgets it (expiry, restart): the next call replays, then runs
    MedSAMClient(server.url, server.token).close_session(broken.handle)
    update = broken.prompt(PromptOp(1, "k", 5, points=((70.0, 50.0),), labels=(1,),
                                    kind="points"))
    expected = reference.prompt(PromptOp(1, "k", 5, points=((70.0, 50.0),), labels=(1,),
                                         kind="points"))
    assert broken.uploads == 2
    assert "no longer has this volume's session" in notes[-1]
    assert "Replaying 2 prompt(s) and 2 propagation(s) of 2 segment(s)" in notes[-1]
    report = broken.pop_replay()
    assert (report.prompts, report.propagations) == (2, 2)
    for oid in (1, 2):  # the replay rebuilt exactly what the uninterrupted session had
        assert np.array_equal(report.masks[oid], before[oid])
    assert np.array_equal(slice_mask(update), slice_mask(expected))
    assert broken.pop_replay() is None


def test_cancelled_runs_and_deleted_objects_replay_as_they_ended(server, volume):
    import threading

    notes: list[str] = []
    s, backend = session(server, volume, notes)
    s.prompt(PromptOp(1, "k", KEY, box=BOX))
    stop = threading.Event()
    job = s.propagate(PropagateOp((1,), "k"), on_update=lambda u: stop.set(), cancel=stop)
    assert job.state == "cancelled"
    s.prompt(PromptOp(3, "k", KEY, box=BOX2))
    s.delete_object(3)
    kinds = [type(op).__name__ for op in s.history]
    assert kinds == ["PromptOp", "PromptOp", "DeleteOp"]  # the cancelled run is not recorded
    MedSAMClient(server.url, server.token).close_session(s.handle)
    s.prompt(PromptOp(1, "k", 4, box=BOX))
    report = s.pop_replay()
    assert sorted(report.masks) == [1] and report.propagations == 0
    assert backend.client().session_info(s.handle).objects == [1]


def test_new_window_or_new_backend_resend_and_replay(server, volume):
    notes: list[str] = []
    s, backend = session(server, volume, notes)
    s.prompt(PromptOp(1, "k", KEY, box=BOX))
    first = s.handle
    s.replace_volume(VolumeUpload(volume.array, volume.spacing, "ct", (50.0, 350.0), "crop"))
    assert s.handle is None
    s.prompt(PromptOp(1, "k", 4, box=BOX))
    assert s.handle.session_id != first.session_id and s.handle.window == (50.0, 350.0)
    assert "new intensity settings" in notes[-1]
    # the user switches servers in the settings: another backend object
    other = RemoteBackend(server.url, server.token)
    s.backend = lambda: other
    s.prompt(PromptOp(1, "k", 2, box=BOX))
    assert s.uploads == 3 and "switched servers" in notes[-1]
    assert s.pop_replay().prompts == 2
    s.close()
    assert s.handle is None


def test_test_connection_names_device_and_precision(server):
    report = RemoteBackend(server.url, server.token).test_connection()
    assert report.precision in ("fp32", "bf16")  # what auto gave on this CPU
    assert report.kernels == "onednn"  # this x86-64 CPU
    assert f"on cpu in {report.precision} (onednn kernels), checkpoint sha256" \
        in report.summary()
