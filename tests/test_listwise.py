"""The listwise loss: its value on known lists, and invariance to what carries no information (row order
inside the batch, how requests are numbered)."""

from __future__ import annotations

import numpy as np
import pytest
import torch

from model_export.train import TrainConfig, listwise_loss


def _reference(logits, labels, request) -> float:
    losses = []
    for r in np.unique(request):
        s, y = logits[request == r], labels[request == r]
        if y.sum() == 0:
            continue
        log_softmax = s - np.log(np.exp(s).sum())
        losses.append(-(y * log_softmax).sum() / y.sum())
    return float(np.mean(losses))


def test_listwise_loss_on_known_lists():
    logits = torch.tensor([2.0, 0.0, 0.0, 1.0, 1.0, 5.0])
    labels = torch.tensor([1.0, 0.0, 0.0, 0.0, 1.0, 0.0])
    request = torch.tensor([7, 7, 7, 3, 3, 9])  # request 9 has no click: it does not count
    expected = np.mean([np.log(np.exp(2) + 2) - 2, np.log(2 * np.e) - 1])
    assert listwise_loss(logits, labels, request).item() == pytest.approx(expected, rel=1e-6)
    # a constant scorer over n items costs log(n) per request
    flat = listwise_loss(torch.zeros(5), torch.tensor([0.0, 0, 1, 0, 0]), torch.zeros(5, dtype=torch.long))
    assert flat.item() == pytest.approx(np.log(5), rel=1e-6)


def test_listwise_loss_ignores_row_order_and_request_numbering():
    rng = np.random.default_rng(0)
    logits = rng.normal(size=200).astype(np.float32) * 3
    request = rng.integers(0, 20, 200)
    labels = (rng.random(200) < 0.2).astype(np.float32)
    base = listwise_loss(torch.from_numpy(logits), torch.from_numpy(labels), torch.from_numpy(request)).item()
    assert base == pytest.approx(_reference(logits, labels, request), rel=1e-5)
    perm = rng.permutation(200)
    renumbered = (request * 7919 + 13)[perm]
    again = listwise_loss(torch.from_numpy(logits[perm]), torch.from_numpy(labels[perm]), torch.from_numpy(renumbered))
    assert again.item() == pytest.approx(base, rel=1e-6)
    # no click anywhere: zero, with a gradient path
    none = listwise_loss(torch.from_numpy(logits), torch.zeros(200), torch.from_numpy(request))
    assert none.item() == 0.0


def test_listwise_weight_is_checked():
    with pytest.raises(ValueError, match="listwise_weight"):
        TrainConfig(listwise_weight=-1.0)
