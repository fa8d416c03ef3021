"""Assignment and interleaving as pure functions: stable across processes, shares respected, team draft
fair; and an unloaded model's memory actually goes."""

from __future__ import annotations

import gc
import subprocess
import sys
import time
import weakref

import pytest
from fastapi.testclient import TestClient

from service.api import create_app
from service.core.rollout import Experiment, Routing, Variant
from service.core.settings import Settings
from service.ranking.routing import assign, team_draft, unit_hash


def experiment(mode="ab", unit="user", shares=(0.5, 0.5), models=("a", "b")) -> Routing:
    variants = [Variant(model=m, share=s) for m, s in zip(models, shares, strict=True)]
    return Routing(default="a", experiment=Experiment(name="exp", mode=mode, unit=unit, variants=variants))


def test_the_unit_hash_is_the_same_in_every_process():
    here = unit_hash("exp", "user-1")
    code = "from service.ranking.routing import unit_hash; print(repr(unit_hash('exp', 'user-1')))"
    there = float(subprocess.run([sys.executable, "-c", code], capture_output=True, text=True, check=True).stdout)
    assert here == there and 0 <= here < 1


@pytest.mark.parametrize("shares", [(0.5, 0.5), (0.9, 0.1), (0.2, 0.8)])
def test_ab_shares_hold_and_a_user_keeps_a_variant(shares):
    routing = experiment(shares=shares)
    users = [f"u{i}" for i in range(20_000)]
    got = [assign(routing, u, f"r{i}").variant for i, u in enumerate(users)]
    assert abs(got.count("a") / len(got) - shares[0]) < 0.015
    assert [assign(routing, u, "another-request").variant for u in users[:500]] == got[:500]


def test_anonymous_or_request_unit_requests_are_assigned_by_request():
    routing = experiment(unit="request")
    by_request = {assign(routing, "same-user", f"r{i}").variant for i in range(200)}
    assert by_request == {"a", "b"}
    assert {assign(experiment(), None, f"r{i}").variant for i in range(200)} == {"a", "b"}


def test_no_experiment_means_the_default():
    a = assign(Routing(default="x"), "u", "r")
    assert (a.model, a.experiment, a.variant, a.partner) == ("x", None, None, None)


def test_team_draft_takes_each_id_once_and_keeps_the_teams_even():
    first = [f"e{i}" for i in range(30)]
    second = list(reversed(first))
    for seed in ("r1", "r2", "r3"):
        merged = team_draft(first, second, 20, seed)
        ids = [e for e, _ in merged]
        assert len(ids) == 20 == len(set(ids))
        counts = [sum(t == team for _, t in merged) for team in (0, 1)]
        assert abs(counts[0] - counts[1]) <= 1
        firsts = [e for e, t in merged if t == 0]
        assert firsts == sorted(firsts, key=first.index)  # a team's picks keep its own order
    assert team_draft(first, second, 20, "r1") == team_draft(first, second, 20, "r1")  # reproducible from the id


def test_team_draft_with_identical_rankings_is_the_ranking():
    ranking = [f"e{i}" for i in range(10)]
    assert [e for e, _ in team_draft(ranking, ranking, 10, "any")] == ranking


def test_team_draft_runs_out_gracefully():
    merged = team_draft(["a", "b"], ["b", "c", "d"], 10, "s")
    assert sorted(e for e, _ in merged) == ["a", "b", "c", "d"]


def test_unloading_frees_the_model(bundle_dir, second_bundle_dir, redis_url):
    token = "t"
    settings = Settings(
        bundle=str(bundle_dir),
        redis_url=redis_url,
        admin_token=token,
        bundle_poll_s=0.1,
        control_key=f"ur:control:test:{time.time_ns()}",
    )
    with TestClient(create_app(settings)) as client:
        deadline = time.monotonic() + 30
        while client.get("/readyz").status_code != 200:
            assert time.monotonic() < deadline
            time.sleep(0.05)
        auth = {"authorization": f"Bearer {token}"}
        assert (
            client.post("/admin/models", json={"name": "b", "path": str(second_bundle_dir)}, headers=auth).status_code
            == 201
        )
        fleet = client.app.state.unirank.fleet
        bundle = weakref.ref(fleet.models["b"].bundle)
        session = weakref.ref(fleet.models["b"].bundle.scorer.session)
        client.put("/admin/routing", json={"default": "b"}, headers=auth)
        assert client.post("/rank", json={"task": "prequery", "country": "US"}).json()["model"] == "b"
        client.put("/admin/routing", json={"default": "default"}, headers=auth)
        assert client.delete("/admin/models/b", headers=auth).status_code == 200
        gc.collect()
        assert bundle() is None and session() is None  # the onnxruntime session and the tables are gone
