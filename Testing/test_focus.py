"""Work while the user draws: ``POST /sessions/{sid}/focus`` (service/focus.py) and the
Slicer side that sends it (MedSAMSegmentLib/focus.py, views.shown_slice).

Ordering, not timing: a focus step is held on an event while the test queues a prompt,
a propagation or a newer focus, then every model call is recorded in the order it ran.
Volumes are tiny (16 x 16 pixels, a few slices) but every slice costs a real 512 px
encoder run on CPU (random-weight checkpoint).
"""

from __future__ import annotations

import threading

import numpy as np
import pytest
from fastapi.testclient import TestClient
from medsam_client import protocol as P
from medsam_client.client import MedSAMClient, MedSAMError
from medsam_server.engine.session import Session
from medsam_server.service.app import create_app
from medsam_server.service.config import ServiceConfig
from medsam_server.service.focus import focus_order
from medsam_server.service.operations import Service

WAIT = 300.0  # generous: other jobs share this CPU; every wait ends on an event
BOX = [2.0, 2.0, 12.0, 12.0]


def _volume(n: int, seed: int = 0) -> np.ndarray:
    return np.random.default_rng(seed).integers(0, 255, (n, 16, 16)).astype(np.uint8)


def _meta(volume: np.ndarray) -> P.VolumeMeta:
    return P.VolumeMeta(shape=list(volume.shape), dtype="uint8",
                        sha256=P.sha256_array(volume), encoding="raw", modality="none")


@pytest.fixture
def service(engine):
    svc = Service(ServiceConfig(token="t"), engine)
    svc.start()  # the model worker on its own thread, as in ``serve``
    yield svc
    svc.close()


def _session(service: Service, n: int):  # noqa: ANN202
    volume = _volume(n)
    s = service.sessions.get(service.create_session(_meta(volume)).session_id)
    service.upload(s, volume.tobytes())
    return s


class Held:
    """Records the slices ``es.prefetch`` is asked for; the first call waits for ``go``."""

    def __init__(self, es: Session, order: list, monkeypatch: pytest.MonkeyPatch) -> None:
        self.started, self.go = threading.Event(), threading.Event()
        real = es.prefetch

        def prefetch(axis: str, index: int, **kw) -> bool:  # noqa: ANN003
            order.append(("focus", index))
            if len(order) == 1:
                self.started.set()
                assert self.go.wait(WAIT)
            return real(axis, index, **kw)

        monkeypatch.setattr(es, "prefetch", prefetch)


# ---------------------------------------------------------------- pure
def test_focus_order_goes_outwards_within_the_volume() -> None:
    assert list(focus_order(2, 5)) == [2, 3, 1, 4, 0]
    assert list(focus_order(0, 4)) == [0, 1, 2, 3]
    assert list(focus_order(3, 4)) == [3, 2, 1, 0]
    assert list(focus_order(0, 1)) == [0]


# ---------------------------------------------------------------- engine session
def test_prefetch_encodes_once_and_never_past_a_budget(engine) -> None:
    es = Session(engine, _volume(3))
    calls = engine.encoder_calls
    assert not es.prefetch("k", 0, max_bytes=1)  # over the room it was given: not kept
    assert len(es.cache) == 0
    assert es.prefetch("k", 0) and ("k", 0) in es.cache
    assert not es.prefetch("k", 0)  # cached already: nothing to do
    entry = es.cache.nbytes
    es.cache.budget_bytes = entry + entry // 2  # not room for a second slice
    assert not es.prefetch("k", 1)  # known to be full: refused before encoding
    assert engine.encoder_calls - calls == 2
    assert list(es.cache._items) == [("k", 0)]


# ---------------------------------------------------------------- the service
def test_focus_encodes_the_slice_then_its_neighbours_outwards(service: Service, engine) -> None:
    s = _session(service, 5)
    calls = engine.encoder_calls
    work, replaced = service.start_focus(s, P.FocusRequest("k", 1))
    assert not replaced
    assert work.finished.wait(WAIT)
    assert work.ended == "done" and work.encoded == [1, 2, 0, 3, 4]
    assert engine.encoder_calls - calls == 5
    assert s.work.active == 0  # no claim left behind
    # a box on a focused slice needs only the decoder
    update = service.prompt(s, P.PromptRequest(1, "k", 3, box=BOX)).result(WAIT)
    assert update.index == 3 and engine.encoder_calls - calls == 5


