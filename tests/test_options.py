"""The research's model options (task gate, MMoE heads, play head): each trains, exports with parity,
and is served by the same service code, ranking by P(click) or P(play)."""

from __future__ import annotations

import json
import time
import uuid

import numpy as np
import pytest

from model_export.data import Dataset
from model_export.entity_graph import graph_batch
from model_export.export import export_bundle
from model_export.splits import encode_split
from model_export.table_builder import build_tables
from model_export.train import TrainConfig, fit
from service.core.settings import Settings
from service.model.bundle import LoadedBundle
from tests.helpers import LiveServer
from unirank.core.features import FeatureEncoder
from unirank.core.spec import ModelOptions
from unirank.core.tables import FeatureTables

OPTIONS = {
    "task_gate": dict(task_gate=True),
    "mmoe": dict(mmoe_experts=3),
    "history": dict(history_encoder=True),
    "text": dict(text_features=True),
    "numeric": dict(numeric_bins=8),
    "no_lexical": dict(lexical_features=False),
    "all": dict(task_gate=True, mmoe_experts=3, play_head=True, history_encoder=True, text_features=True),
}


@pytest.fixture(scope="module")
def splits(data_dir):
    dataset = Dataset.load(data_dir)
    tables = build_tables(dataset.entities, dataset.split("feature"), dataset.events, seed=0, text=True)
    encoder = FeatureEncoder(tables, "full")
    return tables, encode_split(encoder, dataset, "fit"), encode_split(encoder, dataset, "validation")


@pytest.fixture(scope="module")
def option_bundles(splits, tmp_path_factory):
    tables, fit_enc, val_enc = splits
    out = {}
    for name, flags in OPTIONS.items():
        cfg = TrainConfig(personalization="full", epochs=1, options=ModelOptions(**flags))
        model, training = fit(tables, fit_enc, val_enc, cfg, log=lambda *_: None)
        path = tmp_path_factory.mktemp(name)
        export_bundle(model, tables, val_enc, path, cfg, training, {})  # raises ParityError on a mismatch
        out[name] = path
    return out


@pytest.mark.parametrize("name", list(OPTIONS))
def test_option_exports_with_parity_and_is_recorded(option_bundles, name):
    manifest = json.loads((option_bundles[name] / "manifest.json").read_text())
    assert manifest["parity_max_abs_diff"] <= 1e-4
    for flag, value in OPTIONS[name].items():
        assert manifest["train_config"]["options"][flag] == value and manifest["model"]["options"][flag] == value
    inputs = [i["name"] for i in manifest["onnx"]["inputs"]]
    assert ("ctx_hist" in inputs and "ctx_hist_kind" in inputs) is bool(OPTIONS[name].get("history_encoder"))
    assert ("cand_text" in inputs) is bool(OPTIONS[name].get("text_features"))
    outputs = [o["name"] for o in manifest["onnx"]["outputs"]]
    assert outputs == (["score", "play"] if OPTIONS[name].get("play_head") else ["score"])
    has_text = bool(OPTIONS[name].get("text_features"))
    assert (manifest["text_encoder"] is not None) is has_text
    assert (option_bundles[name] / "text_encoder.onnx").is_file() is has_text


def test_numeric_encodings_carry_their_fit_window_edges_and_stay_finite(option_bundles, splits):
    """Piecewise-linear encodings: each dense feature's 9 edges (8 quantile bins of the fit window) are in
    the bundle, strictly increasing even for a feature most rows share a value of; the ONNX graph scores
    every validation row finitely, as torch does (the export's parity check)."""
    import onnxruntime as ort

    from model_export.train import dense_edges
    from unirank.core.features import DENSE_FEATURES

    manifest = json.loads((option_bundles["numeric"] / "manifest.json").read_text())
    edges = np.asarray(manifest["model"]["dense_edges"], np.float32)
    assert edges.shape == (len(DENSE_FEATURES), 9) and (np.diff(edges, axis=1) > 0).all()
    _, fit_enc, val_enc = splits
    assert np.array_equal(edges, np.asarray(dense_edges(fit_enc, 8), np.float32))  # from the fit window alone
    session = ort.InferenceSession(str(option_bundles["numeric"] / "model.onnx"))
    names = [i.name for i in session.get_inputs()]
    feed = graph_batch(val_enc.inputs)  # the graph takes the entity indices (docs/model.md)
    scores = session.run(None, {n: feed[n] for n in names})[0]
    assert np.isfinite(scores).all() and 0 < scores.min() < scores.max() < 1


