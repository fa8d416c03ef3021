"""`unirank study`: does the research's claim hold on these logs? Same splits, same feature tables,
same test requests for every row:

- the unified model vs one model per task (each trained only on its task's rows);
- personalization none / cluster / full;
- ablations: imputation off, feature crossing off (MLP only), task feature off;
- the research's options: task-conditioned feature gate, MMoE heads, the play head, the mixed-history
  encoder, title text features with the aspect gate, and gate + MMoE + play head together;
- training choices: a listwise loss next to BCE, and it with new-entity training (DropoutNet);
- baselines: popularity, BM25 (search), implicit ALS (prequery, more_like_this), LightGBM LambdaMART,
  SASRec (prequery, more_like_this: the sequential recommender a history-aware model must beat);
- with `task_share`, some tasks thinned to a share of their fit requests: where one task's data is thin,
  does the unified model's sharing across tasks pay (UniCoRn's mechanism) where separate models cannot?

Every trained row is repeated over seeds; the report gives the mean and spread and, for the headline
comparisons, a paired test on per-request NDCG@10 (t-test and a bootstrap interval of the difference).
`rows` runs a subset (the headline tests whose two rows ran).
"""

from __future__ import annotations

import json
import time
from dataclasses import dataclass, replace
from pathlib import Path

import numpy as np

from model_export.baselines import als_scores, bm25_scores, lambdamart_scores
from model_export.data import Dataset
from model_export.evaluate import METRICS, per_task, popularity_scores
from model_export.event_log import IN_MEMORY_ROWS, sample_users
from model_export.report import write_report
from model_export.sasrec import SASRecConfig, sasrec_scores
from model_export.splits import Encoded, click_log, encode_split
from model_export.table_builder import build_tables
from model_export.train import TrainConfig, fit, predict
from unirank.core.features import FeatureEncoder
from unirank.core.spec import Architecture, ModelOptions
from unirank.core.vocab import TASKS, Level

REFERENCE = "unified (full)"


@dataclass(frozen=True)
class Variant:
    """One trained row: data use (level, imputation, one model per task) and the model."""

    level: str = "full"
    impute: bool = True
    separate: bool = False
    architecture: Architecture = Architecture()
    options: ModelOptions = ModelOptions()
    listwise_weight: float = 0.0
    cold_entity_rate: float = 0.0
    cold_user_rate: float = 0.1  # TrainConfig's default


VARIANTS = {
    REFERENCE: Variant(),
    "separate per task (full)": Variant(separate=True),
    "unified (none)": Variant(level="none"),
    "unified (cluster)": Variant(level="cluster"),
    "no imputation": Variant(impute=False),
    "no feature crossing": Variant(architecture=Architecture(cross_layers=0)),
    "no task feature": Variant(architecture=Architecture(task_feature=False)),
    "+ task gate": Variant(options=ModelOptions(task_gate=True)),
    "+ mmoe (3 experts)": Variant(options=ModelOptions(mmoe_experts=3)),
    "+ play head": Variant(options=ModelOptions(play_head=True)),
    "+ history encoder": Variant(options=ModelOptions(history_encoder=True)),
    "+ text features": Variant(options=ModelOptions(text_features=True)),
    "+ numeric encodings": Variant(options=ModelOptions(numeric_bins=8)),
    "no lexical features": Variant(options=ModelOptions(lexical_features=False)),
    "no recency features": Variant(options=ModelOptions(recency_features=False)),
    "+ task gate + mmoe + play head": Variant(options=ModelOptions(task_gate=True, mmoe_experts=3, play_head=True)),
    "no cold-user training": Variant(cold_user_rate=0.0),
    "+ listwise loss": Variant(listwise_weight=0.3),
    "+ listwise loss + new-entity training": Variant(listwise_weight=0.3, cold_entity_rate=0.2),
}
BASELINES = ("lightgbm lambdamart", "popularity", "bm25", "implicit als", "sasrec")
RECOMMENDATION = ("prequery", "more_like_this")
SASREC_EPOCHS_PER_EPOCH = 10  # at most; validation NDCG@10 stops it earlier (the default study: 60)
# (comparison row, the row it is compared with, tasks)
HEADLINES = [
    (REFERENCE, "separate per task (full)", TASKS),
    (REFERENCE, "unified (none)", TASKS),
    (REFERENCE, "lightgbm lambdamart", TASKS),
    (REFERENCE, "bm25", ("search",)),
    (REFERENCE, "implicit als", RECOMMENDATION),
    (REFERENCE, "sasrec", RECOMMENDATION),
    ("+ history encoder", "sasrec", RECOMMENDATION),
    ("+ history encoder", REFERENCE, TASKS),
    (REFERENCE, "no recency features", TASKS),
    ("+ text features", REFERENCE, TASKS),
    ("+ numeric encodings", REFERENCE, TASKS),
    ("+ numeric encodings", "lightgbm lambdamart", TASKS),
    (REFERENCE, "no lexical features", ("search",)),
    ("+ listwise loss", REFERENCE, TASKS),
    ("+ listwise loss + new-entity training", REFERENCE, TASKS),
    ("+ listwise loss + new-entity training", "lightgbm lambdamart", TASKS),
]


