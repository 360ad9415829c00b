"""Schemathesis against the service's own OpenAPI schema: no input may cause a 5xx.

In-process (ASGI) with the real engine on CPU. Routes that need a live session get the
id of a real one (a tiny 2-slice volume with a prompted object and a finished job), so
prompt and propagate bodies reach validation and, when valid, the model. Every route
gets the same fixed number of examples (no clock: a slow machine runs them all, slower).
"""

from __future__ import annotations

from collections.abc import Iterator

import numpy as np
import pytest
import schemathesis
from fastapi.testclient import TestClient
from hypothesis import HealthCheck, given, settings
from hypothesis import strategies as st
from medsam_client import protocol as P
from medsam_server.service.app import create_app
from medsam_server.service.config import ServiceConfig
from schemathesis import GenerationMode
from schemathesis.checks import not_a_server_error
from schemathesis.specs.openapi.checks import (
    content_type_conformance,
    response_schema_conformance,
    status_code_conformance,
)

TOKEN = "fuzz-token"
AUTH = {"Authorization": f"Bearer {TOKEN}"}
EXAMPLES = 50  # per route, positive and negative cases mixed
# no 5xx, and every answer (errors too) is documented in the schema and matches it
CHECKS = [not_a_server_error, status_code_conformance, content_type_conformance,
          response_schema_conformance]
ROUTES = [
    ("GET", "/health"), ("GET", "/info"), ("POST", "/sessions"),
    ("PUT", "/sessions/{sid}/volume"), ("GET", "/sessions/{sid}"),
    ("POST", "/sessions/{sid}/prompt"), ("POST", "/sessions/{sid}/propagate"),
    ("GET", "/sessions/{sid}/objects/{oid}/mask"), ("DELETE", "/sessions/{sid}/objects/{oid}"),
    ("GET", "/jobs/{jid}"), ("POST", "/jobs/{jid}/cancel"), ("POST", "/sessions/{sid}/heartbeat"),
    ("POST", "/sessions/{sid}/focus"),
    # undo takes the ready session's prompts back: late, so the routes above still see them
    ("POST", "/sessions/{sid}/objects/{oid}/undo"), ("DELETE", "/sessions/{sid}"),
]


@pytest.fixture(scope="module")
def fuzz_app(engine) -> Iterator[tuple[object, dict[str, str]]]:
    app = create_app(ServiceConfig(token=TOKEN, max_upload_bytes=1 << 20, max_sessions=10_000,
                                   max_wait_s=2.0), engine)
    client = TestClient(app, headers=AUTH)
    volume = np.random.default_rng(1).integers(0, 255, (2, 16, 16)).astype(np.uint8)
    meta = {"shape": [2, 16, 16], "dtype": "uint8", "sha256": P.sha256_array(volume),
            "encoding": "raw", "modality": "none"}
    ready = client.post("/sessions", json=meta).json()["session_id"]
    assert client.put(f"/sessions/{ready}/volume", content=volume.tobytes()).status_code == 200
    r = client.post(f"/sessions/{ready}/prompt",
                    json={"object_id": 1, "axis": "k", "index": 0, "box": [2, 2, 12, 12]})
    assert r.status_code == 200, r.text
    job = client.post(f"/sessions/{ready}/propagate", json={"object_ids": [1]}).json()
    while job["state"] not in ("done", "failed", "cancelled"):
        job = client.get(f"/jobs/{job['job_id']}", params={"wait": 2}).json()
    assert job["state"] == "done"
    waiting = client.post("/sessions", json=meta).json()["session_id"]
    yield app, {"ready": ready, "waiting": waiting, "job": job["job_id"]}
    app.state.service.close()


@pytest.fixture(scope="module")
def api_schema(fuzz_app):  # noqa: ANN201
    return schemathesis.openapi.from_asgi("/openapi.json", fuzz_app[0], headers=AUTH)


def test_every_route_is_fuzzed(api_schema) -> None:
    found = {(op.ok().method.upper(), op.ok().path) for op in api_schema.get_all_operations()}
    assert found == set(ROUTES)


# Driven by hand with hypothesis (not schemathesis' pytest plugin, whose lazy loader does
# not work with this pytest), one test per route.
@pytest.mark.parametrize(("method", "path"), ROUTES, ids=[f"{m} {p}" for m, p in ROUTES])
def test_no_server_errors(api_schema, fuzz_app, method: str, path: str) -> None:
    ids = fuzz_app[1]
    fixed: dict[str, object] = {}
    # real ids, so bodies get past the 404 to validation (deleting a session stays random)
    if "{sid}" in path and not (method == "DELETE" and path == "/sessions/{sid}"):
        fixed["sid"] = ids["waiting"] if path.endswith("/volume") else ids["ready"]
    if "{jid}" in path:
        fixed["jid"] = ids["job"]
    operation = api_schema[path][method]
    strategy = st.one_of(*(operation.as_strategy(mode, path_parameters=fixed, headers=AUTH)
                           for mode in (GenerationMode.POSITIVE, GenerationMode.NEGATIVE)))
    calls = []

    @settings(max_examples=EXAMPLES, deadline=None, database=None,
              suppress_health_check=list(HealthCheck))
    @given(case=strategy)
    def fuzz(case) -> None:  # noqa: ANN001
        response = case.call_and_validate(headers=AUTH, checks=CHECKS)
        calls.append(response.status_code)
        assert response.status_code < 500
        if response.status_code >= 400:
            body = response.json()
            assert set(body) == {"error", "message"}, body

    fuzz()
    # routes with a body, a query or a free path parameter get many different cases
    varied = method in ("POST", "PUT", "DELETE") or "?" in operation.path or "{oid}" in path \
        or path == "/jobs/{jid}"
    bodiless = path in ("/jobs/{jid}/cancel", "/sessions/{sid}/heartbeat")  # ids fixed above
    assert len(calls) >= (5 if varied and not bodiless else 1), calls


coord = st.floats(0, 16) | st.floats(-4, 20, allow_nan=False)  # mostly inside the slice


@st.composite
def near_valid_prompts(draw: st.DrawFn) -> dict:
    clicks = draw(st.lists(st.tuples(coord, coord, st.integers(0, 1) | st.integers(-1, 2)),
                           max_size=3))
    return {"object_id": draw(st.integers(1, 3)), "axis": "k",
            "index": draw(st.integers(0, 1) | st.integers(-1, 2)),
            "box": draw(st.lists(coord, min_size=4, max_size=4) | st.none()),
            "points": [[x, y] for x, y, _ in clicks],
            "point_labels": [label for *_, label in clicks]}


@settings(max_examples=30, deadline=None, database=None, suppress_health_check=list(HealthCheck))
@given(body=near_valid_prompts())
def test_near_valid_prompts_reach_the_model_safely(fuzz_app, body: dict) -> None:
    """Bodies close to valid (edges, degenerate boxes, points on borders) so that many
    of them run the model: any answer but a 5xx is fine, and a 200 is a real mask."""
    client = TestClient(fuzz_app[0], headers=AUTH)
    r = client.post(f"/sessions/{fuzz_app[1]['ready']}/prompt", json=body)
    assert r.status_code in (200, 400, 409), r.text
    if r.status_code == 200:
        update = P.from_json(P.SliceUpdate, r.json())
        assert P.uncrop_mask(update.mask).shape == (16, 16)
    else:
        assert set(r.json()) == {"error", "message"}
