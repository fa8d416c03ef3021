"""Training on a log that need not fit in memory: the time-sliced reader gives exactly the in-memory
splits (from one file or a shuffled, partitioned directory), the feature tables built slice by slice equal
the in-memory ones, evaluation slice by slice gives the in-memory metrics, and a bundle trained out of
core (with sparse id tables) passes parity, loads in the service and ranks as well as the in-memory
one within noise; a sparse step moves only the id-table rows its batch touches."""

from __future__ import annotations

import dataclasses
import json

import numpy as np
import pyarrow as pa
import pytest

from model_export.data import SPLIT_BOUNDS, Dataset
from model_export.evaluate import evaluate_bundle
from model_export.event_log import EventLog
from model_export.model import UnifiedRanker
from model_export.table_builder import ClickLog, Vocabularies, WindowStatistics, build_tables, tables_from
from model_export.train import SPARSE_ID_ROWS, TrainConfig, _Optimizer, sparse_embeddings, train_bundle
from service.core.settings import Settings
from service.model.bundle import LoadedBundle
from tests.helpers import shuffled_partitioned_copy

SLICE = 7_000  # rows per time slice: the test log (~80k events) in a dozen slices


@pytest.fixture(scope="module")
def partitioned(data_dir, tmp_path_factory):
    """The test log shuffled and written as a hive-partitioned directory of small files."""
    return shuffled_partitioned_copy(data_dir, tmp_path_factory.mktemp("partitioned"), seed=1, rows_per_file=4_000)


@pytest.mark.parametrize("layout", ["file", "partitioned"])
def test_time_slices_are_the_splits(data_dir, partitioned, layout):
    source = EventLog(data_dir if layout == "file" else partitioned, chunk_rows=SLICE)
    dataset = Dataset.load(data_dir)
    assert source.rows == dataset.events.num_rows
    for split in SPLIT_BOUNDS:
        slices = list(source.chunks(split))
        assert len(slices) >= 2 if split in ("feature", "fit") else len(slices) >= 1
        assert max(s.num_rows for s in slices) <= SLICE * 1.5  # about the size asked (a time is never cut)
        assert pa.concat_tables(slices).equals(dataset.split(split))
        assert source.split_rows(split) == dataset.split(split).num_rows


def test_tables_built_slice_by_slice_are_the_in_memory_tables(data_dir):
    dataset = Dataset.load(data_dir)
    whole = build_tables(dataset.entities, dataset.split("feature"), dataset.events, seed=0)
    source = EventLog(data_dir, chunk_rows=SLICE)
    v = Vocabularies.of(source.entities, source.countries, source.users)
    stats, clicks = WindowStatistics(v), ClickLog(v)
    for split in SPLIT_BOUNDS:
        for chunk in source.chunks(split):
            clicks.add(chunk)
            if split == "feature":
                stats.add(chunk)
    sliced = tables_from(source.entities, v, stats, clicks, seed=0)
    for f in dataclasses.fields(whole):
        a, b = getattr(whole, f.name), getattr(sliced, f.name)
        if isinstance(a, np.ndarray):
            assert a.dtype == b.dtype and np.array_equal(a, b), f.name
        elif isinstance(a, pa.Table):
            assert a.equals(b), f.name
        else:
            assert a == b, f.name


def test_evaluation_slice_by_slice_gives_the_in_memory_metrics(bundle_dir, data_dir):
    whole = evaluate_bundle(bundle_dir, data_dir)
    sliced = evaluate_bundle(bundle_dir, data_dir, chunk_rows=SLICE, in_memory_rows=0)
    assert whole["catalog_overlap"] == sliced["catalog_overlap"]
    assert whole["tasks"].keys() == sliced["tasks"].keys()
    for task, rankers in whole["tasks"].items():
        for ranker, metrics in rankers.items():
            assert metrics["requests"] == sliced["tasks"][task][ranker]["requests"]
            for name, value in metrics.items():
                assert sliced["tasks"][task][ranker][name] == pytest.approx(value, rel=1e-6, abs=1e-9), (task, name)


