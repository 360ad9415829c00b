"""Claim and release of a session (service/claims.py), and the interleavings that used to leak.

``SessionWork`` alone first, then the service in process with the model worker driven by
hand (``worker_thread=False``): a session is deleted at each point of a propagation's
start-up -- before its plan runs, between the planning and the job's claim, right after
the claim (where the old code had not yet set the job's release callback, and so leaked
the claim), and with the job queued -- and every time the session ends with no claim
held and its memory freed.
"""

from __future__ import annotations

import numpy as np
import pytest
from medsam_client import protocol as P
from medsam_server.service.claims import SessionWork
from medsam_server.service.config import ServiceConfig
from medsam_server.service.errors import Busy, SessionGone
from medsam_server.service.operations import Service


class FakeJob:
    def __init__(self, job_id: str) -> None:
        self.job_id = job_id
        self.claim = None
        self.cancelled = 0

    def attach_claim(self, claim) -> None:  # noqa: ANN001
        self.claim = claim

    def cancel(self) -> None:
        self.cancelled += 1


# ---------------------------------------------------------------- SessionWork alone
def test_claims_count_and_a_closed_session_is_freed_by_its_last_release() -> None:
    freed: list[int] = []
    work = SessionWork("s1", on_free=lambda: freed.append(1))
    a, b = work.claim(), work.claim()
    assert work.active == 2
    a.release()
    a.release()  # twice is harmless
    assert work.active == 1
    assert work.close() is None  # no job to cancel
    assert work.closed and not freed  # still in use: the memory stays
    with pytest.raises(SessionGone, match="s1 was closed"):
        work.claim()
    b.release()
    assert work.active == 0 and freed == [1]


def test_a_job_holds_the_session_from_its_claim_and_frees_it_when_released() -> None:
    freed: list[int] = []
    work = SessionWork("s1", on_free=lambda: freed.append(1))
    job = FakeJob("s1.j1")
    work.claim_job(job)
    assert job.claim is not None and work.job_id == "s1.j1" and work.active == 1
    with pytest.raises(Busy, match="busy with job s1.j1"):
        work.claim()
    with pytest.raises(Busy):
        work.claim_job(FakeJob("s1.j2"))
    assert work.close() is job  # the caller cancels it
    assert not freed
    job.claim.release()
    assert freed == [1] and work.job_id is None and work.active == 0


def test_closing_an_idle_session_frees_it_at_once() -> None:
    freed: list[int] = []
    work = SessionWork("s1", on_free=lambda: freed.append(1))
    work.claim().release()
    work.close()
    assert freed == [1]


# ---------------------------------------------------------------- the service, by hand
@pytest.fixture
def service(engine):
    svc = Service(ServiceConfig(token="t"), engine)  # no threads: items run when we say
    yield svc
    svc.close()


def _ready_session_with_a_prompt(service: Service):
    volume = np.random.default_rng(0).integers(0, 255, (2, 16, 16)).astype(np.uint8)
    meta = P.VolumeMeta(shape=[2, 16, 16], dtype="uint8", sha256=P.sha256_array(volume),
                        encoding="raw", modality="none")
    sid = service.create_session(meta).session_id
    s = service.sessions.get(sid)
    service.upload(s, volume.tobytes())
    future = service.prompt(s, P.PromptRequest(1, "k", 0, box=[2, 2, 12, 12]))
    service.worker.run_urgent()
    assert future.result(0).index == 0
    assert s.work.active == 0 and s.session is not None
    return s


def _assert_let_go(service: Service, s) -> None:  # noqa: ANN001
    assert s.closed and s.work.active == 0 and s.work.job_id is None
    assert s.session is None, "the closed session's memory is still held"
    assert service.sessions.memory()["total"] == 0
    assert service.jobs.pending() == 0


def test_deleted_before_the_plan_runs(service: Service) -> None:
    s = _ready_session_with_a_prompt(service)
    future = service.propagate(s, P.PropagateRequest([1]))
    assert s.work.active == 1  # the plan's claim
    service.delete_session(s)
    assert s.session is not None  # the queued plan still holds it
    service.worker.run_urgent()
    with pytest.raises(SessionGone):
        future.result(0)
    _assert_let_go(service, s)


@pytest.mark.parametrize("where", ["new", "add"], ids=["before-the-job-claim",
                                                       "right-after-the-job-claim"])
def test_deleted_while_the_job_is_being_set_up(service: Service, monkeypatch,
                                               where: str) -> None:
    """``new``: the job exists, unclaimed; ``add``: the job holds its claim but is not yet
    registered nor queued (the old code's window: no release callback set yet)."""
    s = _ready_session_with_a_prompt(service)
    real = getattr(service.jobs, where)
    made: list = []

    def interleaved(*args, **kwargs):  # noqa: ANN002, ANN003, ANN202
        service.delete_session(s)  # DELETE /sessions/{sid} arrives right here
        result = real(*args, **kwargs)
        made.append(result if where == "new" else args[0])
        return result

    monkeypatch.setattr(service.jobs, where, interleaved)
    future = service.propagate(s, P.PropagateRequest([1]))
    service.worker.run_urgent()
    if where == "new":  # closed before it could claim: the job never existed
        with pytest.raises(SessionGone):
            future.result(0)
        assert made[0].claim is None
    else:  # it had its claim: the deletion cancelled it, which released the claim
        assert future.result(0).state == "cancelled"  # so its client hears at once
        assert made[0].state == "cancelled" and made[0].claim is not None
    _assert_let_go(service, s)


def test_deleted_with_the_job_queued(service: Service) -> None:
    s = _ready_session_with_a_prompt(service)
    future = service.propagate(s, P.PropagateRequest([1]))
    service.worker.run_urgent()
    info = future.result(0)
    assert info.job_id.startswith(s.session_id + ".")  # a proxy routes jobs by their session
    assert s.work.job_id == info.job_id and s.work.active == 1
    service.delete_session(s)
    assert service.jobs.get(info.job_id).state == "cancelled"
    _assert_let_go(service, s)


def test_lapsed_lease_closes_a_session_at_work_and_cancels_its_job(service: Service) -> None:
    s = _ready_session_with_a_prompt(service)
    s.lease = True
    future = service.propagate(s, P.PropagateRequest([1]))
    service.worker.run_urgent()
    job = service.jobs.get(future.result(0).job_id)
    s.last_used = s.last_seen = service.sessions.clock() - 2 * service.config.lease_timeout_s
    assert service.sessions.expire() == [s.session_id]
    assert job.state == "cancelled"
    _assert_let_go(service, s)


def test_idle_expiry_spares_a_session_at_work(service: Service) -> None:
    s = _ready_session_with_a_prompt(service)  # no lease: only the idle clock applies
    future = service.propagate(s, P.PropagateRequest([1]))
    service.worker.run_urgent()
    job = service.jobs.get(future.result(0).job_id)
    s.last_used = s.last_seen = service.sessions.clock() - 2 * service.config.idle_timeout_s
    assert service.sessions.expire() == []  # its job holds it
    assert job.state == "queued" and not s.closed
    job.cancel()
    assert service.sessions.expire() == [s.session_id]
    _assert_let_go(service, s)
