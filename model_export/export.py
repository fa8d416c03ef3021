"""Export: the versioned bundle the service loads.

bundle/
  model.onnx      opset 17, dynamic context (B) and candidate (N) axes; the entity side inside (its table
                  an initializer: model_export.entity_graph)
  entity_side.onnx  that table's rows from (model entity id, kind, genres), for entities added at run time
  checkpoint.pt   the torch weights (the service never reads them; the benchmark's reference does)
  manifest.json   the whole contract with the service (see `export_bundle`)
  tables/         feature tables (entities, statistics, users, clusters, factors, histories)
  text_encoder.onnx, tokenizer.json   with text features only: the MiniLM title encoder, for
                  entities added at run time (model_export.text_encoder)

Export fails unless onnxruntime and torch agree within PARITY_TOLERANCE on a held-out batch (checked
before an int8 bundle's quantization, whose own difference the manifest records).
"""

from __future__ import annotations

import json
import time
from dataclasses import asdict
from pathlib import Path

import numpy as np
import torch

from model_export.entity_graph import export_entity_graph, graph_batch, reference_batch
from model_export.onnx_trace import OPSET, trace_to_onnx
from unirank.core.bundle_files import content_hash, file_hashes
from unirank.core.features import (
    CAND_IDS,
    CTX_IDS,
    DENSE_FEATURES,
    ENTITY_SIDE_INPUT,
    HISTORY_INPUTS,
    INPUT_NAMES,
    TEXT_INPUTS,
    graph_input_names,
)
from unirank.core.history import HISTORY_LENGTH
from unirank.core.text import MAX_QUERY_TOKENS, TOKEN_BUCKETS

PARITY_TOLERANCE = 1e-4
IMPUTATION = {
    "search": "source_entity_id is set to null",
    "prequery": "query and source_entity_id are set to null",
    "more_like_this": "a missing query is imputed from the normalised tokens of the source entity's title",
}


class ParityError(RuntimeError):
    """onnxruntime and torch disagree on the exported model."""


# Contexts (B) and candidates (N) vary independently; one symbol for both would let onnxruntime
# assume they are equal and reuse buffers wrongly.
_INPUTS = INPUT_NAMES + HISTORY_INPUTS + TEXT_INPUTS + (ENTITY_SIDE_INPUT,)
DYNAMIC_AXES = {k: {0: "B" if k.startswith("ctx") else "N"} for k in _INPUTS} | {
    "score": {0: "N"},
    "play": {0: "N"},
}


def _input_spec(batch: dict[str, np.ndarray], names) -> list[dict]:
    axes = {
        "ctx_ids": ["B", len(CTX_IDS)],
        "ctx_query": ["B", MAX_QUERY_TOKENS],
        "cand_ids": ["N", len(CAND_IDS)],
        "cand_genres": ["N", 3],
        "cand_dense": ["N", len(DENSE_FEATURES)],
        "cand_ctx": ["N"],
        ENTITY_SIDE_INPUT: ["N"],
    }
    axes |= {k: ["B", int(batch[k].shape[1])] for k in HISTORY_INPUTS if k in batch}
    axes |= {k: ["N", int(batch[k].shape[1])] for k in TEXT_INPUTS if k in batch}
    return [{"name": k, "dtype": str(batch[k].dtype), "shape": axes[k]} for k in names]


def export_onnx(model: torch.nn.Module, batch: dict[str, np.ndarray], path: Path, tables=None) -> dict | None:
    """The model's graph at `path` (opset OPSET, dynamic context and candidate axes), traced on `batch`.
    With `tables`, the graph with the entity side inside (`model_export.entity_graph`) and the table's
    description; without, the model's own inputs and None."""
    if tables is not None:
        return export_entity_graph(model, tables, batch, path, DYNAMIC_AXES)
    trace_to_onnx(model, batch, model.spec.input_names(), model.spec.output_names(), path, DYNAMIC_AXES)
    return None


def check_parity(model: torch.nn.Module, onnx_path: Path, batch: dict[str, np.ndarray], tables=None) -> float:
    """The largest difference between onnxruntime's scores and torch's on `batch` (with `tables`: the graph
    with the entity side inside, fed the batch's entity indices, against the torch model fed those
    entities' ids, kinds and genres). Raises ParityError beyond PARITY_TOLERANCE."""
    import onnxruntime as ort

    options = ort.SessionOptions()
    options.log_severity_level = 3  # the entity side's table is overridable by design: no warning about it
    session = ort.InferenceSession(str(onnx_path), options, providers=["CPUExecutionProvider"])
    names = model.spec.input_names()
    if tables is not None:  # the reference's ids, kinds and genres are those of the graph's entity indices
        graph = graph_batch(batch)
        batch = reference_batch(graph, tables, model.spec.vocabulary.n_entities)
        feed = {k: graph[k] for k in graph_input_names(names)}
    else:
        feed = {k: batch[k] for k in names}
    got = session.run(None, feed)
    with torch.no_grad():
        want = model(*(torch.from_numpy(batch[k]) for k in names))
    want = [w.numpy() for w in (want if isinstance(want, tuple) else (want,))]
    if len(got) != len(want):
        raise ParityError(f"onnxruntime returns {len(got)} outputs, torch {len(want)}")
    diff = max((float(np.max(np.abs(g - w))) for g, w in zip(got, want, strict=True) if len(w)), default=0.0)
    if not diff <= PARITY_TOLERANCE:
        raise ParityError(f"onnxruntime and torch differ by {diff:.2e} (> {PARITY_TOLERANCE:.0e}); bundle not exported")
    return diff


