"""Offline evaluation: per-task AUC, NDCG@10, HR@10 and MRR over each request's whole impression list.

The exported bundle is scored through onnxruntime (exactly what the service runs) next to a
popularity baseline (per-country clicks in the feature window) on the same requests.
"""

from __future__ import annotations

import json
from pathlib import Path

import numpy as np

from model_export.context import personalization_rank
from model_export.data import Dataset
from model_export.features import HISTORY_INPUTS, FeatureEncoder
from model_export.splits import Encoded, click_log, encode_split
from model_export.tables import FeatureTables

K = 10
METRICS = ("auc", "ndcg@10", "hr@10", "mrr")


def ranking_metrics(group: np.ndarray, scores: np.ndarray, labels: np.ndarray, k: int = K) -> dict[str, np.ndarray]:
    """Per-request metrics (arrays aligned on requests with at least one positive; AUC on requests
    with both classes, NaN elsewhere). Ties break by row order, so a constant score earns nothing."""
    order = np.lexsort((np.arange(len(scores)), -scores, group))
    g, y = group[order], labels[order] > 0
    starts = np.flatnonzero(np.r_[True, g[1:] != g[:-1]])
    sizes = np.diff(np.r_[starts, len(g)])
    pos = np.arange(len(g)) - np.repeat(starts, sizes)
    gid = np.repeat(np.arange(len(starts)), sizes)
    n_pos = np.bincount(gid, weights=y, minlength=len(starts))
    gain = y / np.log2(pos + 2.0)
    dcg = np.bincount(gid, weights=np.where(pos < k, gain, 0.0), minlength=len(starts))
    ideal = np.array([np.sum(1.0 / np.log2(np.arange(min(int(n), k)) + 2.0)) for n in n_pos])
    first = np.full(len(starts), np.inf)
    np.minimum.at(first, gid[y], pos[y])
    # AUC from ascending ranks of the (score-sorted, descending) positions.
    n_neg = sizes - n_pos
    rank_asc = sizes[gid] - pos  # 1 = lowest score
    pos_rank_sum = np.bincount(gid, weights=np.where(y, rank_asc, 0.0), minlength=len(starts))
    with np.errstate(invalid="ignore", divide="ignore"):
        auc = (pos_rank_sum - n_pos * (n_pos + 1) / 2) / (n_pos * n_neg)
    has = n_pos > 0
    return {
        "ndcg@10": (dcg / np.maximum(ideal, 1e-12))[has],
        "hr@10": (first < k).astype(float)[has],
        "mrr": (1.0 / (first + 1.0))[has],
        "auc": np.where((n_pos > 0) & (n_neg > 0), auc, np.nan)[has],
    }


def summarize(per_request: dict[str, np.ndarray]) -> dict[str, float]:
    out = {m: float(np.nanmean(v)) if np.isfinite(v).any() else float("nan") for m, v in per_request.items()}
    out["requests"] = int(len(per_request["mrr"]))
    return out


def score_onnx(bundle: Path | str, enc: Encoded, chunk: int = 2000) -> np.ndarray:
    """Scores through onnxruntime, `chunk` requests per call."""
    import onnxruntime as ort

    session = ort.InferenceSession(str(Path(bundle) / "model.onnx"), providers=["CPUExecutionProvider"])
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


def evaluate_bundle(bundle: Path | str, data_dir: Path | str, split: str = "test", json_out: Path | str | None = None) -> dict:
    manifest = json.loads((Path(bundle) / "manifest.json").read_text())
    tables = FeatureTables.load(Path(bundle) / "tables")
    encoder = FeatureEncoder(tables, manifest["personalization"])
    dataset = Dataset.load(data_dir)
    clicks = click_log(encoder, dataset) if personalization_rank(encoder.level) >= 2 else None
    tasks = manifest["tasks"]
    enc = encode_split(encoder, dataset, split, tasks, manifest["train_config"]["impute"], clicks)
    model = per_task(enc, score_onnx(bundle, enc), tasks)
    baseline = per_task(enc, popularity_scores(tables, enc), tasks)
    result = {
        "split": split,
        "bundle_version": manifest["version"],
        "personalization": manifest["personalization"],
        "tasks": {t: {"model": summarize(model[t]), "popularity": summarize(baseline[t])} for t in model},
    }
    if json_out:
        Path(json_out).parent.mkdir(parents=True, exist_ok=True)
        Path(json_out).write_text(json.dumps(result, indent=2))
    return result


def format_table(result: dict) -> str:
    lines = [f"| task | ranker | {' | '.join(METRICS)} | requests |", "|---|---|" + "---|" * (len(METRICS) + 1)]
    for task, rows in result["tasks"].items():
        for name, m in rows.items():
            lines.append(f"| {task} | {name} | " + " | ".join(f"{m[k]:.4f}" for k in METRICS) + f" | {m['requests']} |")
    return "\n".join(lines)
