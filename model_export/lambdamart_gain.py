"""Where LambdaMART's ranking comes from: the share of split gain per feature, for one task's rows.

Contract: `python -m model_export.lambdamart_gain --data DIR [--task search] [--top 10]` encodes DIR as the
study does (`model_export.study.Study`, personalization `full`), trains the study's LambdaMART on that
task's fit rows alone (validation rows for early stopping) and prints each column's share of the total
split gain, largest first: the dense features, then task, country, cluster, kind and first genre.
"""

from __future__ import annotations

import argparse
from pathlib import Path

from model_export.baselines import lambdamart_booster
from model_export.study import Study, task_subset
from unirank.core.features import DENSE_FEATURES
from unirank.core.vocab import TASKS

COLUMNS = (*DENSE_FEATURES, "task", "country", "cluster", "kind", "first genre")


def gain_shares(data: Path, task: str, seed: int = 0) -> dict[str, float]:
    study = Study(data, (seed,), 1, rows=("lightgbm lambdamart",))
    fit, validation, _ = study.encoded("full", True)
    booster = lambdamart_booster(task_subset(fit, task), task_subset(validation, task), seed)
    gain = booster.feature_importance("gain")
    total = float(gain.sum()) or 1.0
    return dict(sorted(((c, float(g) / total) for c, g in zip(COLUMNS, gain, strict=True)), key=lambda p: -p[1]))


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--data", type=Path, required=True)
    parser.add_argument("--task", choices=TASKS, default="search")
    parser.add_argument("--top", type=int, default=10)
    args = parser.parse_args()
    for column, share in list(gain_shares(args.data, args.task).items())[: args.top]:
        print(f"{column:20s} {share:6.1%}")


if __name__ == "__main__":
    main()
