"""SASRec (Kang & McAuley, "Self-Attentive Sequential Recommendation", ICDM 2018) as a study baseline for
the recommendation tasks: what the user engaged with, in order, predicts what they engage with next.

Contract: `sasrec_scores(tables, clicks, fit, val, test, seed)` trains on every user's click sequence up
to the start of the validation window (the feature and fit windows, as the unified model's statistics and
examples come from them), keeps the epoch whose validation NDCG@10 (prequery and more-like-this requests,
scored like the test) is best, and scores each test impression: the request's sequence is the user's last
`LENGTH` clicks strictly before the request (the same history every other row reads), with the source title
appended for more-like-this (the page being viewed is the latest thing engaged with); the score is that
sequence's last hidden state against the candidate's item embedding. Search rows score 0 (not its task).

The paper's network: item and learned position embeddings, causal self-attention blocks with point-wise
feed-forward layers, pre-layer-norm residuals and dropout, the item embedding shared with the output.
Trained with full softmax cross-entropy over the catalogue at every position instead of the paper's one
sampled negative with binary cross-entropy: the stronger variant (Klenitskiy & Vasilev, RecSys 2023), so
the comparison is against SASRec at its best. Scores of one request do not depend on which other requests
are scored with it (tests/test_sasrec.py).
"""

from __future__ import annotations

import math
from dataclasses import dataclass

import numpy as np
import torch
from torch import nn
from tqdm import tqdm

from model_export.evaluate import per_task
from model_export.splits import Encoded
from unirank.core.features import history_matrices
from unirank.core.tables import FeatureTables
from unirank.core.vocab import Task

TASKS = (Task.PREQUERY.value, Task.MORE_LIKE_THIS.value)


@dataclass(frozen=True)
class SASRecConfig:
    dim: int = 64
    blocks: int = 2
    heads: int = 1
    length: int = 50  # events per sequence (the paper's n for sparse data)
    dropout: float = 0.2
    epochs: int = 60
    batch: int = 128
    lr: float = 2e-3
    patience: int = 4  # epochs without a better validation NDCG@10 before stopping


class SASRec(nn.Module):
    def __init__(self, n_items: int, cfg: SASRecConfig):
        super().__init__()
        self.item = nn.Embedding(n_items + 1, cfg.dim, padding_idx=0)
        self.position = nn.Embedding(cfg.length, cfg.dim)
        layer = nn.TransformerEncoderLayer(
            cfg.dim, cfg.heads, cfg.dim, cfg.dropout, batch_first=True, norm_first=True, activation="relu"
        )
        self.blocks = nn.TransformerEncoder(layer, cfg.blocks, enable_nested_tensor=False)
        self.norm = nn.LayerNorm(cfg.dim)
        self.dropout = nn.Dropout(cfg.dropout)
        self.scale = math.sqrt(cfg.dim)
        causal = torch.triu(torch.full((cfg.length, cfg.length), float("-inf")), diagonal=1)
        self.register_buffer("causal", causal)
        nn.init.normal_(self.item.weight, std=0.02)

    def forward(self, seq: torch.Tensor) -> torch.Tensor:
        """(B, L) item ids, oldest first, left-padded with 0 -> (B, L, dim) hidden state at each position."""
        mask = (seq > 0).unsqueeze(-1).float()
        x = self.item(seq) * self.scale + self.position.weight[-seq.shape[1] :]
        x = self.dropout(x) * mask  # padding stays zero, so no key mask is needed (and no empty softmax row)
        return self.norm(self.blocks(x, mask=self.causal[: seq.shape[1], : seq.shape[1]])) * mask


def user_sequences(clicks: tuple, before_ms: int) -> list[np.ndarray]:
    """Each user's clicked items, oldest first, of the clicks strictly before `before_ms` (user 0, unknown
    users, left out)."""
    users, ts, ents = clicks[0], clicks[1], clicks[2]
    keep = (ts < before_ms) & (users > 0) & (ents > 0)
    users, ts, ents = users[keep], ts[keep], ents[keep]
    order = np.lexsort((ents, ts, users))  # ties in time broken by entity: no dependence on row order
    users, ents = users[order], ents[order]
    cuts = np.flatnonzero(np.diff(users)) + 1
    return [s for s in np.split(ents, cuts) if len(s) >= 2]


