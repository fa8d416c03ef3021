"""The SASRec baseline: its training windows, that it learns order (not popularity), and that a request's
scores do not depend on the other requests scored with it."""

from __future__ import annotations

import numpy as np
import torch

from model_export.sasrec import SASRec, SASRecConfig, score, train_epoch, training_windows, user_sequences
from model_export.splits import Encoded


def test_every_click_but_each_users_first_is_a_target_once():
    rng = np.random.default_rng(0)
    sequences = [rng.integers(1, 30, n) for n in (2, 3, 7, 12, 25)]
    x, y = training_windows(sequences, length=5)
    assert x.shape == y.shape and x.shape[1] == 5
    got = np.sort(y[y > 0])
    want = np.sort(np.concatenate([s[1:] for s in sequences]))
    np.testing.assert_array_equal(got, want)
    # inputs are the targets shifted by one: each target's input is the item before it
    at = y > 0
    for row in range(len(x)):
        for j in np.flatnonzero(at[row]):
            if j > 0 and y[row, j - 1] > 0:
                assert x[row, j] == y[row, j - 1]


def test_user_sequences_keep_time_order_whatever_the_row_order():
    users = np.array([1, 1, 1, 2, 2, 0, 3])
    ts = np.array([30, 10, 20, 5, 6, 1, 9])
    ents = np.array([7, 5, 6, 2, 3, 4, 9])
    want = [[5, 6, 7], [2, 3]]  # user 0 unknown, user 3 a single click: nothing to learn from
    for perm in (np.arange(7), np.array([6, 5, 4, 3, 2, 1, 0])):
        got = user_sequences((users[perm], ts[perm], ents[perm]), before_ms=100)
        assert [s.tolist() for s in got] == want
    assert [s.tolist() for s in user_sequences((users, ts, ents), before_ms=25)] == [[5, 6], [2, 3]]


def test_it_learns_what_comes_next_where_every_item_is_equally_popular():
    """Cyclic sequences 1 -> 2 -> ... -> 20 -> 1: popularity says nothing, order says everything."""
    n, cfg = 20, SASRecConfig(dim=32, length=8, dropout=0.0)
    rng = np.random.default_rng(0)
    starts = rng.integers(0, n, 300)
    sequences = [(np.arange(s, s + 9) % n) + 1 for s in starts]
    x, y = training_windows(sequences, cfg.length)
    torch.manual_seed(0)
    model = SASRec(n, cfg)
    optimizer = torch.optim.Adam(model.parameters(), lr=3e-3)
    for _ in range(40):
        train_epoch(model, optimizer, x, y, 64, rng)
    model.eval()
    with torch.no_grad():
        probe = np.array([[0, 0, 0, 0, 0, a, a % n + 1, (a + 1) % n + 1] for a in range(1, n + 1)])
        last = model(torch.from_numpy(probe))[:, -1] @ model.item.weight[1:].T
    predicted = last.argmax(1).numpy() + 1
    assert (predicted == (probe[:, -1] % n) + 1).mean() >= 0.9


def test_a_requests_scores_do_not_depend_on_the_others_scored_with_it():
    torch.manual_seed(0)
    model = SASRec(50, SASRecConfig(dim=16, length=6))
    rng = np.random.default_rng(1)
    seq = rng.integers(0, 51, (8, 6))
    sizes = rng.integers(1, 6, 8)
    cand_ctx = np.repeat(np.arange(8), sizes)
    cand = rng.integers(0, 51, len(cand_ctx))
    tasks = np.where(rng.random(len(cand_ctx)) < 0.8, "prequery", "search").astype(object)

    def encoded(requests):
        rows = np.flatnonzero(np.isin(cand_ctx, requests))
        remap = {r: i for i, r in enumerate(requests)}
        ctx = np.array([remap[c] for c in cand_ctx[rows]], np.int64)
        inputs = {"cand_ids": np.stack([cand[rows], np.zeros(len(rows), np.int64)], 1), "cand_ctx": ctx}
        return Encoded(inputs, np.zeros(len(rows)), np.zeros(len(rows)), tasks[rows], None), rows

    enc, rows = encoded(list(range(8)))
    together = score(model, seq, enc, batch=3)
    assert (together[tasks[rows] == "search"] == 0).all() and (together != 0).any()
    for requests in ([5], [7, 2], [1, 3, 6]):
        alone_enc, alone_rows = encoded(requests)
        alone = score(model, seq[requests], alone_enc)
        np.testing.assert_allclose(alone, together[alone_rows], rtol=1e-5, atol=1e-6)