def test_a_prompt_and_a_propagation_go_before_the_remaining_focus_slices(
        service: Service, monkeypatch: pytest.MonkeyPatch) -> None:
    s = _session(service, 5)
    es = s.session
    order: list[tuple[str, int]] = []
    held = Held(es, order, monkeypatch)
    real_prompt, real_propagate = es.add_prompt, es.propagate

    def add_prompt(oid: int, axis: str, index: int, prompt):  # noqa: ANN001, ANN202
        order.append(("prompt", index))
        return real_prompt(oid, axis, index, prompt)

    def propagate(oid: int, *args, **kwargs):  # noqa: ANN002, ANN003, ANN202
        order.append(("propagate", oid))
        return real_propagate(oid, *args, **kwargs)

    monkeypatch.setattr(es, "add_prompt", add_prompt)
    monkeypatch.setattr(es, "propagate", propagate)

    work, _ = service.start_focus(s, P.FocusRequest("k", 2))
    assert held.started.wait(WAIT)  # the focus is encoding slice 2
    prompted = service.prompt(s, P.PromptRequest(1, "k", 4, box=BOX))
    planned = service.propagate(s, P.PropagateRequest([1], first=3, last=4))
    held.go.set()
    assert prompted.result(WAIT).index == 4
    job = service.jobs.get(planned.result(WAIT).job_id)
    assert work.finished.wait(WAIT)
    assert job.state == "done"
    # the prompt encoded 4 and the job 3: the focus skipped them, then did 1 and 0
    assert order == [("focus", 2), ("prompt", 4), ("propagate", 1), ("focus", 1), ("focus", 0)]
    assert work.ended == "done" and work.encoded == [2, 1, 0]


def test_focus_never_evicts_the_features_a_prompt_or_job_uses(service: Service) -> None:
    s = _session(service, 5)
    es = s.session
    service.prompt(s, P.PromptRequest(1, "k", 0, box=BOX)).result(WAIT)
    entry = es.cache.nbytes
    es.cache.budget_bytes = 2 * entry  # room for exactly one more slice
    work, _ = service.start_focus(s, P.FocusRequest("k", 3))
    assert work.finished.wait(WAIT)
    assert work.ended == "full" and work.encoded == [3]
    assert ("k", 0) in es.cache and ("k", 3) in es.cache and es.cache.nbytes == 2 * entry


def test_focus_stays_within_the_servers_memory_budget(engine) -> None:
    volume = _volume(4)
    probe = Session(engine, volume)
    probe.prefetch("k", 0)
    entry = probe.cache.nbytes
    # the session itself (its voxels) plus one slice's features, and not a byte more
    budget = sum(probe.memory().values()) - entry + entry + entry // 2
    svc = Service(ServiceConfig(token="t", memory_budget_bytes=budget), engine)
    svc.start()
    try:
        s = _session(svc, 4)
        work, _ = svc.start_focus(s, P.FocusRequest("k", 0))
        assert work.finished.wait(WAIT)
        assert work.ended == "full" and work.encoded == [0]
        assert svc.sessions.memory()["total"] <= budget
    finally:
        svc.close()


def test_a_newer_focus_replaces_the_older(service: Service,
                                          monkeypatch: pytest.MonkeyPatch) -> None:
    s = _session(service, 5)
    order: list[tuple[str, int]] = []
    held = Held(s.session, order, monkeypatch)
    older, replaced = service.start_focus(s, P.FocusRequest("k", 0))
    assert not replaced and held.started.wait(WAIT)
    newer, replaced = service.start_focus(s, P.FocusRequest("k", 4))  # the user scrolled on
    assert replaced and older.ended == "replaced"
    held.go.set()
    assert newer.finished.wait(WAIT)
    # the older one would have gone on with 1; the newer starts at 4 and skips 0 (cached)
    assert order == [("focus", 0), ("focus", 4), ("focus", 3), ("focus", 2), ("focus", 1)]
    assert newer.ended == "done" and newer.encoded == [4, 3, 2, 1]