def training_windows(sequences: list[np.ndarray], length: int) -> tuple[np.ndarray, np.ndarray]:
    """(inputs, targets), (W, length) each, left-padded: every sequence cut from its end into windows of
    length + 1 items, so each click is a target once."""
    inputs, targets = [], []
    for s in sequences:
        for end in range(len(s), 1, -length):
            w = s[max(0, end - length - 1) : end]
            x, y = np.zeros(length, np.int64), np.zeros(length, np.int64)
            x[length - len(w) + 1 :], y[length - len(w) + 1 :] = w[:-1], w[1:]
            inputs.append(x)
            targets.append(y)
    return np.array(inputs, np.int64).reshape(-1, length), np.array(targets, np.int64).reshape(-1, length)


def request_sequences(enc: Encoded, tables: FeatureTables, clicks: tuple, length: int) -> np.ndarray:
    """(R, length) each request's sequence, oldest first, left-padded: the user's last clicks strictly
    before the request, then the source title for more-like-this."""
    req = enc.requests
    req_user = np.fromiter((tables.user_index.get(u, 0) for u in req.user_id), np.int64, len(req))
    recent, _ = history_matrices(*clicks, req_user, req.timestamp, length)  # most recent first, 0-padded
    seq = recent[:, ::-1].copy()
    source = np.fromiter((tables.entity_index.get(s, 0) if s else 0 for s in req.source_entity_id), np.int64, len(req))
    source = np.where(source <= tables.n_model_entities, source, 0)
    mlt = (req.task == Task.MORE_LIKE_THIS.value) & (source > 0)
    seq[mlt, :-1] = seq[mlt, 1:]
    seq[mlt, -1] = source[mlt]
    return seq


@torch.no_grad()
def score(model: SASRec, seq: np.ndarray, enc: Encoded, batch: int = 1024) -> np.ndarray:
    """Each impression's score: its request's last hidden state . the candidate's item embedding (0 for search)."""
    model.eval()
    last = torch.cat([model(torch.from_numpy(seq[i : i + batch]))[:, -1] for i in range(0, len(seq), batch)])
    cand = torch.from_numpy(enc.inputs["cand_ids"][:, 0])
    ctx = torch.from_numpy(enc.inputs["cand_ctx"])
    out = (last.index_select(0, ctx) * model.item(cand)).sum(-1).numpy()
    return np.where(np.isin(enc.row_task, TASKS), out, 0.0).astype(np.float32)


def train_epoch(
    model: SASRec, optimizer: torch.optim.Optimizer, x: np.ndarray, y: np.ndarray, batch: int, rng: np.random.Generator
) -> float:
    """One pass over the windows in a random order: softmax cross-entropy of the next item at every position
    that has one; returns the mean loss."""
    model.train()
    losses = []
    for b in np.array_split(rng.permutation(len(x)), max(1, len(x) // batch)):
        xb, yb = torch.from_numpy(x[b]), torch.from_numpy(y[b])
        at = yb > 0
        logits = model(xb)[at] @ model.item.weight[1:].T  # item 0 is padding, never a target
        loss = nn.functional.cross_entropy(logits, yb[at] - 1)
        optimizer.zero_grad()
        loss.backward()
        optimizer.step()
        losses.append(float(loss))
    return float(np.mean(losses))


def fit_sasrec(
    tables: FeatureTables, clicks: tuple, val: Encoded, seed: int, cfg: SASRecConfig = SASRecConfig()
) -> SASRec:
    torch.manual_seed(seed)
    rng = np.random.default_rng(seed)
    x, y = training_windows(user_sequences(clicks, int(val.requests.timestamp.min())), cfg.length)
    model = SASRec(tables.n_model_entities, cfg)
    optimizer = torch.optim.Adam(model.parameters(), lr=cfg.lr, betas=(0.9, 0.98))
    val_seq = request_sequences(val, tables, clicks, cfg.length)
    best, best_state, waited = -1.0, None, 0
    for _ in tqdm(range(cfg.epochs), desc="sasrec", unit="epoch", leave=False):
        train_epoch(model, optimizer, x, y, cfg.batch, rng)
        metrics = per_task(val, score(model, val_seq, val), TASKS)
        ndcg = float(np.mean([np.nanmean(m["ndcg@10"]) for m in metrics.values()]))
        if ndcg > best:
            best, waited = ndcg, 0
            best_state = {k: v.clone() for k, v in model.state_dict().items()}
        else:
            waited += 1
            if waited >= cfg.patience:
                break
    if best_state is not None:
        model.load_state_dict(best_state)
    return model


def sasrec_scores(
    tables: FeatureTables, clicks: tuple, val: Encoded, test: Encoded, seed: int, cfg: SASRecConfig = SASRecConfig()
) -> np.ndarray:
    """The test impressions' scores by a SASRec trained as the module says."""
    model = fit_sasrec(tables, clicks, val, seed, cfg)
    return score(model, request_sequences(test, tables, clicks, cfg.length), test)
