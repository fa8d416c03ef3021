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
from unirank.core.features import FeatureEncoder, history_vector
from unirank.core.history import HISTORY_LENGTH, counters_key, history_key
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


def _reference_scores(reference, body: dict) -> dict[str, float]:
    """Every candidate's score as the training path encodes it (no live history: the user's snapshot)."""
    spec, tables, session, impute = reference
    request = RankRequest(**body)
    ctx = build_request_context(request, tables, spec.personalization, impute)
    encoder = FeatureEncoder(tables, spec.personalization, text=spec.options.text_features)
    recent = tables.history_of(ctx.user)[:HISTORY_LENGTH] if ctx.user and ctx.level == "full" else []
    hist = history_vector(tables, np.asarray(recent, np.int64))[None, :] if ctx.level == "full" else None
    contexts = encoder.encode_contexts([ctx.unified], hist, level=ctx.level)
    ids = list(dict.fromkeys(c for c in request.candidates if c != request.source_entity_id))
    cand = encoder.entity_indices(ids)
    inputs = encoder.encode_candidates(contexts, cand, np.zeros(len(cand), np.int64))
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
    checked = 0
    for level in ("none", "cluster", "full"):
        for i, body in enumerate(
            [
                {"task": "prequery"},
                {"task": "search", "query": "th"},
                {"task": "search", "query": tables.titles[5][:4]},
                {"task": "more_like_this", "source_entity_id": tables.entity_ids[9]},
            ]
        ):
            picked = rng.choice(np.arange(1, tables.n_entities + 1), 120, replace=False)
            candidates = [tables.entity_ids[e] for e in picked] + ["nobody-knows-this-one"]
            body = body | {"country": "US", "user_id": users[i % 3], "personalization": level, "k": 30}
            body["candidates"] = candidates
            want = _reference_scores(reference, body)
            got = rank(client, **body)["items"]
            assert [(g["entity_id"], g["score"]) for g in got] == sorted(want.items(), key=lambda p: (-p[1], p[0]))[
                :30
            ], (level, body["task"])
            checked += 1
    assert checked == 12
