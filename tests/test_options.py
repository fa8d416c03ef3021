"""The research's model options (task gate, MMoE heads, play head): each trains, exports with parity,
and is served by the same service code, ranking by P(click) or P(play)."""

from __future__ import annotations

import json
from dataclasses import replace

import numpy as np
import pytest

from model_export.data import Dataset
from model_export.export import export_bundle
from model_export.features import FeatureEncoder
from model_export.splits import encode_split
from model_export.tables import FeatureTables
from model_export.train import TrainConfig, fit
from service.bundle import LoadedBundle
from service.settings import Settings
from tests.conftest import LiveServer

OPTIONS = {
    "task_gate": dict(task_gate=True),
    "mmoe": dict(mmoe_experts=3),
    "all": dict(task_gate=True, mmoe_experts=3, play_head=True),
}


@pytest.fixture(scope="module")
def splits(data_dir):
    dataset = Dataset.load(data_dir)
    tables = FeatureTables.build(dataset.entities, dataset.split("feature"), dataset.events, seed=0)
    encoder = FeatureEncoder(tables, "cluster")
    return tables, encode_split(encoder, dataset, "fit"), encode_split(encoder, dataset, "validation")


@pytest.fixture(scope="module")
def option_bundles(splits, tmp_path_factory):
    tables, fit_enc, val_enc = splits
    out = {}
    for name, flags in OPTIONS.items():
        cfg = replace(TrainConfig(personalization="cluster", epochs=1), **flags)
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
        assert manifest["train_config"][flag] == value and manifest["model"][flag] == value
    outputs = [o["name"] for o in manifest["onnx"]["outputs"]]
    assert outputs == (["score", "play"] if OPTIONS[name].get("play_head") else ["score"])


def test_play_is_click_times_play_given_click_and_ranks_differently(option_bundles):
    path = option_bundles["all"]
    by_click = LoadedBundle.load(path, Settings(rank_by="click"))
    by_play = LoadedBundle.load(path, Settings(rank_by="play"))
    from service.context import build_request_context
    from service.schemas import RankRequest

    rc = build_request_context(RankRequest(task="prequery", country="US"), by_click.tables, by_click.level)
    cand = np.arange(1, by_click.tables.n_entities + 1)
    inputs = by_click.features.inputs(rc, cand)
    click, play = by_click.scorer.score(inputs), by_play.scorer.score(inputs)
    assert np.all(play <= click + 1e-7) and np.all(play >= 0)  # P(play) = P(click) x P(play | click)
    assert not np.allclose(play / np.maximum(click, 1e-9), (play / np.maximum(click, 1e-9)).mean())
    with pytest.raises(ValueError, match="play head"):
        LoadedBundle.load(option_bundles["mmoe"], Settings(rank_by="play"))


def test_service_serves_an_all_options_bundle_ranked_by_play(option_bundles, redis_url):
    live = LiveServer(option_bundles["all"], redis_url, {"UNIRANK_RANK_BY": "play"})
    try:
        live.wait_ready()
        assert live.client.get("/model").json()["rank_by"] == "play"
        for body in ({"task": "search", "country": "US", "query": "th", "k": 5},
                     {"task": "prequery", "country": "US", "k": 5},
                     {"task": "more_like_this", "country": "US", "source_entity_id": "e000003", "k": 5}):  # fmt: skip
            r = live.client.post("/rank", json=body)
            assert r.status_code == 200, r.text
            scores = [item["score"] for item in r.json()["items"]]
            assert len(scores) == 5 and scores == sorted(scores, reverse=True)
    finally:
        live.stop()