def test_a_queued_focus_holds_no_claim_and_ends_when_the_session_closes(
        service: Service) -> None:
    s = _session(service, 3)
    busy, go = threading.Event(), threading.Event()
    # another user's prompt is on the model: the focus waits, queued
    service.worker.submit(lambda: (busy.set(), go.wait(WAIT)), urgent=True, tag="other")
    assert busy.wait(WAIT)
    work, _ = service.start_focus(s, P.FocusRequest("k", 1))
    assert s.work.active == 0  # nothing pins the session: it may expire
    s.last_used = s.last_seen = service.sessions.clock() - 2 * service.config.idle_timeout_s
    assert service.sessions.expire() == [s.session_id]
    assert s.session is None and service.sessions.memory()["total"] == 0
    go.set()
    assert work.finished.wait(WAIT)
    assert work.ended == "closed" and work.encoded == []


def test_deleting_a_session_mid_focus_frees_it_after_that_slice(
        service: Service, monkeypatch: pytest.MonkeyPatch) -> None:
    s = _session(service, 3)
    order: list[tuple[str, int]] = []
    held = Held(s.session, order, monkeypatch)
    work, _ = service.start_focus(s, P.FocusRequest("k", 1))
    assert held.started.wait(WAIT)
    assert s.work.active == 1  # the slice being encoded holds the session
    service.delete_session(s)
    assert work.ended == "closed" and s.session is not None  # still in use by that slice
    held.go.set()
    # the worker runs one thing at a time: when this runs, that slice's step is over
    service.worker.submit(lambda: None, urgent=True, tag="probe").result(WAIT)
    # its claim went at its end, the memory with it, and no other slice started
    assert s.work.active == 0 and s.session is None and order == [("focus", 1)]


# ---------------------------------------------------------------- HTTP
@pytest.fixture(scope="module")
def http(engine):
    app = create_app(ServiceConfig(token="t" * 16), engine)
    with TestClient(app, headers={"Authorization": "Bearer " + "t" * 16}) as c:
        yield c
    app.state.service.close()


def test_the_route_answers_at_once_and_refuses_bad_input_clearly(http: TestClient) -> None:
    assert "focus" in http.get("/info").json()["capabilities"]
    volume = _volume(2)
    waiting = http.post("/sessions", json=P.to_json(_meta(volume))).json()["session_id"]
    sid = http.post("/sessions", json=P.to_json(_meta(volume))).json()["session_id"]
    assert http.put(f"/sessions/{sid}/volume", content=volume.tobytes()).status_code == 200

    r = http.post(f"/sessions/{sid}/focus", json={"axis": "k", "index": 1})
    assert r.status_code == 202, r.text
    focused = P.from_json(P.Focused, r.json())
    assert (focused.session_id, focused.axis, focused.index) == (sid, "k", 1)
    assert "slice 1 along axis k, then its neighbours" in focused.message
    r = http.post(f"/sessions/{sid}/focus", json={"axis": "j", "index": 15})
    assert r.status_code == 202 and r.json()["replaced"] is True

    def refused(path: str, body: dict, headers: dict | None = None) -> tuple[int, str, str]:
        r = http.post(path, json=body, headers=headers)
        return r.status_code, r.json()["error"], r.json()["message"]

    status, code, message = refused(f"/sessions/{sid}/focus", {"axis": "k", "index": 2})
    assert (status, code) == (400, "bad_input") and "outside 0..1 along axis k" in message
    assert refused(f"/sessions/{sid}/focus", {"axis": "k", "index": -1})[:2] == (400, "bad_input")
    status, code, message = refused(f"/sessions/{sid}/focus", {"axis": "x", "index": 0})
    assert (status, code) == (422, "invalid_request") and "axis" in message
    assert refused(f"/sessions/{sid}/focus", {"axis": "k"})[:2] == (422, "invalid_request")
    assert refused("/sessions/nope/focus", {"axis": "k", "index": 0})[:2] == (404, "session_gone")
    status, code, message = refused(f"/sessions/{waiting}/focus", {"axis": "k", "index": 0})
    assert (status, code) == (409, "wrong_state") and "upload it first" in message
    assert refused(f"/sessions/{sid}/focus", {"axis": "k", "index": 0},
                   {"Authorization": "Bearer wrong"})[:2] == (401, "unauthorized")
    http.delete(f"/sessions/{sid}")
    assert refused(f"/sessions/{sid}/focus", {"axis": "k", "index": 0})[:2] == (404, "session_gone")