def test_a_bundle_trained_out_of_core_is_as_good_and_serves(data_dir, bundle_dir, tmp_path):
    """Also with sparse id tables (what a log this large gets by default): the in-memory reference
    `bundle_dir` is dense, so this holds sparse updates to the same quality too."""
    out = tmp_path / "ooc"
    cfg = TrainConfig(personalization="full", epochs=4, seed=0, sparse_embeddings=True)  # as `bundle_dir`, but sparse
    manifest = train_bundle(data_dir, out, cfg, log=lambda *_: None, chunk_rows=SLICE, in_memory_rows=0)
    assert manifest["training_data"]["out_of_core"]["fit_slices"] >= 2
    assert manifest["training"]["sparse_embeddings"] is True
    assert manifest["parity_max_abs_diff"] < 1e-4
    reference = json.loads((bundle_dir / "manifest.json").read_text())
    for task, m in manifest["metrics"]["tasks"].items():
        assert m["model"]["ndcg@10"] > m["popularity"]["ndcg@10"], task
        # the shuffle buffer instead of one permutation: the same quality within a seed's noise here
        assert m["model"]["ndcg@10"] == pytest.approx(reference["metrics"]["tasks"][task]["model"]["ndcg@10"], abs=0.04)
    assert manifest["training_data"]["rows"] == reference["training_data"]["rows"]
    LoadedBundle.load(out, Settings(bundle=str(out))).check()


def test_sparse_id_tables_move_only_the_rows_a_batch_touches(bundle_dir):
    """What keeps a step's cost with the batch, not with the number of users and entities; the dense
    parts of the model still learn. The default turns it on only for large id tables."""
    import torch

    from unirank.core.features import DENSE_FEATURES
    from unirank.core.spec import ModelSpec

    spec = ModelSpec.from_dict(json.loads((bundle_dir / "manifest.json").read_text())["model"])
    model = UnifiedRanker(spec)
    opt = _Optimizer(model, TrainConfig(sparse_embeddings=True), sparse=True)
    before = {k: v.detach().clone() for k, v in model.state_dict().items()}
    users, entities = torch.tensor([3, 5]), torch.tensor([7, 9])
    ctx_ids = torch.stack(
        [torch.tensor([0, 1]), torch.tensor([1, 1]), torch.tensor([1, 2]), torch.zeros(2, dtype=torch.int64), users], 1
    )
    inputs = [
        ctx_ids,
        torch.zeros(2, 8, dtype=torch.int64),
        torch.stack([entities, torch.ones(2, dtype=torch.int64)], 1),
        torch.zeros(2, 3, dtype=torch.int64),
        torch.randn(2, len(DENSE_FEATURES)),
        torch.arange(2),
    ]
    torch.nn.functional.binary_cross_entropy_with_logits(model.logits(*inputs), torch.tensor([1.0, 0.0])).backward()
    assert model.user.weight.grad.is_sparse and model.entity.weight.grad.is_sparse
    opt.step()
    after = model.state_dict()
    for name, touched in (("user.weight", users), ("entity.weight", torch.cat([torch.tensor([0]), entities]))):
        moved = torch.nonzero((after[name] != before[name]).any(1)).flatten()
        assert set(moved.tolist()) == set(touched.tolist()), name  # entity row 0: the (absent) source entity
    assert not torch.equal(after["ctx_proj.0.weight"], before["ctx_proj.0.weight"])  # dense parameters: AdamW

    small = dataclasses.replace(spec.vocabulary, n_users=10, n_entities=10)
    large = dataclasses.replace(spec.vocabulary, n_users=SPARSE_ID_ROWS, n_entities=10)
    auto = TrainConfig()
    assert not sparse_embeddings(auto, dataclasses.replace(spec, vocabulary=small))
    assert sparse_embeddings(auto, dataclasses.replace(spec, vocabulary=large))
    assert not sparse_embeddings(TrainConfig(weight_decay=0.01), dataclasses.replace(spec, vocabulary=large))
    with pytest.raises(ValueError, match="sparse_embeddings needs weight_decay 0"):
        TrainConfig(sparse_embeddings=True, weight_decay=0.01)
