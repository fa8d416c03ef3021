"""Serving-side features: the shared encoder (unirank.core.features) fed with one request's context,
its candidates and the user's recent history (Redis first, then the bundle's snapshot).

Contract: `inputs(ctx, candidates, history)` gives exactly the tensors training builds for the same
request (the parity tests hold it to that), and only those the bundle's model reads. `batch_inputs(jobs)`
gives several requests' inputs in one set of tensors (contexts stacked, each candidate pointing at its
own), value for value those of `inputs` for each: it is the training path's batch encoder, whose numpy
work is per batch rather than per request.
"""

from __future__ import annotations

from dataclasses import dataclass

import numpy as np

from service.model.context import RequestContext
from unirank.core.features import FeatureEncoder, history_inputs, history_vector
from unirank.core.history import HISTORY_LENGTH
from unirank.core.recency import RECENT_EVENTS
from unirank.core.spec import ModelSpec
from unirank.core.tables import FeatureTables
from unirank.core.vocab import Level


@dataclass(slots=True)
class ScoringJob:
    """One request's share of a scoring call: its context, candidates (entity indices) and history (None
    below 'full'); the call records how long the features and the inference took (for the whole batch
    the job was scored in)."""

    ctx: RequestContext
    candidates: np.ndarray
    history: History | None = None
    features_s: float = 0.0
    inference_s: float = 0.0


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


def _recent(history: History | None) -> tuple[np.ndarray, np.ndarray]:
    """The recency features' input from a history: its first RECENT_EVENTS events, (1, RECENT_EVENTS) each."""
    if history is None:
        empty = np.zeros((1, RECENT_EVENTS), np.int64)
        return empty, empty
    return history_inputs(history.entities, history.kinds, RECENT_EVENTS)


class ServingFeatures:
    def __init__(self, tables: FeatureTables, spec: ModelSpec, entity_in_graph: bool = False):
        """Builds only the inputs `spec`'s model reads (history tensors, text features); entity_in_graph:
        its graph gathers the entity side by entity index (`FeatureEncoder`)."""
        self.tables = tables
        self.encoder = FeatureEncoder(
            tables,
            spec.personalization,
            text=spec.options.text_features,
            lexical=spec.options.lexical_features,
            recency=spec.options.recency_features,
            entity_in_graph=entity_in_graph,
        )
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

    def batch_inputs(self, jobs: list[ScoringJob]) -> dict[str, np.ndarray]:
        """The model's inputs for requests of one personalization level, contexts in the jobs' order (one
        job: `inputs`, the single-context encoder)."""
        if len(jobs) == 1:
            return self.inputs(jobs[0].ctx, jobs[0].candidates, jobs[0].history)
        level = jobs[0].ctx.level
        full = level == Level.FULL
        histories = [j.history if full else None for j in jobs]
        F = self.tables.item_factors.shape[1]
        hist_vec = np.stack([np.zeros(F, np.float32) if h is None else h.vector for h in histories]) if full else None
        hist_text = None
        if full and self.text_features:
            width = self.tables.text_vec.shape[1]
            hist_text = np.stack(
                [np.zeros(width, np.float32) if h is None or h.text is None else h.text for h in histories]
            )
        unified = [j.ctx.unified for j in jobs]
        recent = None
        if full:
            rows = [_recent(h) for h in histories]
            recent = (np.concatenate([r[0] for r in rows]), np.concatenate([r[1] for r in rows]))
        contexts = self.encoder.encode_contexts(unified, hist_vec, level=level, hist_text=hist_text, recent=recent)
        sizes = [len(j.candidates) for j in jobs]
        cand_ctx = np.repeat(np.arange(len(jobs), dtype=np.int64), sizes)
        inputs = self.encoder.encode_candidates(contexts, np.concatenate([j.candidates for j in jobs]), cand_ctx)
        if self.history_encoder:
            rows = [self._history_rows(h, level) for h in histories]
            inputs["ctx_hist"] = np.concatenate([r[0] for r in rows])
            inputs["ctx_hist_kind"] = np.concatenate([r[1] for r in rows])
        return inputs

    def _history_rows(self, history: History | None, level: str) -> tuple[np.ndarray, np.ndarray]:
        """One context's history tensors, (1, length) each (zeros without a history or below 'full')."""
        if history is not None and level == Level.FULL:
            # entities added at run time are unknown to the model
            known = np.where(history.entities <= self.tables.n_model_entities, history.entities, 0)
            return history_inputs(known, history.kinds, self.history_length)
        empty = np.zeros((1, self.history_length), np.int64)
        return empty, empty

    def inputs(
        self, ctx: RequestContext, candidates: np.ndarray, history: History | None = None
    ) -> dict[str, np.ndarray]:
        """The model's inputs for one request (history: None for levels below 'full')."""
        hist_vec = None if history is None else history.vector[None, :]
        hist_text = None if history is None or history.text is None else history.text[None, :]
        # views of the history's first events: encode_contexts copies them into its own arrays
        recent = (
            None if history is None else (history.entities[None, :RECENT_EVENTS], history.kinds[None, :RECENT_EVENTS])
        )
        contexts = self.encoder.encode_contexts(
            [ctx.unified], hist_vec, level=ctx.level, hist_text=hist_text, recent=recent
        )
        inputs = self.encoder.encode_one(contexts, candidates)
        if self.history_encoder:
            inputs["ctx_hist"], inputs["ctx_hist_kind"] = self._history_rows(history, ctx.level)
        return inputs
