"""Offline evaluation: per-task AUC, NDCG@10, HR@10 and MRR over each request's whole impression list.

The exported bundle is scored through onnxruntime (exactly what the service runs) next to a
popularity baseline (per-country clicks in the feature window) on the same requests.
"""

from __future__ import annotations

import json
from pathlib import Path

import numpy as np

from model_export import memory
from model_export.data import SPLIT_BOUNDS, Dataset
from model_export.event_log import CHUNK_ROWS, IN_MEMORY_ROWS, EventLog, count_events
from model_export.metrics import ranking_metrics, summarize
from model_export.splits import Encoded, click_log, encode_events
from model_export.table_builder import ClickLog, Vocabularies
from unirank.core.context import personalization_rank
from unirank.core.features import ENTITY_SIDE_INPUT, HISTORY_INPUTS, FeatureEncoder
from unirank.core.tables import FeatureTables

METRICS = ("auc", "ndcg@10", "hr@10", "mrr")


def onnx_session(bundle: Path | str):
    import onnxruntime as ort

    options = ort.SessionOptions()
    options.log_severity_level = 3  # a graph with the entity side inside warns that its table is overridable
    return ort.InferenceSession(str(Path(bundle) / "model.onnx"), options, providers=["CPUExecutionProvider"])


def score_onnx(bundle: Path | str, enc: Encoded, chunk: int = 2000, session=None) -> np.ndarray:
    """Scores through onnxruntime, `chunk` requests per call."""
    session = session or onnx_session(bundle)
    x = enc.inputs
    n_req = x["ctx_ids"].shape[0]
    out = np.empty(len(enc), np.float32)
    for s in range(0, n_req, chunk):
        rows = np.flatnonzero((x["cand_ctx"] >= s) & (x["cand_ctx"] < s + chunk))
        feed = {
            "ctx_ids": x["ctx_ids"][s : s + chunk],
            "ctx_query": x["ctx_query"][s : s + chunk],
            "cand_ids": x["cand_ids"][rows],
            "cand_genres": x["cand_genres"][rows],
            "cand_dense": x["cand_dense"][rows],
            "cand_ctx": x["cand_ctx"][rows] - s,
            "cand_text": x["cand_text"][rows],
            # a graph with the entity side inside: the entity indices (every one the model's at training)
            ENTITY_SIDE_INPUT: x["cand_ids"][rows, 0],
        } | {k: x[k][s : s + chunk] for k in HISTORY_INPUTS if k in x}
        out[rows] = session.run(None, {i.name: _fit(feed[i.name], i.shape) for i in session.get_inputs()})[0]
    return out


def _fit(array: np.ndarray, shape: list) -> np.ndarray:
    """History tensors are encoded wider than a model may read: keep the model's fixed width."""
    return array[:, : shape[1]] if array.ndim == 2 and isinstance(shape[1], int) else array


def popularity_scores(tables: FeatureTables, enc: Encoded) -> np.ndarray:
    cand = enc.inputs["cand_ids"][:, 0]
    country = enc.inputs["ctx_ids"][enc.inputs["cand_ctx"], 1]
    return tables.pop[cand, country] + 1e-3 * tables.pop[cand, 0]


def per_task(enc: Encoded, scores: np.ndarray, tasks) -> dict[str, dict[str, np.ndarray]]:
    out = {}
    for task in tasks:
        rows = np.flatnonzero(enc.row_task == task)
        if rows.size:
            out[task] = ranking_metrics(enc.inputs["cand_ctx"][rows], scores[rows], enc.labels[rows])
    return out


class CatalogMismatch(ValueError):
    """The dataset's impressions are mostly of entities the bundle was not trained with."""


