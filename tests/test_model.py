"""Model export parity, offline metrics, and training beating the popularity baseline."""

import json

import pytest
import torch

from model_export.data import Dataset
from model_export.export import DYNAMIC_AXES, ParityError, check_parity, held_out_batch
from model_export.splits import encode_split
from model_export.train import TrainConfig, fit
from unirank.core.features import FeatureEncoder
from unirank.core.tables import FeatureTables


def test_trained_bundle_beats_popularity_on_every_task(bundle_dir):
    manifest = json.loads((bundle_dir / "manifest.json").read_text())
    tasks = manifest["metrics"]["tasks"]
    assert set(tasks) == {"search", "prequery", "more_like_this"}
    for task, rows in tasks.items():
        assert rows["model"]["ndcg@10"] > rows["popularity"]["ndcg@10"], task
        assert rows["model"]["requests"] > 20


def test_manifest_is_the_contract(bundle_dir):
    m = json.loads((bundle_dir / "manifest.json").read_text())
    assert m["onnx"]["opset"] >= 17
    assert [i["name"] for i in m["onnx"]["inputs"]] == [
        "ctx_ids",
        "ctx_query",
        "cand_ids",
        "cand_genres",
        "cand_dense",
        "cand_ctx",
    ]
    assert m["version"].endswith(m["content_hash"][:12])
    assert m["personalization"] == "full" and m["parity_max_abs_diff"] <= 1e-4
    for path in m["tables"]:
        assert (bundle_dir / path).is_file()


def test_onnx_parity_check_passes_and_catches_a_mismatch(bundle_dir, data_dir, tmp_path):
    tables = FeatureTables.load(bundle_dir / "tables")
    encoder = FeatureEncoder(tables, "cluster")
    dataset = Dataset.load(data_dir)
    fit_enc = encode_split(encoder, dataset, "fit")
    val_enc = encode_split(encoder, dataset, "validation")
    model, _ = fit(tables, fit_enc, val_enc, TrainConfig(personalization="cluster", epochs=1), log=lambda *_: None)
    batch = held_out_batch(val_enc)
    path = tmp_path / "m.onnx"
    torch.onnx.export(
        model,
        tuple(torch.from_numpy(batch[k]) for k in batch),
        str(path),
        input_names=list(batch),
        output_names=["score"],
        opset_version=17,
        dynamo=False,
        dynamic_axes=DYNAMIC_AXES,
    )
    assert check_parity(model, path, batch) <= 1e-4
    # A batch with a different number of candidates (dynamic axis) still agrees.
    small = held_out_batch(val_enc, n_requests=3)
    assert check_parity(model, path, small) <= 1e-4
    with torch.no_grad():
        model.head.bias += 0.5
    with pytest.raises(ParityError):
        check_parity(model, path, batch)