CANDIDATE_INPUTS = ("cand_ids", "cand_genres", "cand_dense", "cand_ctx", "cand_text")  # one row per impression


def rows_subset(enc: Encoded, rows: np.ndarray) -> Encoded:
    """Some rows of a split; contexts stay whole (cand_ctx still points into them)."""
    inputs = dict(enc.inputs) | {k: enc.inputs[k][rows] for k in CANDIDATE_INPUTS if k in enc.inputs}
    return Encoded(inputs, enc.labels[rows], enc.played[rows], enc.row_task[rows], enc.requests)


def task_subset(enc: Encoded, task: str) -> Encoded:
    """The rows of one task."""
    return rows_subset(enc, np.flatnonzero(enc.row_task == task))


def parse_task_shares(values: list[str] | tuple[str, ...] | None) -> dict[str, float]:
    """`TASK=SHARE` options ("more_like_this=0.1") as {task: share}; a bad one is a ValueError naming it."""
    shares = {}
    for value in values or ():
        task, sep, share = value.partition("=")
        try:
            number = float(share)
        except ValueError:
            number = -1.0
        if not sep or task not in TASKS or not 0 < number <= 1:
            raise ValueError(
                f"--task-share {value!r}: expected TASK=SHARE with a task of {', '.join(TASKS)} and 0 < SHARE <= 1"
            )
        shares[task] = number
    return shares


def thin(enc: Encoded, shares: dict[str, float], seed: int = 0) -> Encoded:
    """The split with each task of `shares` kept for that share of its requests (whole requests, drawn once
    from `seed`, so every row of the study trains on the same thinned data); other tasks whole."""
    if not shares:
        return enc
    request = enc.inputs["cand_ctx"]
    drawn = np.random.default_rng(seed).random(int(request.max()) + 1 if len(request) else 0)
    keep = np.ones(len(enc), bool)
    for task, share in shares.items():
        keep &= ~((enc.row_task == task) & (drawn[request] >= share))
    return rows_subset(enc, np.flatnonzero(keep))


def check_rows(rows: tuple[str, ...] | None) -> tuple[str, ...]:
    """The rows to run (all when None); unknown names are refused with the list of known ones."""
    known = (*VARIANTS, *BASELINES)
    if rows is None:
        return known
    if unknown := [r for r in rows if r not in known]:
        raise ValueError(f"unknown study rows {unknown}; known: {', '.join(known)}")
    return tuple(dict.fromkeys(rows))