def test_without_lexical_features_the_graph_ignores_them_and_the_service_skips_them(option_bundles, splits):
    import onnxruntime as ort

    from unirank.core.features import DENSE_FEATURES
    from unirank.core.lexical import LEXICAL_FEATURES

    _, _, val_enc = splits
    lexical = [DENSE_FEATURES.index(f) for f in LEXICAL_FEATURES]
    assert (val_enc.inputs["cand_dense"][:, lexical] != 0).any()  # training computes them for every option
    session = ort.InferenceSession(str(option_bundles["no_lexical"] / "model.onnx"))
    names = [i.name for i in session.get_inputs()]
    feed = graph_batch(val_enc.inputs)
    inputs = {n: feed[n] for n in names}
    changed = dict(inputs, cand_dense=inputs["cand_dense"].copy())
    changed["cand_dense"][:, lexical] = np.random.default_rng(0).normal(size=(len(changed["cand_dense"]), 4))
    assert np.array_equal(session.run(None, inputs)[0], session.run(None, changed)[0])
    bundle = LoadedBundle.load(option_bundles["no_lexical"], Settings())
    from service.core.schemas import RankRequest
    from service.model.context import build_request_context

    rc = build_request_context(RankRequest(task="search", country="US", query="a"), bundle.tables, "cluster")
    served = bundle.features.inputs(rc, np.arange(1, 101))["cand_dense"]
    assert (served[:, lexical] == 0).all() and (served[:, DENSE_FEATURES.index("token_match")] != 0).any()


def test_play_is_click_times_play_given_click_and_ranks_differently(option_bundles):
    path = option_bundles["all"]
    by_click = LoadedBundle.load(path, Settings(rank_by="click"))
    by_play = LoadedBundle.load(path, Settings(rank_by="play"))
    from service.core.schemas import RankRequest
    from service.model.context import build_request_context

    rc = build_request_context(RankRequest(task="prequery", country="US"), by_click.tables, "cluster")
    cand = np.arange(1, by_click.tables.n_entities + 1)
    inputs = by_click.features.inputs(rc, cand)
    click, play = by_click.scorer.score(inputs), by_play.scorer.score(inputs)
    assert np.all(play <= click + 1e-7) and np.all(play >= 0)  # P(play) = P(click) x P(play | click)
    assert not np.allclose(play / np.maximum(click, 1e-9), (play / np.maximum(click, 1e-9)).mean())
    with pytest.raises(ValueError, match="play head"):
        LoadedBundle.load(option_bundles["mmoe"], Settings(rank_by="play"))


def test_history_encoder_reads_the_sequence_itself(option_bundles):
    """Same context and history vector, different event sequence: the exported model's scores move."""
    from service.core.schemas import RankRequest
    from service.model.context import build_request_context
    from service.model.features import History

    bundle = LoadedBundle.load(option_bundles["history"], Settings())
    t = bundle.tables
    rc = build_request_context(RankRequest(task="prequery", country="US", user_id=t.user_ids[7]), t, "full")
    cand = np.arange(1, 101)
    vector = np.zeros(t.item_factors.shape[1], np.float32)
    empty = bundle.features.inputs(rc, cand, History(np.zeros(0, np.int64), np.zeros(0, np.int64), vector))
    events = bundle.features.inputs(rc, cand, History(np.arange(150, 156), np.array([1, 2, 3, 4, 1, 3]), vector))
    assert events["ctx_hist"][0, :6].tolist() == list(range(150, 156)) and events["ctx_hist"][0, 6:].sum() == 0
    assert not np.allclose(bundle.scorer.score(empty), bundle.scorer.score(events))
    kinds_only = dict(events, ctx_hist_kind=np.where(events["ctx_hist"] > 0, 1, 0))  # search vs recommendation matters
    assert not np.allclose(bundle.scorer.score(kinds_only), bundle.scorer.score(events))