def test_a_focus_renews_the_idle_clock_and_the_lease(http: TestClient) -> None:
    service: Service = http.app.state.service
    volume = _volume(1)
    sid = http.post("/sessions", json={**P.to_json(_meta(volume)), "lease": True}).json()[
        "session_id"]
    assert http.put(f"/sessions/{sid}/volume", content=volume.tobytes()).status_code == 200
    s = service.sessions.get(sid, work=False)
    s.last_used = s.last_seen = service.sessions.clock() - 10.0
    assert http.post(f"/sessions/{sid}/focus", json={"axis": "k", "index": 0}).status_code == 202
    info = http.get(f"/sessions/{sid}").json()
    assert info["idle_left_s"] > service.config.idle_timeout_s - 5
    assert info["lease_left_s"] > service.config.lease_timeout_s - 5


# ---------------------------------------------------------------- the client
def test_the_client_focuses_on_a_real_server(server) -> None:
    with MedSAMClient(server.url, server.token) as client:
        session = client.upload(np.zeros((2, 16, 16), np.int16), modality="ct")
        assert client.supports("focus") and not any("focus" in n for n in client.notes)
        assert client.focus(session, "k", 1) is True
        assert client.prompt(session, 1, "k", 1, box=BOX).index == 1
        client.close_session(session)
        with pytest.raises(MedSAMError, match="no longer has this session") as err:
            client.focus(session, "k", 0)
        assert err.value.code == P.SESSION_GONE


# ---------------------------------------------------------------- Slicer side, pure
class FakeTimer:
    """A clock and a one-shot timer the test runs by hand."""

    def __init__(self) -> None:
        self.now = 0.0
        self.armed: list[float] = []  # deadlines

    def start(self, seconds: float) -> None:
        self.armed.append(self.now + seconds)

    def run_until(self, t: float, debouncer) -> None:  # noqa: ANN001
        while self.armed and min(self.armed) <= t:
            deadline = min(self.armed)
            self.armed.remove(deadline)
            self.now = deadline
            debouncer.fire()
        self.now = t


def test_the_debouncer_hands_on_the_last_view_once_scrolling_pauses() -> None:
    from MedSAMSegmentLib.focus import Debouncer

    timer, settled = FakeTimer(), []
    d = Debouncer(0.3, settled.append, clock=lambda: timer.now, start_timer=timer.start)
    for step in range(5):  # a wheel step every 0.1 s
        timer.run_until(step * 0.1, d)
        d.poke(f"slice {step}")
    assert len(timer.armed) == 1  # one timer at a time, however many pokes
    timer.run_until(0.65, d)
    assert settled == []  # 0.25 s since the last poke
    timer.run_until(0.7, d)
    assert settled == ["slice 4"] and timer.armed == []
    timer.run_until(2.0, d)
    assert settled == ["slice 4"]  # nothing new: nothing sent
    d.poke("view entered")
    d.cancel()  # the effect was deactivated
    timer.run_until(3.0, d)
    assert settled == ["slice 4"]


def test_the_sender_sends_the_newest_slice_once_on_the_worker_thread() -> None:
    from MedSAMSegmentLib.focus import FocusSender
    from MedSAMSegmentLib.tasks import Task, TaskRunner

    class Target:
        def __init__(self) -> None:
            self.sent: list[tuple[str, int, str]] = []

        def focus(self, axis: str, index: int) -> bool:
            self.sent.append((axis, index, threading.current_thread().name))
            return True

    runner = TaskRunner()

    def busy_worker() -> threading.Event:  # a prompt in flight: focus tasks queue behind
        gate = threading.Event()
        runner.submit(Task("a prompt in flight", lambda task: gate.wait(WAIT)))
        return gate

    def settle() -> None:  # tasks run in order: when this one has run, so have the others
        done = threading.Event()
        runner.submit(Task("probe", lambda task: done.set()))
        assert done.wait(WAIT)

    try:
        a, b = Target(), Target()
        sender = FocusSender(runner)
        gate = busy_worker()
        assert sender.send(a, "k", 3) and sender.send(a, "k", 4)
        assert not sender.send(a, "k", 4)  # the same slice again (a pan, a zoom)
        gate.set()
        settle()
        assert a.sent == [("k", 4, "MedSAM2 worker")]  # only the newest, off the main thread
        assert not sender.send(a, "k", 4)
        gate = busy_worker()
        assert sender.send(b, "k", 4)  # another session: the same slice is news
        assert sender.send(a, "k", 4)  # and back
        gate.set()
        settle()
        assert b.sent == [] and [t[:2] for t in a.sent] == [("k", 4), ("k", 4)]
    finally:
        runner.shutdown()


