"""The entity side inside the graph: the bundle's graph gathers each candidate's own part from a table by
entity index; it scores as the torch model does on the training path's inputs, entities added at run time
included (their rows from entity_side.onnx, fed in place of the graph's table)."""

from __future__ import annotations

import json

import numpy as np
import onnx
import onnxruntime as ort
import torch
from onnx import numpy_helper

from model_export.model import UnifiedRanker
from service.model.entity_side import EntitySide
from unirank.core.context import UnifiedContext
from unirank.core.features import ENTITY_SIDE_INPUT, ENTITY_SIDE_TABLE, FeatureEncoder, graph_input_names
from unirank.core.spec import ModelSpec
from unirank.core.tables import FeatureTables, RuntimeEntity


def _torch_model(bundle_dir):
    checkpoint = torch.load(bundle_dir / "checkpoint.pt", weights_only=True)
    model = UnifiedRanker(ModelSpec.from_dict(checkpoint["spec"]))
    model.load_state_dict(checkpoint["state_dict"])
    return model.eval()


def _scores_both_ways(bundle_dir, tables: FeatureTables, cand: np.ndarray, table: np.ndarray | None):
    """(torch on the training path's inputs, onnxruntime on the graph's inputs) for one search context."""
    model = _torch_model(bundle_dir)
    spec = model.spec
    encoder = FeatureEncoder(tables, spec.personalization, text=False)
    user = tables.user_ids[1]
    contexts = encoder.encode_contexts([UnifiedContext("search", "US", user, "the", None)], level="cluster")
    inputs = encoder.encode_candidates(contexts, cand, np.zeros(len(cand), np.int64))
    with torch.no_grad():
        want = model(*(torch.from_numpy(inputs[k]) for k in spec.input_names())).numpy()
    session = ort.InferenceSession(str(bundle_dir / "model.onnx"), providers=["CPUExecutionProvider"])
    feed = {k: inputs[k] for k in graph_input_names(spec.input_names()) if k != ENTITY_SIDE_INPUT}
    feed[ENTITY_SIDE_INPUT] = cand
    if table is not None:
        feed[ENTITY_SIDE_TABLE] = table
    return want, session.run(["score"], feed)[0]


def test_the_graph_scores_as_the_torch_model(bundle_dir):
    tables = FeatureTables.load(bundle_dir / "tables")
    cand = np.arange(0, tables.n_entities + 1, 7)  # the unknown entity (0) too
    want, got = _scores_both_ways(bundle_dir, tables, cand, None)
    assert np.abs(want - got).max() < 1e-5
    assert want.std() > 0  # scores that tell the candidates apart


def test_the_runtime_table_rows_are_the_graphs_own_for_the_bundles_entities(bundle_dir):
    manifest = json.loads((bundle_dir / "manifest.json").read_text())
    graph = onnx.load(str(bundle_dir / "model.onnx"))
    initializer = next(numpy_helper.to_array(i) for i in graph.graph.initializer if i.name == ENTITY_SIDE_TABLE)
    tables = FeatureTables.load(bundle_dir / "tables")
    side = EntitySide(bundle_dir / manifest["onnx"]["entity_side"]["file"], len(initializer), tables)
    assert side.override("") is None  # nothing added at run time: the graph's table serves
    rows = side.rows_of(np.arange(tables.n_entities + 1))
    np.testing.assert_allclose(rows, initializer, rtol=0, atol=1e-6)


def test_an_entity_added_at_run_time_gets_its_row_the_same_way(bundle_dir):
    tables = FeatureTables.load(bundle_dir / "tables")
    manifest = json.loads((bundle_dir / "manifest.json").read_text())
    side = EntitySide(bundle_dir / manifest["onnx"]["entity_side"]["file"], tables.n_entities + 1, tables)
    genres = tuple(tables.genres[1:3])
    (new,) = tables.upsert_runtime_entities([RuntimeEntity("added-1", "The added one", "game", genres)])
    (other,) = tables.upsert_runtime_entities([RuntimeEntity("added-2", "Another", "video", ())])
    table = side.override("gen-1")
    assert table is not None and len(table) == tables.n_entities + 1
    cand = np.array([new, 1, other, 2, 3])
    want, got = _scores_both_ways(bundle_dir, tables, cand, table)
    assert np.abs(want - got).max() < 1e-5
    assert got[0] != got[2]  # the model sees each as its unknown entity, with its own kind and genres
    # replacing a runtime entity (another generation of the catalog) gives it its new row
    tables.upsert_runtime_entities([RuntimeEntity("added-2", "Another", "game", genres)])
    assert not np.array_equal(side.override("gen-2")[other], table[other])
    np.testing.assert_allclose(side.override("gen-2")[other], side.override("gen-2")[new], atol=1e-6)
