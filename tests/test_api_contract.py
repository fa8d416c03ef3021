"""The API's contract in-process (the app object with FastAPI's TestClient, a real Redis, a real bundle):
status codes, the one error body shape, and what each error counts. The live-process tests (e2e) cover
the same app over a socket."""

from __future__ import annotations

import time

import pytest
from fastapi.testclient import TestClient

from service.api import create_app
from service.core.settings import Settings
from tests.helpers import fields_of, metric

TOKEN = "contract-token"


def _ready(client: TestClient, timeout_s: float = 30.0) -> None:
    deadline = time.monotonic() + timeout_s
    while client.get("/readyz").status_code != 200:
        assert time.monotonic() < deadline, client.get("/readyz").text
        time.sleep(0.05)


@pytest.fixture(scope="module")
def api(bundle_dir, redis_url):
    settings = Settings(bundle=str(bundle_dir), redis_url=redis_url, admin_token=TOKEN, bundle_poll_s=0.1)
    with TestClient(create_app(settings)) as client:
        _ready(client)
        yield client


def assert_error_shape(response, status: int) -> list[dict]:
    assert response.status_code == status, response.text
    detail = response.json()["detail"]
    assert isinstance(detail, list) and detail
    for problem in detail:
        assert set(problem) == {"field", "message", "type"} and problem["message"]
    return detail


def test_every_error_has_one_shape(api):
    assert_error_shape(api.post("/rank", content=b"{nope", headers={"content-type": "application/json"}), 422)
    assert fields_of(api.post("/rank", json={"task": "search", "country": "US"})) == ["query"]
    [problem] = assert_error_shape(api.get("/entities/no-such-entity"), 404)
    assert problem["type"] == "not_found" and problem["field"] is None
    assert assert_error_shape(api.get("/no-such-path"), 404)[0]["type"] == "http"
    assert_error_shape(api.get("/rank"), 405)
    [problem] = assert_error_shape(api.post("/entities", json=[{"entity_id": "x", "title": "X"}]), 401)
    assert problem["type"] == "unauthorized"
    r = api.post(
        "/entities", json=[{"entity_id": "e000001", "title": "Renamed"}], headers={"authorization": f"Bearer {TOKEN}"}
    )
    assert assert_error_shape(r, 409)[0]["type"] == "trained_entity" and r.json()["entity_ids"] == ["e000001"]


def test_errors_are_counted_by_type(api):
    before = {t: metric(api, "unirank_errors_total", {"type": t}) for t in ("validation", "not_found", "unauthorized")}
    api.post("/rank", json={"task": "nope", "country": "US"})
    api.get("/entities/no-such-entity")
    api.post("/entities", json=[])
    for t, b in before.items():
        assert metric(api, "unirank_errors_total", {"type": t}) == b + 1, t


def test_a_request_records_its_stages_once(api):
    """Server-Timing is formatted from the stages a request recorded exactly once (no double counting)."""
    before = metric(api, "unirank_stage_duration_seconds_count", {"stage": "total"})
    r = api.post("/rank", json={"task": "search", "country": "US", "query": "th", "k": 5})
    assert r.status_code == 200 and "total;dur=" in r.headers["server-timing"]
    assert metric(api, "unirank_stage_duration_seconds_count", {"stage": "total"}) == before + 1


def test_not_ready_is_a_503_with_retry_after(tmp_path, redis_url):
    settings = Settings(bundle=str(tmp_path / "not-there"), redis_url=redis_url, bundle_poll_s=0.1)
    with TestClient(create_app(settings)) as client:
        [problem] = assert_error_shape(client.post("/rank", json={"task": "prequery", "country": "US"}), 503)
        assert problem["type"] == "not_ready"
        deadline = time.monotonic() + 10
        while "no bundle at" not in client.get("/readyz").json()["reason"]:  # once it looked, it says where
            assert time.monotonic() < deadline
            time.sleep(0.05)
        assert client.post("/rank", json={"task": "prequery", "country": "US"}).headers["retry-after"] == "1"
        assert client.get("/readyz").status_code == 503 and client.get("/healthz").status_code == 200
        # invalid input is still named while not ready
        assert_error_shape(client.post("/events", json=[{"user_id": "u"}]), 422)


def test_admin_endpoints_are_off_without_a_token(bundle_dir, redis_url):
    with TestClient(create_app(Settings(bundle=str(bundle_dir), redis_url=redis_url))) as client:
        _ready(client)
        [problem] = assert_error_shape(client.post("/entities", json=[{"entity_id": "x", "title": "X"}]), 403)
        assert "UNIRANK_ADMIN_TOKEN" in problem["message"]


CANDIDATE_BODIES = {
    "valid": {"candidates": ["e000001", "e000002"]},
    "escaped NUL": {"candidates": ["e000001", "e0\u0000"]},
    "newline": {"candidates": ["a\nb", "e000002"]},
    "DEL as itself": {"candidates": ["e000001", "e\x7f"]},
    "non-ASCII, no control": {"candidates": ["café", "e000002"]},
    "too long": {"candidates": ["e" * 129]},
    "empty id": {"candidates": [""]},
    "not a string": {"candidates": ["e000001", 7]},
    "too many": {"candidates": [f"e{i}" for i in range(1001)]},
    "a quote inside": {"candidates": ['say "hi"']},
}


@pytest.mark.parametrize("case", CANDIDATE_BODIES)
def test_candidates_checked_as_one_list_answer_as_the_id_pattern_does(case):
    """`parse_rank` skips the id pattern on each candidate of a body without control characters; what it
    accepts and how it words each refusal are exactly RankRequest's."""
    import orjson

    from service.api.payloads import parse, parse_rank
    from service.core.errors import InvalidInput
    from service.core.schemas import RankRequest

    raw = orjson.dumps({"task": "prequery", "country": "US"} | CANDIDATE_BODIES[case])
    outcomes = []
    for parser in (parse_rank, lambda body: parse(body, RankRequest)):
        try:
            outcomes.append(("ok", parser(raw).model_dump()))
        except InvalidInput as exc:
            outcomes.append(("refused", exc.problems))
    assert outcomes[0] == outcomes[1]
    if case in ("escaped NUL", "newline", "DEL as itself"):
        assert outcomes[0][0] == "refused" and outcomes[0][1][0]["field"].startswith("candidates.")


def test_a_control_character_in_a_candidate_is_a_422_naming_it(api):
    body = {"task": "prequery", "country": "US", "candidates": ["e000001", "bad\u0001id"]}
    (problem,) = assert_error_shape(api.post("/rank", json=body), 422)
    assert problem["field"] == "candidates.1"