class Study:
    def __init__(
        self,
        data_dir: Path,
        seeds: tuple[int, ...],
        epochs: int,
        rows: tuple[str, ...] | None = None,
        max_events: int = IN_MEMORY_ROWS,
        task_share: dict[str, float] | None = None,
    ):
        """A log of more than `max_events` events is studied on a sample of its users (`sample_users`):
        every row trains and is tested on the same sample, so the comparisons stay paired. `task_share`
        thins tasks' fit rows ({task: share of its requests kept}): every trained row and LambdaMART learn
        from the same thinned fit window; validation and test stay whole."""
        self.seeds, self.epochs, self.rows = seeds, epochs, check_rows(rows)
        self.task_share = task_share or {}
        sampled = sample_users(data_dir, max_events)
        self.dataset, self.sample = sampled if sampled is not None else (Dataset.load(data_dir), None)
        self.tables = build_tables(
            self.dataset.entities, self.dataset.split("feature"), self.dataset.events, seed=0, text=True
        )
        self._encoded: dict[tuple[str, bool], tuple[Encoded, Encoded, Encoded]] = {}
        self._clicks = None

    def encoded(self, level: str, impute: bool) -> tuple[Encoded, Encoded, Encoded]:
        key = (level, impute)
        if key not in self._encoded:
            encoder = FeatureEncoder(self.tables, level)
            if level == Level.FULL and self._clicks is None:
                self._clicks = click_log(encoder, self.dataset)
            clicks = self._clicks if level == Level.FULL else None
            fit, validation, test = (
                encode_split(encoder, self.dataset, s, TASKS, impute, clicks) for s in ("fit", "validation", "test")
            )
            self._encoded[key] = (thin(fit, self.task_share), validation, test)
        return self._encoded[key]

    def _config(self, v: Variant, seed: int) -> TrainConfig:
        return TrainConfig(
            personalization=v.level,
            epochs=self.epochs,
            seed=seed,
            impute=v.impute,
            listwise_weight=v.listwise_weight,
            cold_entity_rate=v.cold_entity_rate,
            cold_user_rate=v.cold_user_rate,
            architecture=v.architecture,
            options=v.options,
        )

    def fit_model(self, v: Variant, seed: int):
        """One unified model of this row (not for `separate` rows)."""
        fit_enc, val_enc, _ = self.encoded(v.level, v.impute)
        model, _ = fit(self.tables, fit_enc, val_enc, self._config(v, seed), lambda *_: None)
        return model

    def scores(self, v: Variant, seed: int) -> np.ndarray:
        fit_enc, val_enc, test_enc = self.encoded(v.level, v.impute)
        quiet = lambda *_: None  # noqa: E731
        if not v.separate:
            return predict(self.fit_model(v, seed), test_enc)
        out = np.zeros(len(test_enc), np.float32)
        for task in TASKS:
            cfg = replace(self._config(v, seed), tasks=(task,))
            model, _ = fit(self.tables, task_subset(fit_enc, task), task_subset(val_enc, task), cfg, quiet)
            out[test_enc.row_task == task] = predict(model, task_subset(test_enc, task))
        return out

    def run(self) -> dict:
        """{row: {task: {metric: [per-request array per seed]}}}"""
        from tqdm import tqdm

        fit_enc, val_enc, test = self.encoded("full", True)
        per_seed: dict[str, list[dict]] = {}
        jobs = [(name, v, s) for name, v in VARIANTS.items() if name in self.rows for s in self.seeds]
        for name, v, seed in tqdm(jobs, desc="study", unit="model"):
            per_seed.setdefault(name, []).append(per_task(test, self.scores(v, seed), TASKS))
        if "lightgbm lambdamart" in self.rows:
            per_seed["lightgbm lambdamart"] = [
                per_task(test, lambdamart_scores(fit_enc, val_enc, test, s), TASKS) for s in self.seeds
            ]
        if "popularity" in self.rows:
            per_seed["popularity"] = [per_task(test, popularity_scores(self.tables, test), TASKS)]
        if "bm25" in self.rows:
            per_seed["bm25"] = [per_task(test, bm25_scores(self.tables, test), ("search",))]
        if "implicit als" in self.rows:
            per_seed["implicit als"] = [per_task(test, als_scores(self.tables, test), RECOMMENDATION)]
        if "sasrec" in self.rows:  # its epochs are short and many: SASREC_EPOCHS_PER_EPOCH per study epoch
            cfg = SASRecConfig(epochs=SASREC_EPOCHS_PER_EPOCH * self.epochs)
            per_seed["sasrec"] = [
                per_task(test, sasrec_scores(self.tables, self._clicks, val_enc, test, s, cfg), RECOMMENDATION)
                for s in self.seeds
            ]
        return per_seed


