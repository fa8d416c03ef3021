"""Model export parity, offline metrics, and training beating the popularity baseline."""

import json

import numpy as np
import onnxruntime as ort
import pytest
import torch

import model_export.model as model_module
from model_export.data import Dataset
from model_export.export import DYNAMIC_AXES, ParityError, check_parity, held_out_batch
from model_export.model import UnifiedRanker
from model_export.splits import encode_split
from model_export.train import TrainConfig, fit
from unirank.core.context import N_TASKS
from unirank.core.features import DENSE_FEATURES, FeatureEncoder
from unirank.core.spec import ModelSpec
from unirank.core.tables import KINDS, FeatureTables
from unirank.core.text import MAX_QUERY_TOKENS, TOKEN_BUCKETS


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
        "cand_entity",
        "cand_dense",
        "cand_ctx",
    ]
    side = m["onnx"]["entity_side"]  # the candidates' own part: a table in the graph, one row per entity
    tables = FeatureTables.load(bundle_dir / "tables")
    assert side["rows"] == tables.n_entities + 1 and (bundle_dir / side["file"]).is_file()
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


def _matmul_bag(table, ids):
    """The genre bag as the model computed it before `_candidate_bag`: one batched (1 x K) @ (K x dim)."""
    mask = (ids > 0).to(table.weight.dtype)
    weights = mask / mask.sum(1, keepdim=True).clamp(min=1.0)
    return (weights.unsqueeze(1) @ table(ids)).squeeze(1)


def _random_inputs(spec, tables, rng, contexts: int, candidates: int) -> dict[str, np.ndarray]:
    """Inputs over the whole vocabulary; the genres are the catalogue's own rows and random ones."""
    v = spec.vocabulary
    genres = np.asarray(tables.genre_ids)[rng.integers(0, len(tables.genre_ids), candidates)]
    shuffled = rng.integers(0, v.n_genres + 1, genres.shape) * (rng.random(genres.shape) < 0.7)
    genres = np.where(rng.random((candidates, 1)) < 0.5, genres, shuffled)
    tokens = rng.integers(0, TOKEN_BUCKETS, (contexts, MAX_QUERY_TOKENS))
    return {
        "ctx_ids": np.stack(
            [
                rng.integers(0, N_TASKS, contexts),
                rng.integers(0, v.n_countries + 1, contexts),
                rng.integers(0, v.n_clusters + 1, contexts),
                rng.integers(0, v.n_entities + 1, contexts),
                rng.integers(0, v.n_users + 1, contexts),
            ],
            1,
        ),
        "ctx_query": tokens * (np.arange(MAX_QUERY_TOKENS) < rng.integers(0, MAX_QUERY_TOKENS + 1, (contexts, 1))),
        "cand_ids": np.stack(
            [rng.integers(0, v.n_entities + 1, candidates), rng.integers(0, len(KINDS) + 1, candidates)], 1
        ),
        "cand_genres": genres.astype(np.int64),
        "cand_dense": rng.normal(0, 3, (candidates, len(DENSE_FEATURES))).astype(np.float32),
        "cand_ctx": rng.integers(0, contexts, candidates),
    }


def test_the_candidate_genre_bag_scores_as_the_batched_matmul_did_bit_for_bit(bundle_dir, tmp_path, monkeypatch):
    """The speed work's export change (per-candidate genre bag as weighted columns) changes no score:
    the bundle's weights exported both ways, in torch and through onnxruntime, on 10,000 candidates."""
    checkpoint = torch.load(bundle_dir / "checkpoint.pt", map_location="cpu", weights_only=False)
    spec = ModelSpec.from_dict(checkpoint["spec"])
    model = UnifiedRanker(spec)
    model.load_state_dict(checkpoint["state_dict"])
    model.eval()
    tables = FeatureTables.load(bundle_dir / "tables")
    rng = np.random.default_rng(11)
    batches = [_random_inputs(spec, tables, rng, b, n) for b, n in ((1, 200), (7, 1800), (1, 1), (16, 8000))]
    names = spec.input_names()

    def scores(path):
        example = batches[0]
        torch.onnx.export(
            model,
            tuple(torch.from_numpy(example[k]) for k in names),
            str(path),
            input_names=list(names),
            output_names=["score"],
            opset_version=17,
            dynamo=False,
            dynamic_axes={k: v for k, v in DYNAMIC_AXES.items() if k in names or k == "score"},
        )
        session = ort.InferenceSession(str(path), providers=["CPUExecutionProvider"])
        with torch.no_grad():
            eager = [model(*(torch.from_numpy(b[k]) for k in names)).numpy() for b in batches]
        return eager, [session.run(["score"], {k: b[k] for k in names})[0] for b in batches]

    eager, onnx = scores(tmp_path / "columns.onnx")
    monkeypatch.setattr(model_module, "_candidate_bag", _matmul_bag)
    eager_before, onnx_before = scores(tmp_path / "matmul.onnx")
    assert sum(len(s) for s in onnx) == 10_001
    for now, before in zip(eager + onnx, eager_before + onnx_before, strict=True):
        assert np.array_equal(now, before)


def test_an_int8_bundle_records_how_far_it_moved_and_serves(data_dir, tmp_path):
    """`unirank train --int8`: the graph's weights quantized after the float graph's parity check; the
    manifest says how far the scores moved, and the service loads and checks it as any bundle."""
    import onnx

    from model_export.train import TrainConfig, train_bundle
    from service.core.settings import Settings
    from service.model.bundle import LoadedBundle

    out = tmp_path / "int8"
    cfg = TrainConfig(personalization="full", epochs=1, seed=0, int8=True)
    manifest = train_bundle(data_dir, out, cfg, log=lambda *_: None)
    moved = manifest["onnx"]["int8"]["max_abs_diff_vs_float"]
    assert 0 < moved < 0.05 and manifest["parity_max_abs_diff"] <= 1e-4
    ops = {node.op_type for node in onnx.load(str(out / "model.onnx")).graph.node}
    assert "DynamicQuantizeLinear" in ops or "MatMulInteger" in ops
    bundle = LoadedBundle.load(out, Settings())
    bundle.check()
