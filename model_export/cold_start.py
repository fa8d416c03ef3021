"""`unirank cold-start`: do title text features let entities nobody engaged with rank well?

Protocol: a random share of the catalogue is held out — every impression of those entities before the
test window is dropped, so the feature tables, the collaborative-filtering factors and the model never
see them engaged (their ID embeddings stay untrained). The test window is kept whole. The same model
is trained with and without text features over seeds and evaluated on the test requests whose clicked
entity is held out ("cold requests"), per task, and on all test requests (so the text features are
shown not to cost the warm ones). "New-entity training" shows a share of training rows as a new entity
would look (no id, no engagement statistics; DropoutNet), so the model learns to rank from content.
"""

from __future__ import annotations

import json
import time
from dataclasses import replace
from pathlib import Path

import numpy as np
import pyarrow as pa

from model_export.data import SPLIT_BOUNDS, Dataset
from model_export.metrics import ranking_metrics
from model_export.splits import click_log, encode_split
from model_export.table_builder import build_tables
from model_export.train import TrainConfig, fit, predict
from unirank.core.features import FeatureEncoder
from unirank.core.spec import ModelOptions
from unirank.core.vocab import TASKS

NEW_ENTITY_RATE = 0.2
ROWS = {
    "without text": TrainConfig(),
    "without text, new-entity training": TrainConfig(cold_entity_rate=NEW_ENTITY_RATE),
    "text: similarities only": TrainConfig(options=ModelOptions(text_features=True, text_vector=False)),
    "text: title vector + similarity": TrainConfig(options=ModelOptions(text_features=True)),
    "text + new-entity training": TrainConfig(
        options=ModelOptions(text_features=True), cold_entity_rate=NEW_ENTITY_RATE
    ),
}


def hold_out(dataset: Dataset, share: float, seed: int = 0) -> tuple[Dataset, set[str]]:
    """The dataset without any pre-test impression of a random `share` of the entities."""
    ids = np.asarray(dataset.entities.column("entity_id").to_pylist(), dtype=object)
    held = set(np.random.default_rng(seed).choice(ids, int(len(ids) * share), replace=False).tolist())
    ts = dataset.events.column("timestamp").cast(pa.int64()).to_numpy()
    req = dataset.events.column("request_id").to_numpy()
    _, first = np.unique(req, return_index=True)
    test_start = np.quantile(ts[first], SPLIT_BOUNDS["test"][0])
    target = np.asarray(dataset.events.column("target_entity_id").to_pylist(), dtype=object)
    drop = np.isin(target, list(held)) & (ts < test_start)
    return Dataset(dataset.events.filter(pa.array(~drop)), dataset.entities), held


def run_cold_start(
    data_dir: Path | str,
    out_root: Path | str = "results",
    seeds=(0, 1, 2),
    epochs: int = 6,
    share: float = 0.1,
    log=print,
) -> Path:
    started = time.perf_counter()
    full = Dataset.load(data_dir)
    train_ds, held = hold_out(full, share)
    tables = build_tables(train_ds.entities, train_ds.split("feature"), train_ds.events, text=True)
    encoder = FeatureEncoder(tables, "full")
    fit_enc = encode_split(encoder, train_ds, "fit", clicks=click_log(encoder, train_ds))
    val_enc = encode_split(encoder, train_ds, "validation", clicks=click_log(encoder, train_ds))
    test = encode_split(encoder, full, "test", clicks=click_log(encoder, full))
    target = np.asarray(test.requests.target_entity_id, dtype=object)
    cold_row = np.isin(target, list(held)) & (test.labels > 0)
    cold_request = np.zeros(test.inputs["ctx_ids"].shape[0], bool)
    cold_request[test.inputs["cand_ctx"][cold_row]] = True
    results: dict[str, dict] = {}
    for name, base in ROWS.items():
        for seed in seeds:
            log(f"cold start: {name}, seed {seed}")
            model, _ = fit(tables, fit_enc, val_enc, replace(base, epochs=epochs, seed=seed), lambda *_: None)
            scores = predict(model, test)
            for task in TASKS:
                for subset, requests in (("cold", cold_request), ("all", np.ones_like(cold_request))):
                    rows = np.flatnonzero((test.row_task == task) & requests[test.inputs["cand_ctx"]])
                    if rows.size == 0:
                        continue
                    m = ranking_metrics(test.inputs["cand_ctx"][rows], scores[rows], test.labels[rows])
                    entry = (
                        results.setdefault(name, {})
                        .setdefault(task, {})
                        .setdefault(subset, {"ndcg@10": [], "requests": 0})
                    )
                    entry["ndcg@10"].append(float(m["ndcg@10"].mean()))
                    entry["requests"] = int(len(m["ndcg@10"]))
    out = Path(out_root) / f"cold-start-{time.strftime('%Y%m%d-%H%M%S')}"
    out.mkdir(parents=True, exist_ok=True)
    summary = {
        "data": str(data_dir),
        "held_out_entities": len(held),
        "share": share,
        "seeds": list(seeds),
        "epochs": epochs,
        "seconds": round(time.perf_counter() - started, 1),
        "results": results,
    }
    (out / "cold_start.json").write_text(json.dumps(summary, indent=2))
    (out / "report.md").write_text(report(summary))
    return out


def report(summary: dict) -> str:
    base = next(iter(summary["results"]))  # the first row: no text, no new-entity training
    lines = [
        f"# Cold start — {summary['data']}",
        "",
        f"{summary['held_out_entities']} entities ({summary['share']:.0%}) never engaged before the test window; "
        f"seeds {summary['seeds']}; NDCG@10 mean ± std over seeds; lift: cold-request NDCG@10 against '{base}'.",
        "",
        "| task | requests | row | cold requests | lift | all requests |",
        "|---|---|---|---|---|---|",
    ]
    for task in TASKS:
        reference = np.mean(summary["results"][base].get(task, {}).get("cold", {}).get("ndcg@10", [np.nan]))
        for name, by_task in summary["results"].items():
            r = by_task.get(task, {})
            if "cold" not in r:
                continue
            cold, everything = np.array(r["cold"]["ndcg@10"]), np.array(r["all"]["ndcg@10"])
            lift = "" if name == base else f"{cold.mean() / reference - 1:+.1%}"
            lines.append(
                f"| {task} | {r['cold']['requests']} | {name} | {cold.mean():.4f} ± {cold.std():.4f} | {lift} | "
                f"{everything.mean():.4f} ± {everything.std():.4f} |"
            )
    return "\n".join(lines) + "\n"
