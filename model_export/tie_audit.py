"""How much the stored row order moved the study's numbers before the metrics became tie-aware.

`python -m model_export.tie_audit --data DIR` scores the test window with the baselines that give many
candidates the same score (popularity, BM25, ALS) and reports NDCG@10 per task four ways: the earlier
metric (ties broken by row order) with each request's clicked rows stored first, shuffled, and stored
last, and the tie-aware metric (`model_export.metrics`, which the same three orders cannot move).
`--model` adds the unified model (trained as the study's reference row, seed 0).
Prints a markdown table and writes it with a JSON next to it under `--out`.
"""

from __future__ import annotations

import argparse
import json
import time
from pathlib import Path

import numpy as np

from model_export.metrics import K, ranking_metrics
from unirank.core.vocab import TASKS


def row_order_metric(group: np.ndarray, scores: np.ndarray, labels: np.ndarray, k: int = K) -> np.ndarray:
    """NDCG@k as the study computed it before: a stable sort, so ties keep the stored row order."""
    order = np.lexsort((np.arange(len(scores)), -scores, group))
    g, y = group[order], labels[order] > 0
    starts = np.flatnonzero(np.r_[True, g[1:] != g[:-1]])
    sizes = np.diff(np.r_[starts, len(g)])
    pos = np.arange(len(g)) - np.repeat(starts, sizes)
    gid = np.repeat(np.arange(len(starts)), sizes)
    n_pos = np.bincount(gid, weights=y, minlength=len(starts))
    dcg = np.bincount(gid, weights=np.where(pos < k, y / np.log2(pos + 2.0), 0.0), minlength=len(starts))
    ideal = np.array([np.sum(1.0 / np.log2(np.arange(min(int(n), k)) + 2.0)) for n in n_pos])
    has = n_pos > 0
    return (dcg / np.maximum(ideal, 1e-12))[has]


def _reordered(group: np.ndarray, labels: np.ndarray, how: str, rng: np.random.Generator) -> np.ndarray:
    """A row permutation that keeps requests together and puts clicked rows first / last / anywhere."""
    noise = rng.random(len(group))
    key = {"clicked first": -labels, "clicked last": labels, "shuffled": noise}[how]
    return np.lexsort((noise, key, group))


def audit(data_dir: Path, seed: int = 0, model: bool = False) -> dict:
    from model_export.baselines import als_scores, bm25_scores
    from model_export.evaluate import popularity_scores
    from model_export.study import REFERENCE, VARIANTS, Study

    study = Study(data_dir, (seed,), 6, rows=("popularity",))
    _, _, test = study.encoded("full", True)
    rng = np.random.default_rng(seed)
    scorers = {
        "popularity": (popularity_scores(study.tables, test), TASKS),
        "bm25": (bm25_scores(study.tables, test), ("search",)),
        "implicit als": (als_scores(study.tables, test), ("prequery", "more_like_this")),
    }
    if model:
        scorers[REFERENCE] = (study.scores(VARIANTS[REFERENCE], seed), TASKS)
    out = {}
    for name, (scores, tasks) in scorers.items():
        for task in tasks:
            rows = np.flatnonzero(test.row_task == task)
            group, s, y = test.inputs["cand_ctx"][rows], scores[rows], test.labels[rows]
            cell = {}
            for how in ("clicked first", "shuffled", "clicked last"):
                p = _reordered(group, y, how, rng)
                cell[f"row order, {how}"] = float(row_order_metric(group[p], s[p], y[p]).mean())
                cell[f"tie-aware, {how}"] = float(ranking_metrics(group[p], s[p], y[p])["ndcg@10"].mean())
            _, counts = np.unique(np.stack([group, s]), axis=1, return_counts=True)
            cell["rows in a tie"] = float(counts[counts > 1].sum() / len(rows))
            out[f"{name} / {task}"] = cell
    return out


def markdown(result: dict) -> str:
    lines = [
        "| baseline / task | rows in a tie | old: clicked first | old: shuffled | old: clicked last | tie-aware |",
        "|---|---|---|---|---|---|",
    ]
    for name, c in result.items():
        aware = {round(c[f"tie-aware, {h}"], 6) for h in ("clicked first", "shuffled", "clicked last")}
        lines.append(
            f"| {name} | {c['rows in a tie']:.0%} | {c['row order, clicked first']:.4f} | "
            f"{c['row order, shuffled']:.4f} | {c['row order, clicked last']:.4f} | "
            f"{c['tie-aware, shuffled']:.4f}{'' if len(aware) == 1 else ' (order-dependent!)'} |"
        )
    return "\n".join(lines) + "\n"


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--data", type=Path, required=True)
    parser.add_argument("--out", type=Path, default=Path("results"))
    parser.add_argument("--model", action="store_true", help="also train and audit the unified model")
    args = parser.parse_args()
    result = audit(args.data, model=args.model)
    table = markdown(result)
    stem = args.out / f"tie-audit-{time.strftime('%Y%m%d-%H%M%S')}"
    args.out.mkdir(parents=True, exist_ok=True)
    stem.with_suffix(".json").write_text(json.dumps({"data": str(args.data), "ndcg@10": result}, indent=2))
    stem.with_suffix(".md").write_text(table)
    print(table + f"written: {stem}.json, {stem}.md")


if __name__ == "__main__":
    main()
