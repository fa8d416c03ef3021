"""Encoding whole splits of a dataset with the shared feature code, for training and offline evaluation."""

from __future__ import annotations

from dataclasses import dataclass

import numpy as np
import pyarrow as pa
import pyarrow.compute as pc

from model_export.data import Dataset, Requests
from unirank.core.context import build_context, personalization_rank
from unirank.core.features import FeatureEncoder, history_matrices, history_vectors
from unirank.core.history import event_kinds

ENCODED_HISTORY = 20  # history events per context kept in the encoded splits (the encoder's maximum)


@dataclass
class Encoded:
    """One split, encoded: per-request contexts and per-impression candidates (cand_ctx -> request)."""

    inputs: dict[str, np.ndarray]
    labels: np.ndarray
    played: np.ndarray
    row_task: np.ndarray
    requests: Requests

    def __len__(self) -> int:
        return len(self.labels)


def encode_split(
    encoder: FeatureEncoder, dataset: Dataset, split: str, tasks=None, impute: bool = True, clicks: tuple | None = None
) -> Encoded:
    """Encode a split exactly as the service would, request by request, but vectorised."""
    events = dataset.split(split)
    if tasks is not None:
        events = events.filter(pc.is_in(events.column("task"), value_set=pa.array(list(tasks))))
    req = Requests.from_events(events)
    t = encoder.tables
    contexts = [
        build_context(task, country, user, query, source, t.title_of, impute=impute)
        for task, country, user, query, source in zip(
            req.task, req.country, req.user_id, req.query, req.source_entity_id, strict=True
        )
    ]
    hist = hist_text = None
    if personalization_rank(encoder.level) >= 2:
        clicks = clicks or click_log(encoder, dataset)
        req_user = np.fromiter((t.user_index.get(u, 0) for u in req.user_id), np.int64)
        hist = history_vectors(t, clicks[0], clicks[1], clicks[2], req_user, req.timestamp)
        if encoder.text:
            hist_text = history_vectors(t, clicks[0], clicks[1], clicks[2], req_user, req.timestamp, t.text_vec)
        seq = history_matrices(*clicks, req_user, req.timestamp, ENCODED_HISTORY)
    else:
        seq = (np.zeros((len(contexts), ENCODED_HISTORY), np.int64),) * 2
    ctx = encoder.encode_contexts(contexts, hist, hist_text=hist_text)
    cand = encoder.entity_indices(req.target_entity_id)
    inputs = encoder.encode_candidates(ctx, cand, req.row_request)
    inputs["ctx_hist"], inputs["ctx_hist_kind"] = seq
    return Encoded(inputs, req.clicked, req.played, req.task[req.row_request], req)


def click_log(encoder: FeatureEncoder, dataset: Dataset) -> tuple[np.ndarray, np.ndarray, np.ndarray]:
    """(user index, timestamp ms, entity index, event kind) of every click in the log, for history features."""
    clicks = dataset.events.filter(pc.field("clicked"))
    t = encoder.tables
    users = np.fromiter((t.user_index.get(u, 0) for u in clicks.column("user_id").to_pylist()), np.int64)
    ents = encoder.entity_indices(clicks.column("target_entity_id").to_pylist())
    kinds = event_kinds(
        clicks.column("task").to_numpy(zero_copy_only=False), clicks.column("played").to_numpy(zero_copy_only=False)
    )
    return users, clicks.column("timestamp").cast(pa.int64()).to_numpy(), ents, kinds