def summarise(per_seed: dict[str, list[dict]]) -> dict:
    """Mean over seeds of each metric's per-request mean, with the spread (std over seeds)."""
    rows = {}
    for name, seeds in per_seed.items():
        rows[name] = {}
        for task in seeds[0]:
            means = {m: [float(np.nanmean(s[task][m])) for s in seeds] for m in METRICS}
            rows[name][task] = (
                {m: float(np.mean(v)) for m, v in means.items()}
                | {f"{m}_std": float(np.std(v)) for m, v in means.items()}
                | {"seeds": len(seeds), "requests": len(seeds[0][task]["mrr"])}
            )
    return rows


def paired_tests(per_seed: dict[str, list[dict]], headlines=None, n_boot: int = 2000) -> list[dict]:
    """Per-request NDCG@10 (averaged over seeds) of row a minus row b, on the same test requests, for each
    (a, b, tasks) of `headlines` (HEADLINES by default) whose two rows ran."""
    from scipy import stats

    rng = np.random.default_rng(0)
    out = []
    for a, b, tasks in HEADLINES if headlines is None else headlines:
        if a not in per_seed or b not in per_seed:
            continue
        for task in tasks:
            xa = np.mean([s[task]["ndcg@10"] for s in per_seed[a]], axis=0)
            xb = np.mean([s[task]["ndcg@10"] for s in per_seed[b]], axis=0)
            diff = xa - xb
            boot = diff[rng.integers(0, len(diff), (n_boot, len(diff)))].mean(1)
            out.append(
                {
                    "a": a,
                    "b": b,
                    "task": task,
                    "ndcg_a": float(xa.mean()),
                    "ndcg_b": float(xb.mean()),
                    "diff": float(diff.mean()),
                    "relative": float(diff.mean() / max(xb.mean(), 1e-12)),
                    "ci95": [float(np.percentile(boot, 2.5)), float(np.percentile(boot, 97.5))],
                    "p_value": float(stats.ttest_rel(xa, xb).pvalue),
                    "requests": int(len(diff)),
                }
            )
    return out


def run_study(
    data_dir: Path | str,
    out_root: Path | str = "results",
    seeds=(0, 1, 2),
    epochs: int = 6,
    log=print,
    rows: tuple[str, ...] | None = None,
    max_events: int = IN_MEMORY_ROWS,
    task_share: dict[str, float] | None = None,
) -> Path:
    started = time.perf_counter()
    study = Study(Path(data_dir), tuple(seeds), epochs, rows, max_events, task_share)
    if study.sample:
        log(f"studying a sample of the users: {study.sample['events']} of {study.sample['of']} events")
    per_seed = study.run()
    synth = Path(data_dir) / "synth.json"
    result = {
        "data": str(data_dir),
        "generator": json.loads(synth.read_text()) if synth.exists() else None,
        "sample": study.sample,
        "seeds": list(seeds),
        "epochs": epochs,
        "task_share": study.task_share,
        "fit_rows_per_task": {task: int((study.encoded("full", True)[0].row_task == task).sum()) for task in TASKS},
        "rows": summarise(per_seed),
        "paired_tests": paired_tests(per_seed),
        "seconds": time.perf_counter() - started,
    }
    out = Path(out_root) / f"study-{time.strftime('%Y%m%d-%H%M%S')}"
    out.mkdir(parents=True, exist_ok=True)
    (out / "study.json").write_text(json.dumps(result, indent=2))
    write_report(result, out)
    log(f"study written to {out} in {result['seconds']:.0f}s")
    return out
