"""The ranked list's order: score descending, ties broken by entity id, at most k, whatever the k."""

from __future__ import annotations

import numpy as np
import orjson

from service.ranking.ranker import top_k


def _ids(body: bytes) -> list[str]:
    return [item["entity_id"] for item in orjson.loads(body)]


def test_ties_are_broken_by_entity_id_even_at_the_cut():
    scores = np.array([0.5, 0.9, 0.5, 0.5, 0.1], np.float32)
    ids = ["e4", "e9", "e2", "e3", "e1"]
    assert _ids(top_k(scores, ids, 2)) == ["e9", "e2"]
    assert _ids(top_k(scores, ids, 3)) == ["e9", "e2", "e3"]
    assert _ids(top_k(scores, ids, 10)) == ["e9", "e2", "e3", "e4", "e1"]


def test_matches_a_full_sort_for_random_scores():
    rng = np.random.default_rng(0)
    for n, k in ((1, 1), (50, 10), (200, 20), (300, 300)):
        scores = rng.integers(0, 20, n).astype(np.float32) / 20  # many ties
        ids = [f"e{i:04d}" for i in rng.permutation(n)]
        expected = sorted(range(n), key=lambda i: (-scores[i], ids[i]))[:k]
        body = orjson.loads(top_k(scores, ids, k))
        assert [b["entity_id"] for b in body] == [ids[i] for i in expected]
        assert [b["score"] for b in body] == [float(scores[i]) for i in expected]