def evaluate_bundle(
    bundle: Path | str,
    data_dir: Path | str,
    split: str = "test",
    json_out: Path | str | None = None,
    minimum_overlap: float = 0.0,
    chunk_rows: int = CHUNK_ROWS,
    in_memory_rows: int = IN_MEMORY_ROWS,
    source: EventLog | None = None,
    clicks: tuple | None = None,
) -> dict:
    """Metrics of the bundle on a split of the dataset; CatalogMismatch when fewer than `minimum_overlap` of
    the split's impressions are of entities the bundle knows (another catalogue: the numbers would mislead).
    A log of more than `in_memory_rows` events (or an already scanned `source`) is read a time slice of
    about `chunk_rows` rows at a time (`EventLog`); every request lies in one slice, so the per-request
    metrics are the same. `clicks`: the log's click log in the bundle's ids (`ClickLog`), when the caller
    has it (training does), instead of reading the log once more for it."""
    manifest = json.loads((Path(bundle) / "manifest.json").read_text())
    tables = FeatureTables.load(Path(bundle) / "tables")
    encoder = FeatureEncoder(tables, manifest["personalization"])
    full = personalization_rank(encoder.level) >= 2
    if source is None and count_events(data_dir) > in_memory_rows:
        source = EventLog(data_dir, chunk_rows)
    if source is not None:
        if full and clicks is None:
            log = ClickLog(Vocabularies.of_tables(tables))
            for name in SPLIT_BOUNDS:
                for chunk in source.chunks(name):
                    log.add(chunk)
            clicks = log.arrays()
        parts = source.chunks(split)
        clicks = clicks if full else None
    else:
        dataset = Dataset.load(data_dir)
        clicks = click_log(encoder, dataset) if full else None
        parts = iter([dataset.split(split)])
    tasks = manifest["tasks"]
    session = onnx_session(bundle)
    known = shown = 0
    model: dict[str, list[dict]] = {}
    baseline: dict[str, list[dict]] = {}
    for events in parts:
        targets = events.column("target_entity_id").to_pylist()
        known, shown = known + sum(t in tables.entity_index for t in targets), shown + len(targets)
        enc = encode_events(encoder, events, tasks, manifest["train_config"]["impute"], clicks)
        if not len(enc):
            continue
        for task, metrics in per_task(enc, score_onnx(bundle, enc, session=session), tasks).items():
            model.setdefault(task, []).append(metrics)
        for task, metrics in per_task(enc, popularity_scores(tables, enc), tasks).items():
            baseline.setdefault(task, []).append(metrics)
        if source is not None:
            del events, enc, targets
            memory.release()
    overlap = known / max(shown, 1)
    if overlap < minimum_overlap:
        raise CatalogMismatch(
            f"only {overlap:.1%} of the {split} impressions in {data_dir} are of entities the bundle at {bundle} "
            "was trained with: another catalogue? (--allow-catalog-mismatch reports anyway)"
        )
    result = {
        "split": split,
        "bundle_version": manifest["version"],
        "personalization": manifest["personalization"],
        "catalog_overlap": overlap,
        "tasks": {
            t: {"model": summarize(_joined(model[t])), "popularity": summarize(_joined(baseline[t]))} for t in model
        },
    }
    if json_out:
        Path(json_out).parent.mkdir(parents=True, exist_ok=True)
        Path(json_out).write_text(json.dumps(result, indent=2))
    return result


def _joined(parts: list[dict[str, np.ndarray]]) -> dict[str, np.ndarray]:
    """Per-request metrics of several slices as one set of requests."""
    return {m: np.concatenate([p[m] for p in parts]) for m in parts[0]}


def format_table(result: dict) -> str:
    lines = [f"| task | ranker | {' | '.join(METRICS)} | requests |", "|---|---|" + "---|" * (len(METRICS) + 1)]
    for task, rows in result["tasks"].items():
        for name, m in rows.items():
            lines.append(f"| {task} | {name} | " + " | ".join(f"{m[k]:.4f}" for k in METRICS) + f" | {m['requests']} |")
    return "\n".join(lines)