# ---------------------------------------------------------------- Slicer side, MRML
def test_the_view_gives_the_axis_and_slice_it_shows_or_none() -> None:
    harness = pytest.importorskip("slicer_harness")
    import vtk
    from conftest import shared
    from MedSAMSegmentLib.views import jump_views, shown_slice

    app = harness.make_scene()
    ct = app.load_volume(shared("totalseg_ct_abdomen_3mm/example_ct_sm.nii.gz"), "ct_focus")
    _, _, logic = app.editor(ct)
    assert logic.UpdateAlignedSourceVolume()
    image = logic.GetAlignedSourceVolume()
    red, _ = app.slice_view("FocusRed", "Axial", ct)
    green, _ = app.slice_view("FocusGreen", "Coronal", ct)
    yellow, _ = app.slice_view("FocusYellow", "Sagittal", ct)
    jump_views([red], image, "k", 21)
    assert shown_slice(red, image) == ("k", 21)
    assert shown_slice(green, image)[0] == "j" and shown_slice(yellow, image)[0] == "i"
    rot = vtk.vtkTransform()
    rot.RotateX(25)
    red.GetSliceToRAS().DeepCopy(rot.GetMatrix())
    red.UpdateMatrices()
    assert shown_slice(red, image) is None  # oblique: no slice of the volume to encode


def test_the_controller_focuses_only_on_a_session_that_exists(monkeypatch) -> None:  # noqa: ANN001
    harness = pytest.importorskip("slicer_harness")
    from conftest import shared
    from MedSAMSegmentLib.controller import Controller
    from MedSAMSegmentLib.editor import LogicEditorContext
    from MedSAMSegmentLib.server_session import ServerSession
    from MedSAMSegmentLib.tasks import Task, TaskRunner
    from MedSAMSegmentLib.views import jump_views

    app = harness.make_scene()
    ct = app.load_volume(shared("totalseg_ct_abdomen_3mm/example_ct_sm.nii.gz"), "ct_focus2")
    seg, node, logic = app.editor(ct)
    node.SetSelectedSegmentID(app.add_segment(seg, "liver"))
    red, _ = app.slice_view("FocusRed2", "Axial", ct)
    runner = TaskRunner()
    sent: list[tuple[str, int]] = []
    monkeypatch.setattr(ServerSession, "focus",
                        lambda self, axis, index: sent.append((axis, index)) or True)
    ctl = Controller(LogicEditorContext(logic), runner, lambda: None,
                     on_message=lambda text, level: None)
    try:
        assert not ctl.focus_view(red)  # no box yet: no session to encode into
        ctl._prepare()  # what the first box does before it uploads
        image = ctl.volume.reference
        jump_views([red], image, "k", 12)
        assert not ctl.focus_view(red)  # the server has no session yet: nothing uploaded
        ctl.session.handle = object()  # the first box's upload happened
        gate, done = threading.Event(), threading.Event()
        runner.submit(Task("a prompt in flight", lambda task: gate.wait(WAIT)))
        assert ctl.focus_view(red) and not ctl.focus_view(red)  # once per slice
        jump_views([red], image, "k", 13)  # scrolled on before it was sent
        assert ctl.focus_view(red)
        gate.set()
        runner.submit(Task("probe", lambda task: done.set()))  # runs after the focus task
        assert done.wait(WAIT)
        assert sent == [("k", 13)]  # the newest only
    finally:
        ctl.session.handle = None
        runner.shutdown()


# ---- bench/bench_engine.py's focus figures: they run (the figures are the bench's) ------------


def test_bench_engine_focus_parts_run(engine) -> None:
    from bench_engine import DICOM, after_drawing, first_box, make_volume

    if not DICOM.is_dir():
        pytest.skip(f"benchmark data missing: {DICOM}")
    vol = make_volume(6)  # the bench's own 512² CT slices (its boxes are drawn for them)
    box = first_box(engine, vol, "cpu", rounds=1)
    assert set(box) == {"cold", "focused"} and min(box.values()) > 0
    before = engine.encoder_calls
    drawn = after_drawing(engine, vol, "cpu", drawing_s=1e-9)  # time for one slice only
    assert drawn["slices_focused"] == 1  # the key slice, focused first
    assert set(drawn) == {"drawing_s", "slices_focused", "propagation_cold_s",
                          "propagation_after_drawing_s", "saved_s", "encode_s_per_slice"}
    # cold: every slice encoded once; after drawing: the focused one was not encoded again
    assert engine.encoder_calls - before == 2 * vol.shape[0]