def test_text_features_link_a_title_to_its_sequels(option_bundles):
    """The text table comes from MiniLM: titles sharing words are close; the model reads the features."""
    from service.core.schemas import RankRequest
    from service.model.context import build_request_context

    bundle = LoadedBundle.load(option_bundles["text"], Settings())
    t = bundle.tables
    assert np.abs(t.text_vec[1:]).sum(1).min() > 0 and not t.text_vec[0].any()
    source = 1
    rc = build_request_context(
        RankRequest(task="more_like_this", country="US", source_entity_id=t.entity_ids[source]), t, "cluster"
    )
    cand = np.arange(2, t.n_entities + 1)
    inputs = bundle.features.inputs(rc, cand)
    cosine = inputs["cand_text"][:, -2]
    words = set(t.norm_titles[source].split())
    sharing = np.array([bool(words & set(t.norm_titles[c].split())) for c in cand])
    assert sharing.any() and cosine[sharing].mean() > cosine[~sharing].mean() + 0.1
    assert not inputs["cand_text"][:, -1].any()  # no user, no history: no similarity to it
    flat = dict(inputs, cand_text=np.zeros_like(inputs["cand_text"]))
    assert not np.allclose(bundle.scorer.score(inputs), bundle.scorer.score(flat))

    # a known user: the last column is each candidate's cosine with the mean text of the user's recent titles
    user = next(u for u in range(1, len(t.user_ids)) if len(t.history_of(u)) >= 3)
    rc = build_request_context(RankRequest(task="prequery", country="US", user_id=t.user_ids[user]), t, "full")
    history = bundle.features.history([], rc.user)
    inputs = bundle.features.inputs(rc, cand, history)
    centroid = t.text_vec[t.history_of(user)[:50]].mean(0)
    vec = t.text_vec[cand]
    want = vec @ centroid / (np.linalg.norm(vec, axis=1) * np.linalg.norm(centroid))
    np.testing.assert_allclose(inputs["cand_text"][:, -1], want, atol=1e-5)


def test_the_bundle_text_encoder_gives_the_training_text_features(option_bundles):
    """The service's encoder (ONNX MiniLM + tokenizer + the bundle's projection, no torch) gives an entity
    added at run time the text features training gave the catalog; a sequel added at run time is close
    to its original, and the model reads that."""
    from service.core.schemas import RankRequest
    from service.model.context import build_request_context

    bundle = LoadedBundle.load(option_bundles["text"], Settings())
    t, catalog = bundle.tables, bundle.catalog
    assert catalog.text_encoder is not None
    rows = np.arange(1, 41)
    features = catalog.text_encoder.features(catalog.text_encoder.embed([t.titles[i] for i in rows]))
    assert np.abs(features - t.text_vec[rows]).max() < 1e-3

    source = next(i for i in range(1, t.n_entities + 1) if len(t.norm_titles[i].split()) >= 2)
    records = [
        {"entity_id": "rt-sequel", "title": f"{t.titles[source]} Returns", "kind": "video", "genres": []},
        {"entity_id": "rt-other", "title": "Glimmerfax Orbital Kitchen", "kind": "video", "genres": []},
    ]
    added = catalog.apply(records, catalog.embed([r["title"] for r in records]))
    assert added == [t.n_model_entities + 1, t.n_model_entities + 2] and t.text_vec[added].any(1).all()
    rc = build_request_context(
        RankRequest(task="more_like_this", country="US", source_entity_id=t.entity_ids[source]), t, "cluster"
    )
    inputs = bundle.features.inputs(rc, np.array(added))
    assert (inputs["cand_entity"] == added).all()
    rows = bundle.entity_side.override(catalog.generation)[added]
    dim = bundle.spec.architecture.dim
    unknown = bundle.entity_side.rows_of(np.array([0]))[0, :dim]
    np.testing.assert_allclose(rows[:, :dim], np.stack([unknown, unknown]), atol=1e-6)  # the model's id: unknown
    cosine = inputs["cand_text"][:, -2]
    assert cosine[0] > cosine[1] + 0.2
    assert not np.allclose(
        bundle.score_inputs(inputs), bundle.score_inputs(dict(inputs, cand_text=np.zeros_like(inputs["cand_text"])))
    )


