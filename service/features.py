"""Serving-side features: the shared encoder (model_export.features) fed with one request's context,
its candidates and the user's recent history (Redis first, then the bundle's snapshot)."""

from __future__ import annotations

from dataclasses import dataclass

import numpy as np

from model_export.features import FeatureEncoder, history_inputs, history_vector
from model_export.tables import HISTORY_LENGTH, FeatureTables
from service.context import RequestContext


@dataclass
class History:
    """A user's recent engaged events, most recent first: entity indices and event kinds, plus the
    mean item factor the `history_affinity` feature uses."""

    entities: np.ndarray
    kinds: np.ndarray
    vector: np.ndarray
    text: np.ndarray | None = None  # mean title text vector (bundles with text features)


def parse_live(entry: bytes) -> tuple[str, int]:
    """A Redis history entry: b"entity|kind" (b"entity" from before kinds were stored: kind 0)."""
    entity, _, kind = entry.decode().partition("|")
    return entity, int(kind) if kind.isdigit() else 0


class ServingFeatures:
    def __init__(self, tables: FeatureTables, bundle_level: str, history_length: int = 20, history_encoder: bool = True,
                 text_features: bool = True):  # fmt: skip
        """history_encoder / text_features: whether the model reads those inputs (else they are not built)."""
        self.tables = tables
        self.encoder = FeatureEncoder(tables, bundle_level, text=text_features)
        self.history_length = history_length
        self.history_encoder = history_encoder
        self.text_features = text_features

    def recent_events(self, live: list[bytes], user: int) -> tuple[np.ndarray, np.ndarray]:
        """Entity indices and kinds of the user's history, most recent first: live events, then the snapshot."""
        get = self.tables.entity_index.get
        fresh = [(get(e, 0), k) for e, k in map(parse_live, live)]
        fresh = [(e, k) for e, k in fresh if e]
        if user:
            snap_e, snap_k = self.tables.history_of(user), self.tables.history_kinds_of(user)
        else:
            snap_e = snap_k = np.zeros(0, np.int64)
        entities = np.concatenate([np.asarray([e for e, _ in fresh], np.int64), snap_e])[:HISTORY_LENGTH]
        kinds = np.concatenate([np.asarray([k for _, k in fresh], np.int64), snap_k])[:HISTORY_LENGTH]
        return entities, kinds

    def recent_entities(self, live: list[bytes], user: int) -> np.ndarray:
        return self.recent_events(live, user)[0]

    def history(self, live: list[bytes], user: int) -> History:
        entities, kinds = self.recent_events(live, user)
        text = history_vector(self.tables, entities, self.tables.text_vec) if self.text_features else None
        return History(entities, kinds, history_vector(self.tables, entities), text)

    def history_vector(self, live: list[bytes], user: int) -> np.ndarray:
        return history_vector(self.tables, self.recent_entities(live, user))

    def inputs(self, rc: RequestContext, cand: np.ndarray, history: History | np.ndarray | None = None) -> dict[str, np.ndarray]:
        """The model's inputs for one request; `history`: a History, or just its vector (no sequence)."""
        vec = history.vector if isinstance(history, History) else history
        text = history.text if isinstance(history, History) and history.text is not None else None
        ctx = self.encoder.encode_contexts([rc.unified], None if vec is None else vec[None, :], level=rc.level,
                                           hist_text=None if text is None else text[None, :])  # fmt: skip
        inputs = self.encoder.encode_candidates(ctx, cand, np.zeros(len(cand), np.int64))
        if not self.history_encoder:
            return inputs
        if isinstance(history, History) and rc.level == "full":
            known = np.where(history.entities <= self.tables.n_model_entities, history.entities, 0)  # added at run time: unknown to the model
            inputs["ctx_hist"], inputs["ctx_hist_kind"] = history_inputs(known, history.kinds, self.history_length)
        else:
            inputs["ctx_hist"] = inputs["ctx_hist_kind"] = np.zeros((1, self.history_length), np.int64)
        return inputs
