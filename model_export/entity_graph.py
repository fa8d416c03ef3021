"""The entity side inside the graph: what the network makes of a candidate alone, as a table gathered by
entity index.

Contract: `InGraphEntities(model, tables)` is the trained model with the candidate-only part of its input
(the entity id's embedding, the kind's and the genres' bag: `UnifiedRanker.entity_side`) computed once per
entity of `tables` into the buffer `entity_side`, (E + 1, width); its graph takes `cand_entity` (each
candidate's entity index, 0 unknown) instead of `cand_ids` and `cand_genres`, and gives the model's
scores for the same inputs (`heads_from_side`). `export_entity_graph` writes that graph with the table as
an overridable initializer, and `entity_side.onnx`, the same rows from (model entity id, kind, genres):
the service computes with it the rows of entities added at run time (the model's unknown entity id, their
own kind and genres) and feeds the longer table in place of the initializer.
"""

from __future__ import annotations

from pathlib import Path

import numpy as np
import onnx
import torch
from torch import nn

from model_export.onnx_trace import trace_to_onnx
from unirank.core.features import ENTITY_SIDE_INPUT, ENTITY_SIDE_TABLE, entity_side_inputs, graph_input_names
from unirank.core.tables import FeatureTables


def side_inputs_of(tables: FeatureTables, n_model_entities: int) -> dict[str, np.ndarray]:
    """`entity_side.onnx`'s inputs for every entity of `tables` (rows 0..E)."""
    return entity_side_inputs(tables, np.arange(tables.n_entities + 1), n_model_entities)


class EntitySideGraph(nn.Module):
    """`entity_side.onnx`: rows of the table from (model entity id, kind, genres)."""

    def __init__(self, model: nn.Module):
        super().__init__()
        self.model = model

    def forward(self, entity: torch.Tensor, kind: torch.Tensor, genres: torch.Tensor) -> torch.Tensor:
        return self.model.entity_side(entity, kind, genres)


class InGraphEntities(nn.Module):
    def __init__(self, model: nn.Module, tables: FeatureTables):
        super().__init__()
        self.model = model
        self.spec = model.spec
        inputs = side_inputs_of(tables, model.spec.vocabulary.n_entities)
        with torch.no_grad():
            table = model.entity_side(*(torch.from_numpy(inputs[k]) for k in ("entity", "kind", "genres")))
        self.register_buffer(ENTITY_SIDE_TABLE, table.contiguous())

    def forward(self, ctx_ids, ctx_query, cand_entity, cand_dense, cand_ctx, *optional):
        side = getattr(self, ENTITY_SIDE_TABLE).index_select(0, cand_entity)
        click, play = self.model.heads_from_side(ctx_ids, ctx_query, side, cand_dense, cand_ctx, *optional)
        p_click = torch.sigmoid(click)
        if play is None:
            return p_click
        return p_click, p_click * torch.sigmoid(play)


def graph_batch(batch: dict[str, np.ndarray]) -> dict[str, np.ndarray]:
    """A training batch as the in-graph model takes it: `cand_entity` from the model entity ids (at training
    every entity is one the model knows) instead of `cand_ids` and `cand_genres`."""
    out = {k: v for k, v in batch.items() if k not in ("cand_ids", "cand_genres")}
    out[ENTITY_SIDE_INPUT] = np.ascontiguousarray(batch["cand_ids"][:, 0])
    return out


def reference_batch(batch: dict[str, np.ndarray], tables: FeatureTables, n_model_entities: int) -> dict:
    """The in-graph model's batch as the torch model takes it: the ids, kinds and genres of `cand_entity`."""
    side = entity_side_inputs(tables, batch[ENTITY_SIDE_INPUT], n_model_entities)
    out = {k: v for k, v in batch.items() if k != ENTITY_SIDE_INPUT}
    out["cand_ids"] = np.stack([side["entity"], side["kind"]], 1)
    out["cand_genres"] = side["genres"]
    return out


def export_entity_graph(model: nn.Module, tables: FeatureTables, batch: dict, path: Path, dynamic_axes: dict) -> dict:
    """Writes the in-graph model at `path` and `entity_side.onnx` beside it; returns the manifest's
    description of the table (its rows, width and file)."""
    wrapped = InGraphEntities(model, tables)
    names = graph_input_names(model.spec.input_names())
    trace_to_onnx(wrapped, graph_batch(batch), names, model.spec.output_names(), path, dynamic_axes)
    table = getattr(wrapped, ENTITY_SIDE_TABLE)
    _make_overridable(path, ENTITY_SIDE_TABLE)
    side_path = path.with_name("entity_side.onnx")
    sample = {k: v[:4] for k, v in side_inputs_of(tables, model.spec.vocabulary.n_entities).items()}
    rows_axes = {k: {0: "E"} for k in (*sample, "rows")}
    trace_to_onnx(EntitySideGraph(model), sample, sample, ["rows"], side_path, rows_axes)
    return {"rows": int(table.shape[0]), "width": int(table.shape[1]), "file": side_path.name}


def _make_overridable(path: Path, name: str) -> None:
    """Declares the initializer `name` a graph input too (with its rows dynamic), so a caller may feed a
    longer table; without one, onnxruntime uses the initializer."""
    graph = onnx.load(str(path))
    init = next((i for i in graph.graph.initializer if i.name == name), None)
    if init is None:
        raise RuntimeError(f"the exported graph has no initializer {name!r}")
    graph.graph.input.append(onnx.helper.make_tensor_value_info(name, init.data_type, ["E", int(init.dims[1])]))
    onnx.save(graph, str(path))
