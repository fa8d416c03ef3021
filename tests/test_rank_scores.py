"""/rank's scores are the reference pipeline's, exactly: the training path's batch feature encoder, the
bundle's ONNX model in a plain onnxruntime session, then the top k by score (ties by id). Fixed requests
of every task and personalization level, with explicit candidates (some unknown): the guard that keeps
speed work on the serving path (encoder shortcuts, buffers, parsing) from changing any score."""

from __future__ import annotations

import numpy as np
import onnxruntime as ort
import pytest

from service.core.schemas import RankRequest
from service.model.context import build_request_context
from tests.helpers import rank
from unirank.core.features import DENSE_FEATURES, ENTITY_SIDE_INPUT, FeatureEncoder, history_inputs, history_vector
from unirank.core.history import HISTORY_LENGTH, counters_key, history_key
from unirank.core.lexical import LEXICAL_FEATURES
from unirank.core.recency import RECENCY_FEATURES, RECENT_EVENTS
from unirank.core.spec import ModelSpec
from unirank.core.tables import FeatureTables
from unirank.loop.redis_client import redis_client


@pytest.fixture(scope="module")
def reference(bundle_dir):
    import json

    manifest = json.loads((bundle_dir / "manifest.json").read_text())
    spec = ModelSpec.from_dict(manifest["model"])
    tables = FeatureTables.load(bundle_dir / "tables")
    session = ort.InferenceSession(str(bundle_dir / "model.onnx"), providers=["CPUExecutionProvider"])
    return spec, tables, session, manifest.get("train_config", {}).get("impute", True)


def _reference_scores(reference, body: dict, seen_dense: list | None = None) -> dict[str, float]:
    """Every candidate's score as the training path encodes it (no live history: the user's snapshot)."""
    spec, tables, session, impute = reference
    request = RankRequest(**body)
    ctx = build_request_context(request, tables, spec.personalization, impute)
    encoder = FeatureEncoder(tables, spec.personalization, text=spec.options.text_features)
    recent = tables.history_of(ctx.user)[:HISTORY_LENGTH] if ctx.user and ctx.level == "full" else []
    kinds = tables.history_kinds_of(ctx.user)[:HISTORY_LENGTH] if len(recent) else np.zeros(0, np.int64)
    hist = history_vector(tables, np.asarray(recent, np.int64))[None, :] if ctx.level == "full" else None
    last = history_inputs(np.asarray(recent, np.int64), kinds, RECENT_EVENTS)  # (1, RECENT_EVENTS) each
    contexts = encoder.encode_contexts([ctx.unified], hist, level=ctx.level, recent=last)
    ids = list(dict.fromkeys(c for c in request.candidates if c != request.source_entity_id))
    cand = encoder.entity_indices(ids)
    inputs = encoder.encode_candidates(contexts, cand, np.zeros(len(cand), np.int64))
    if seen_dense is not None:
        seen_dense.append(inputs["cand_dense"])
    inputs[ENTITY_SIDE_INPUT] = cand  # the graph gathers the rest of each candidate's own part by its index
    scores = session.run(["score"], {i.name: inputs[i.name] for i in session.get_inputs()})[0]
    return dict(zip(ids, scores.tolist(), strict=True))


def test_rank_scores_are_the_reference_pipelines(client, reference, redis_url):
    _, tables, _, _ = reference
    rng = np.random.default_rng(7)
    users = tables.user_ids[-3:]
    redis = redis_client(redis_url)
    for user in users:  # whatever other tests sent for them: their history is the bundle's snapshot here
        redis.delete(history_key(user))
        redis.delete(counters_key(user))
    checked, dense = 0, []
    for level in ("none", "cluster", "full"):
        for i, body in enumerate(
            [
                {"task": "prequery"},
                {"task": "search", "query": "th"},
                {"task": "search", "query": tables.titles[5][:4]},
                {"task": "more_like_this", "source_entity_id": tables.entity_ids[9]},
                {"task": "search", "query": tables.genres[1][:5]},  # a genre name: the facet features
                {"task": "search", "query": _typo_of_a_title(tables)},  # one edit off: the typo feature
            ]
        ):
            picked = rng.choice(np.arange(1, tables.n_entities + 1), 120, replace=False)
            candidates = [tables.entity_ids[e] for e in picked] + ["nobody-knows-this-one"]
            body = body | {"country": "US", "user_id": users[i % 3], "personalization": level, "k": 30}
            body["candidates"] = candidates
            want = _reference_scores(reference, body, dense)
            got = rank(client, **body)["items"]
            assert [(g["entity_id"], g["score"]) for g in got] == sorted(want.items(), key=lambda p: (-p[1], p[0]))[
                :30
            ], (level, body["task"])
            checked += 1
    assert checked == 18
    lexical = [DENSE_FEATURES.index(f) for f in LEXICAL_FEATURES]
    covered = (np.concatenate(dense)[:, lexical] != 0).any(0)
    assert covered.all(), dict(zip(LEXICAL_FEATURES, covered.tolist(), strict=True))  # the requests exercise each
    recency = [DENSE_FEATURES.index(f) for f in RECENCY_FEATURES]
    covered = (np.concatenate(dense)[:, recency] != 0).any(0)  # the users' snapshots: their last events
    assert covered.all(), dict(zip(RECENCY_FEATURES, covered.tolist(), strict=True))


def _typo_of_a_title(tables: FeatureTables) -> str:
    """A title word with its second letter changed, so that no title has it as a prefix but one edit finds it."""
    index = tables.title_index
    for title in tables.norm_titles[1:]:
        for word in title.split():
            typo = word[0] + ("q" if word[1] != "q" else "x") + word[2:] if len(word) >= 4 else ""
            if typo and typo not in index.prefixes and index._typo_matches(typo).size:
                return typo
    raise AssertionError("no title word gives a typo")
