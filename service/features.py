"""Serving-side features: the shared encoder (unirank.core.features) fed with one request's context,
its candidates and the user's recent history (Redis first, then the bundle's snapshot).

Contract: `inputs(ctx, candidates, history)` gives exactly the tensors training builds for the same
request (the parity tests hold it to that), and only those the bundle's model reads.
"""

from __future__ import annotations

from dataclasses import dataclass

import numpy as np

from service.context import RequestContext
from unirank.core.features import FeatureEncoder, history_inputs, history_vector
from unirank.core.history import HISTORY_LENGTH
from unirank.core.spec import ModelSpec
from unirank.core.tables import FeatureTables


@dataclass
class History:
    """A user's recent engaged events, most recent first: entity indices and event kinds, plus the
    mean item factor the `history_affinity` feature uses."""

    entities: np.ndarray
    kinds: np.ndarray
    vector: np.ndarray
    text: np.ndarray | None = None  # mean title text vector (bundles with text features)
    live: int = 0  # how many of the first entities are live (Redis) events, not the bundle's snapshot


def parse_live(entry: bytes) -> tuple[str, int]:
    """A Redis history entry: b"entity|kind" (b"entity" from before kinds were stored: kind 0)."""
    entity, _, kind = entry.decode().partition("|")
    return entity, int(kind) if kind.isdigit() else 0


class ServingFeatures:
    def __init__(self, tables: FeatureTables, spec: ModelSpec):
        """Builds only the inputs `spec`'s model reads (history tensors, text features)."""
        self.tables = tables
        self.encoder = FeatureEncoder(tables, spec.personalization, text=spec.options.text_features)
        self.history_length = spec.architecture.history_length
        self.history_encoder = spec.options.history_encoder
        self.text_features = spec.options.text_features

    def recent_events(self, live: list[bytes], user: int) -> tuple[np.ndarray, np.ndarray, int]:
        """Entity indices and kinds of the user's history, most recent first: live events, then the
        snapshot; and how many of them are live."""
        get = self.tables.entity_index.get
        fresh = [(get(e, 0), k) for e, k in map(parse_live, live)]
        fresh = [(e, k) for e, k in fresh if e]
        if user:
            snap_e, snap_k = self.tables.history_of(user), self.tables.history_kinds_of(user)
        else:
            snap_e = snap_k = np.zeros(0, np.int64)
        entities = np.concatenate([np.asarray([e for e, _ in fresh], np.int64), snap_e])[:HISTORY_LENGTH]
        kinds = np.concatenate([np.asarray([k for _, k in fresh], np.int64), snap_k])[:HISTORY_LENGTH]
        return entities, kinds, min(len(fresh), HISTORY_LENGTH)

    def history(self, live: list[bytes], user: int) -> History:
        entities, kinds, n_live = self.recent_events(live, user)
        text = history_vector(self.tables, entities, self.tables.text_vec) if self.text_features else None
        return History(entities, kinds, history_vector(self.tables, entities), text, n_live)

    def inputs(
        self, ctx: RequestContext, candidates: np.ndarray, history: History | None = None
    ) -> dict[str, np.ndarray]:
        """The model's inputs for one request (history: None for levels below 'full')."""
        hist_vec = None if history is None else history.vector[None, :]
        hist_text = None if history is None or history.text is None else history.text[None, :]
        contexts = self.encoder.encode_contexts([ctx.unified], hist_vec, level=ctx.level, hist_text=hist_text)
        inputs = self.encoder.encode_one(contexts, candidates)
        if not self.history_encoder:
            return inputs
        if history is not None and ctx.level == "full":
            # entities added at run time are unknown to the model
            known = np.where(history.entities <= self.tables.n_model_entities, history.entities, 0)
            inputs["ctx_hist"], inputs["ctx_hist_kind"] = history_inputs(known, history.kinds, self.history_length)
        else:
            inputs["ctx_hist"] = inputs["ctx_hist_kind"] = np.zeros((1, self.history_length), np.int64)
        return inputs
