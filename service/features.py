"""Serving-side features: the shared encoder (model_export.features) fed with one request's context,
its candidates and the user's recent history (Redis first, then the bundle's snapshot)."""

from __future__ import annotations

import numpy as np

from model_export.features import FeatureEncoder, history_vector
from model_export.tables import HISTORY_LENGTH, FeatureTables
from service.context import RequestContext


class ServingFeatures:
    def __init__(self, tables: FeatureTables, bundle_level: str):
        self.tables = tables
        self.encoder = FeatureEncoder(tables, bundle_level)

    def recent_entities(self, live: list[bytes], user: int) -> np.ndarray:
        """Entity indices of the user's history, most recent first: live events, then the snapshot."""
        get = self.tables.entity_index.get
        fresh = [i for i in (get(x.decode(), 0) for x in live) if i]
        snapshot = self.tables.history_of(user) if user else np.zeros(0, np.int64)
        return np.concatenate([np.asarray(fresh, np.int64), snapshot])[:HISTORY_LENGTH]

    def history_vector(self, live: list[bytes], user: int) -> np.ndarray:
        return history_vector(self.tables, self.recent_entities(live, user))

    def inputs(self, rc: RequestContext, cand: np.ndarray, hist_vec: np.ndarray | None = None) -> dict[str, np.ndarray]:
        ctx = self.encoder.encode_contexts([rc.unified], None if hist_vec is None else hist_vec[None, :], level=rc.level)
        return self.encoder.encode_candidates(ctx, cand, np.zeros(len(cand), np.int64))
