"""The synthetic world with session intent (`SynthParams.session_intent`): what a session's search finds
tells what its home visit clicks next (search -> recommendation), what a home visit clicked tells what the
next search looks for (recommendation -> search); without it the generator writes what it always wrote."""

from __future__ import annotations

import numpy as np
import pyarrow.compute as pc
import pyarrow.parquet as pq
import pytest

from model_export.synth import SynthParams, generate

WINDOW_MS = 600_000


def _follows(out, first_task: str, next_task: str) -> tuple[float, float]:
    """Of the clicks of `next_task` requests, the share sharing a genre with the same user's latest click of
    `first_task`: when that click came within WINDOW_MS before (the same session), and when it came more
    than a day before (the user's long-term taste: the control)."""
    events = pq.read_table(out / "events.parquet").filter(pc.field("clicked"))
    entities = pq.read_table(out / "entities.parquet")
    genres = dict(zip(entities.column("entity_id").to_pylist(), entities.column("genres").to_pylist(), strict=True))
    rows = sorted(
        zip(
            events.column("user_id").to_pylist(),
            events.column("timestamp").cast("int64").to_pylist(),
            events.column("task").to_pylist(),
            events.column("target_entity_id").to_pylist(),
            strict=True,
        )
    )
    last: dict[str, tuple[int, str]] = {}
    near, far = [], []
    for user, ts, task, entity in rows:
        before = last.get(user)
        if task == next_task and before is not None:
            if ts - before[0] < WINDOW_MS:
                near.append(bool(set(genres[entity]) & set(genres[before[1]])))
            elif ts - before[0] > 86_400_000:
                far.append(bool(set(genres[entity]) & set(genres[before[1]])))
        if task == first_task:
            last[user] = (ts, entity)
    assert len(near) >= 100 and len(far) >= 100, "enough pairs to compare"
    return float(np.mean(near)), float(np.mean(far))


@pytest.fixture(scope="module")
def worlds(tmp_path_factory):
    root = tmp_path_factory.mktemp("intent")
    p = dict(users=600, entities=400, events=60_000, seed=4)
    generate(SynthParams(**p), root / "off")
    generate(SynthParams(**p, session_intent=0.8), root / "on")
    return root / "off", root / "on"


def test_a_search_click_tells_what_the_next_home_visit_clicks(worlds):
    near, far = _follows(worlds[1], "search", "prequery")
    assert near > far + 0.15


def test_a_home_visit_click_tells_what_the_next_search_looks_for(worlds):
    near, far = _follows(worlds[1], "prequery", "search")
    assert near > far + 0.1


def test_intent_sessions_take_their_tasks_budget_and_off_changes_nothing(worlds, tmp_path):
    off, on = worlds
    for name in ("events.parquet", "entities.parquet"):
        assert pq.read_table(off / name).schema == pq.read_table(on / name).schema
    tasks = {
        w: np.unique(
            pq.read_table(w / "events.parquet").column("task").to_numpy(zero_copy_only=False), return_counts=True
        )
        for w in (off, on)
    }
    np.testing.assert_allclose(tasks[on][1], tasks[off][1], rtol=0.05)
    generate(SynthParams(users=600, entities=400, events=60_000, seed=4, session_intent=0.0), tmp_path / "zero")
    assert pq.read_table(tmp_path / "zero" / "events.parquet").equals(pq.read_table(off / "events.parquet"))
