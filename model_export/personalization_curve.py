"""How much personalization a request should get: NDCG@10 per task as the `personalization_weight` of
/rank goes from 0 (the user's cluster) to 1 (the user), on the test window.

`python -m model_export.personalization_curve --data DIR [--seeds 3]` trains the unified model (the
study's reference row) per seed, scores the test requests at level `full` and at level `cluster` (what
the service's second model call computes), blends them with `unirank.core.context.blend_personalization`
(the service's own function) for each weight, and writes a JSON, a markdown table and a PNG of the
curves (search against prequery and more-like-this) under `--out`.
"""

from __future__ import annotations

import argparse
import json
import time
from pathlib import Path

import numpy as np

from model_export.evaluate import per_task
from unirank.core.context import blend_personalization
from unirank.core.vocab import TASKS

WEIGHTS = (0.0, 0.25, 0.5, 0.75, 1.0)


def curve(data_dir: Path, seeds: tuple[int, ...], weights=WEIGHTS) -> dict:
    from tqdm import tqdm

    from model_export.study import REFERENCE, VARIANTS, Study
    from model_export.train import predict

    study = Study(data_dir, seeds, 6, rows=(REFERENCE,))
    fit, val, test = study.encoded("full", True)
    _, _, test_cluster = study.encoded("cluster", True)
    if not np.array_equal(test.labels, test_cluster.labels) or not np.array_equal(test.row_task, test_cluster.row_task):
        raise RuntimeError("the full and cluster encodings of the test window differ in their rows")
    ndcg = {task: np.zeros((len(seeds), len(weights))) for task in TASKS}
    for s, seed in enumerate(tqdm(seeds, desc="personalization curve", unit="seed")):
        model = study.fit_model(VARIANTS[REFERENCE], seed)
        full, cluster = predict(model, test), predict(model, test_cluster)
        for w, weight in enumerate(weights):
            metrics = per_task(test, blend_personalization(full, cluster, weight), TASKS)
            for task in TASKS:
                ndcg[task][s, w] = float(np.nanmean(metrics[task]["ndcg@10"]))
    return {
        "data": str(data_dir),
        "seeds": list(seeds),
        "weights": list(weights),
        "ndcg@10": {t: v.mean(0).tolist() for t, v in ndcg.items()},
        "ndcg@10_std": {t: v.std(0).tolist() for t, v in ndcg.items()},
    }


def markdown(result: dict) -> str:
    weights = result["weights"]
    lines = ["| task | " + " | ".join(f"w = {w:g}" for w in weights) + " |", "|---|" + "---|" * len(weights)]
    for task, values in result["ndcg@10"].items():
        lines.append(f"| {task} | " + " | ".join(f"{v:.4f}" for v in values) + " |")
    return "\n".join(lines) + "\n"


def plot(result: dict, path: Path) -> None:
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    weights = result["weights"]
    fig, (left, right) = plt.subplots(1, 2, figsize=(12, 4.5))
    for task, values in result["ndcg@10"].items():
        left.errorbar(weights, values, yerr=result["ndcg@10_std"][task], marker="o", capsize=3, label=task)
    left.set_xlabel("personalization_weight (0: cluster, 1: user)")
    left.set_ylabel("NDCG@10")
    left.set_title("NDCG@10 per task")
    left.legend()
    nd = result["ndcg@10"]
    for other in ("prequery", "more_like_this"):
        right.plot(nd["search"], nd[other], marker="o", label=f"search vs {other}")
        for w, x, y in zip(weights, nd["search"], nd[other], strict=True):
            right.annotate(f"{w:g}", (x, y), textcoords="offset points", xytext=(4, 4), fontsize=8)
    right.set_xlabel("search NDCG@10")
    right.set_ylabel("recommendation NDCG@10")
    right.set_title("trade-off (labels: the weight)")
    right.legend()
    fig.suptitle(f"personalization weight — {result['data']}")
    fig.tight_layout()
    fig.savefig(path, dpi=110)
    plt.close(fig)


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--data", type=Path, required=True)
    parser.add_argument("--seeds", type=int, default=3)
    parser.add_argument("--out", type=Path, default=Path("results"))
    args = parser.parse_args()
    result = curve(args.data, tuple(range(args.seeds)))
    stem = args.out / f"personalization-curve-{time.strftime('%Y%m%d-%H%M%S')}"
    args.out.mkdir(parents=True, exist_ok=True)
    stem.with_suffix(".json").write_text(json.dumps(result, indent=2))
    stem.with_suffix(".md").write_text(markdown(result))
    plot(result, stem.with_suffix(".png"))
    print(markdown(result) + f"written: {stem}.json, .md, .png")


if __name__ == "__main__":
    main()