def quantize_int8(path: Path, batch: dict[str, np.ndarray]) -> float:
    """Replaces the graph at `path` by its int8 dynamic quantization (onnxruntime's: MatMul and Gemm weights
    as int8, activations quantized per call); returns the largest score difference from the float graph on
    `batch` (given as the graph takes it). The weights use 7 bits (`reduce_range`): on x86 CPUs without
    VNNI (AVX2 only, where a bundle may be served) onnxruntime's uint8 x int8 kernels saturate with full
    8-bit weights (`tests/test_model.py`'s int8 bundle on an AVX2 EPYC: scores moved up to 0.050 with 8
    bits, 0.008 with 7)."""
    import onnxruntime as ort
    from onnxruntime.quantization import QuantType, quantize_dynamic

    quantized = path.with_suffix(".int8.onnx")
    quantize_dynamic(str(path), str(quantized), weight_type=QuantType.QInt8, reduce_range=True)
    options = ort.SessionOptions()
    options.log_severity_level = 3
    before, after = (
        ort.InferenceSession(str(p), options, providers=["CPUExecutionProvider"]) for p in (path, quantized)
    )
    feed = {i.name: batch[i.name] for i in before.get_inputs()}
    diff = float(np.max(np.abs(before.run(None, feed)[0] - after.run(None, feed)[0])))
    quantized.replace(path)
    return diff


def held_out_batch(enc, n_requests: int = 64, history_length: int | None = None) -> dict[str, np.ndarray]:
    """The first n_requests requests of an encoded split, as one batch of B contexts and N candidates."""
    x = enc.inputs
    rows = np.flatnonzero(x["cand_ctx"] < n_requests)
    history = {k: x[k][:n_requests, :history_length] for k in HISTORY_INPUTS if history_length and k in x}
    return history | {
        "ctx_ids": x["ctx_ids"][:n_requests],
        "ctx_query": x["ctx_query"][:n_requests],
        "cand_ids": x["cand_ids"][rows],
        "cand_genres": x["cand_genres"][rows],
        "cand_dense": x["cand_dense"][rows],
        "cand_ctx": x["cand_ctx"][rows],
        "cand_text": x["cand_text"][rows],
    }


def export_bundle(model, tables, val_enc, out: Path | str, cfg, training: dict, data_summary: dict) -> dict:
    out = Path(out)
    out.mkdir(parents=True, exist_ok=True)
    spec = model.spec
    names, outputs = spec.input_names(), spec.output_names()
    history_length = spec.architecture.history_length if spec.options.history_encoder else None
    batch = held_out_batch(val_enc, history_length=history_length)
    onnx_path = out / "model.onnx"
    entity_side = export_onnx(model, batch, onnx_path, tables)
    parity = check_parity(model, onnx_path, batch, tables)
    graph_names = graph_input_names(names)
    int8 = {"max_abs_diff_vs_float": quantize_int8(onnx_path, graph_batch(batch))} if cfg.int8 else None
    # The torch weights travel too, for the eager-mode reference the benchmark compares against.
    torch.save({"spec": spec.to_dict(), "state_dict": model.state_dict()}, out / "checkpoint.pt")
    tables.save(out / "tables")
    text_encoder = None
    if spec.options.text_features:
        from model_export.text_encoder import export_text_encoder

        text_encoder = export_text_encoder(out)
    files = file_hashes(out)
    digest = content_hash(files)
    created = time.strftime("%Y%m%dT%H%M%SZ", time.gmtime())
    manifest = {
        "format": 1,
        "version": f"{created}-{digest[:12]}",
        "content_hash": digest,
        "created": created,
        "personalization": cfg.personalization,
        "tasks": list(cfg.tasks),
        "train_config": asdict(cfg) | {"tasks": list(cfg.tasks)},
        "model": spec.to_dict(),
        "onnx": {
            "file": "model.onnx",
            "opset": OPSET,
            "inputs": _input_spec(graph_batch(batch), graph_names),
            "outputs": [{"name": n, "dtype": "float32", "shape": ["N"]} for n in outputs],
            # the entity side's table inside the graph (an initializer the service overrides with entities
            # added at run time, their rows from `file`)
            "entity_side": entity_side,
            "int8": int8,  # the weights quantized (`unirank train --int8`), with the scores' largest change
        },
        "rank_by": spec.options.rank_by,
        "features": {
            "ctx_ids": list(CTX_IDS),
            "cand_ids": list(CAND_IDS),
            "dense": list(DENSE_FEATURES),
            "max_query_tokens": MAX_QUERY_TOKENS,
            "token_buckets": TOKEN_BUCKETS,
            "history_length": HISTORY_LENGTH,
        },
        "imputation": IMPUTATION,
        "tables": files,
        "training_data": data_summary,
        "training": training,
        "parity_max_abs_diff": parity,
        "text_encoder": text_encoder,
        "metrics": None,
    }
    (out / "manifest.json").write_text(json.dumps(manifest, indent=2))
    return manifest


def record_metrics(bundle: Path | str, metrics: dict) -> dict:
    path = Path(bundle) / "manifest.json"
    manifest = json.loads(path.read_text())
    manifest["metrics"] = metrics
    path.write_text(json.dumps(manifest, indent=2))
    return manifest