def test_a_text_bundle_embeds_entities_posted_at_run_time(option_bundles, redis_url):
    live = LiveServer(
        option_bundles["all"],
        redis_url,
        {"UNIRANK_ADMIN_TOKEN": "t", "UNIRANK_CATALOG_STREAM": f"ur:entities:test:{uuid.uuid4().hex[:8]}"},
    )
    try:
        live.wait_ready()
        body = [{"entity_id": "rt-text-1", "title": "Nebulon Harvest Saga", "genres": []}]
        r = live.client.post("/entities", json=body, headers={"authorization": "Bearer t"})
        assert r.status_code == 201 and r.json()["text_features"] is True, r.text
        found = live.client.post("/rank", json={"task": "search", "country": "US", "query": "nebulon harv"}).json()[
            "items"
        ]
        assert [i["entity_id"] for i in found] == ["rt-text-1"]
        assert live.client.get("/model").json()["runtime_catalog"]["text_encoder"] is True
    finally:
        live.stop()


def test_history_sent_through_events_changes_the_next_ranking(option_bundles, redis_url):
    """With the history encoder, a user's new clicks (POST /events) reach the next /rank's history tensor."""
    live = LiveServer(option_bundles["history"], redis_url)
    try:
        live.wait_ready()
        tables = FeatureTables.load(option_bundles["history"] / "tables")
        user = tables.user_ids[7]
        candidates = tables.entity_ids[1:101]
        body = {"task": "prequery", "country": "US", "user_id": user, "candidates": candidates, "k": 100}
        before = {i["entity_id"]: i["score"] for i in live.client.post("/rank", json=body).json()["items"]}
        events = [
            {
                "user_id": user,
                "task": "search" if n % 2 else "prequery",
                "entity_id": tables.entity_ids[150 + n],
                "action": "play" if n % 3 == 0 else "click",
                "ts": time.time() - 60 + n,
            }
            for n in range(6)
        ]
        assert live.client.post("/events", json=events).status_code == 202
        after = {i["entity_id"]: i["score"] for i in live.client.post("/rank", json=body).json()["items"]}
        assert before.keys() == after.keys() and before != after
    finally:
        live.stop()


def test_service_serves_an_all_options_bundle_ranked_by_play(option_bundles, redis_url):
    live = LiveServer(option_bundles["all"], redis_url, {"UNIRANK_RANK_BY": "play"})
    try:
        live.wait_ready()
        assert live.client.get("/model").json()["rank_by"] == "play"
        for body in (
            {"task": "search", "country": "US", "query": "th", "k": 5},
            {"task": "prequery", "country": "US", "k": 5},
            {"task": "more_like_this", "country": "US", "source_entity_id": "e000003", "k": 5},
        ):
            r = live.client.post("/rank", json=body)
            assert r.status_code == 200, r.text
            scores = [item["score"] for item in r.json()["items"]]
            assert len(scores) == 5 and scores == sorted(scores, reverse=True)
    finally:
        live.stop()


def test_a_batch_of_mixed_requests_scores_exactly_as_each_alone(option_bundles, bundle_dir):
    """`score_batch` (what concurrent requests share) against one request at a time: the plain bundle and
    the one with every option (history encoder, text features), every task, three personalization levels,
    with and without live history, an unknown candidate."""
    from service.core.schemas import RankRequest
    from service.model.context import build_request_context
    from service.model.features import ScoringJob

    for path in (bundle_dir, option_bundles["all"]):
        bundle = LoadedBundle.load(path, Settings(micro_batch=False))
        t = bundle.tables
        rng = np.random.default_rng(11)
        jobs = []
        for i in range(12):
            task = ("search", "prequery", "more_like_this")[i % 3]
            request = RankRequest(
                task=task,
                country=("US", "FR")[i % 2],
                user_id=t.user_ids[1 + i],
                query=t.norm_titles[3 + i][: 1 + i % 4] if task == "search" else None,
                source_entity_id=t.entity_ids[2 + i] if task == "more_like_this" else None,
                personalization=("none", "cluster", "full", "full")[i % 4],
            )
            ctx = build_request_context(request, t, bundle.level)
            cand = np.append(rng.choice(np.arange(1, t.n_entities + 1), int(rng.integers(1, 80)), replace=False), 0)
            live = [f"{t.entity_ids[e]}|{1 + e % 3}".encode() for e in cand[: i % 3]]
            history = bundle.features.history(live, ctx.user) if ctx.level == "full" else None
            jobs.append(ScoringJob(ctx, cand, history))
        alone = [bundle.score_batch([job])[0] for job in jobs]
        together = bundle.score_batch(jobs)
        assert [len(s) for s in together] == [len(j.candidates) for j in jobs]
        for a, b in zip(alone, together, strict=True):
            assert np.array_equal(a, b)  # bit for bit
