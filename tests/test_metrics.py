"""The offline metrics: known lists, ties as their expectation over every order, and invariance to what
carries no information (row order inside and across requests, the spelling of request ids)."""

from __future__ import annotations

import itertools
import math

import numpy as np
import pytest

from model_export.metrics import ranking_metrics, summarize
from model_export.tie_audit import row_order_metric


def _by_row_order(scores: np.ndarray, labels: np.ndarray, k: int) -> dict[str, float]:
    """One request's metrics with ties broken by row order: the reference the expectation averages."""
    order = np.lexsort((np.arange(len(scores)), -scores))
    y = labels[order] > 0
    pos = np.arange(len(y))
    dcg = float(np.sum(np.where(y & (pos < k), 1.0 / np.log2(pos + 2.0), 0.0)))
    ideal = float(np.sum(1.0 / np.log2(np.arange(min(int(y.sum()), k)) + 2.0)))
    first = int(np.flatnonzero(y)[0])
    return {"ndcg@10": dcg / ideal, "hr@10": float(first < k), "mrr": 1.0 / (first + 1)}


def test_known_lists():
    group = np.array([0, 0, 0, 1, 1, 1, 2, 2])
    labels = np.array([1, 0, 0, 0, 0, 1, 0, 0])
    scores = np.array([0.9, 0.5, 0.1, 0.9, 0.5, 0.1, 0.3, 0.2])
    m = ranking_metrics(group, scores, labels, k=2)
    assert len(m["mrr"]) == 2  # the request without a click is not counted
    np.testing.assert_allclose(m["ndcg@10"], [1.0, 0.0])
    np.testing.assert_allclose(m["hr@10"], [1.0, 0.0])
    np.testing.assert_allclose(m["mrr"], [1.0, 1 / 3])
    np.testing.assert_allclose(m["auc"], [1.0, 0.0])


@pytest.mark.parametrize("n, positives, k", [(4, 1, 10), (5, 2, 2), (12, 3, 10), (1, 1, 10), (30, 30, 10)])
def test_a_constant_scorer_gets_the_random_ranking_expectation(n, positives, k):
    labels = np.r_[np.ones(positives), np.zeros(n - positives)]
    m = ranking_metrics(np.zeros(n, int), np.full(n, 0.5), labels, k=k)
    slots = np.arange(n)
    # each slot holds a positive with probability positives / n
    dcg = positives / n * np.sum(np.where(slots < k, 1.0 / np.log2(slots + 2.0), 0.0))
    ideal = np.sum(1.0 / np.log2(np.arange(min(positives, k)) + 2.0))
    first = [math.comb(n - j - 1, positives - 1) / math.comb(n, positives) for j in range(n - positives + 1)]
    assert m["ndcg@10"][0] == pytest.approx(dcg / ideal)
    assert m["hr@10"][0] == pytest.approx(sum(p for j, p in enumerate(first) if j < k))
    assert m["mrr"][0] == pytest.approx(sum(p / (j + 1) for j, p in enumerate(first)))
    assert np.isnan(m["auc"][0]) if positives == n else m["auc"][0] == pytest.approx(0.5)
    if positives == 1:
        assert m["mrr"][0] == pytest.approx(sum(1 / (j + 1) for j in range(n)) / n)


def test_ties_are_the_mean_over_every_order_of_the_tied_rows():
    rng = np.random.default_rng(0)
    for _ in range(40):
        n = int(rng.integers(2, 7))
        scores = rng.choice([0.1, 0.5, 0.9], size=n)  # few distinct values: ties everywhere
        labels = rng.integers(0, 2, size=n)
        if not labels.any():
            labels[rng.integers(n)] = 1
        k = int(rng.integers(1, 4))
        m = ranking_metrics(np.zeros(n, int), scores, labels, k=k)
        orders = [np.array(p) for p in itertools.permutations(range(n))]
        for name in ("ndcg@10", "hr@10", "mrr"):
            mean = np.mean([_by_row_order(scores[p], labels[p], k)[name] for p in orders])
            assert m[name][0] == pytest.approx(mean), (name, scores, labels, k)


def test_every_metric_ignores_row_order_and_request_id_spelling():
    rng = np.random.default_rng(1)
    requests, per = 300, 25
    group = np.repeat(np.arange(requests), per)
    labels = (rng.random(len(group)) < 0.08).astype(int)
    # a scorer with heavy ties (as ALS for unseen users, BM25 without matches, trees on equal rows) ...
    scores = np.round(rng.random(len(group)) * 4) / 4
    # ... whose positives are stored first in their request: ties broken by row order would reward it
    stored_first = np.lexsort((-labels, group))
    group, labels, scores = group[stored_first], labels[stored_first], scores[stored_first]
    base = ranking_metrics(group, scores, labels)
    shuffled = rng.permutation(len(group))
    respelled = {g: 10_000 + int(v) for g, v in zip(range(requests), rng.permutation(requests), strict=True)}
    new_group = np.array([respelled[g] for g in group[shuffled]])
    moved = ranking_metrics(new_group, scores[shuffled], labels[shuffled])
    # the same requests, listed in the order of their new ids
    with_clicks = np.unique(group[labels > 0])
    order_of_new = np.argsort([respelled[g] for g in with_clicks])
    for name, values in base.items():
        np.testing.assert_allclose(moved[name], values[order_of_new], err_msg=name)
    assert summarize(moved) == pytest.approx(summarize(base), nan_ok=True)
    # and the expectation is what the shuffled log is worth, not what the stored order made it look like
    rowwise = np.mean([_by_row_order(scores[group == g], labels[group == g], 10)["ndcg@10"] for g in with_clicks])
    assert summarize(base)["ndcg@10"] < rowwise - 0.05


def test_tie_audit_shows_the_row_order_bias_it_documents():
    # a constant scorer over 10 rows with the click stored first: the earlier metric gave it 1.0, the
    # tie-aware one the random-ranking expectation, whatever the order
    group, labels, scores = np.zeros(10, int), np.r_[1, np.zeros(9, int)], np.zeros(10)
    random_ndcg = np.mean(1 / np.log2(np.arange(10) + 2.0))
    assert row_order_metric(group, scores, labels)[0] == 1.0
    assert row_order_metric(group, scores, labels[::-1])[0] == pytest.approx(1 / np.log2(11))
    for stored in (labels, labels[::-1]):
        assert ranking_metrics(group, scores, stored)["ndcg@10"][0] == pytest.approx(random_ndcg)


def test_a_buffered_counter_reaches_the_counter_once_flushed():
    from prometheus_client import CollectorRegistry, Counter

    from service.ops.metrics import buffered_counter, flush

    counter = Counter("unirank_test_buffered_total", "test", ["kind"], registry=CollectorRegistry())
    child = counter.labels(kind="a")
    buffer = buffered_counter(child)
    assert buffered_counter(child) is buffer  # one buffer per child
    for _ in range(5):
        buffer.inc()
    buffer.inc(2)
    assert child._value.get() == 0  # not yet: the service flushes every second and before /metrics
    flush()
    assert child._value.get() == 7
    flush()  # nothing new: nothing added twice
    assert child._value.get() == 7


def test_generated_request_ids_are_64_bit_hex_and_distinct():
    from service.ranking.serving import new_request_id

    ids = [new_request_id() for _ in range(10_000)]
    assert all(len(i) == 16 and int(i, 16) >= 0 for i in ids)
    assert len(set(ids)) == len(ids)
