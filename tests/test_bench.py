"""The benchmark's own logic: the CI completeness check and the FLOP count it reports against numpy."""

from __future__ import annotations

import copy

from loadtest.bench import SCENARIO_FIELDS, SCENARIOS, completeness_problems, flops_per_candidate
from model_export.features import DENSE_FEATURES
from model_export.model import ModelSpec, UnifiedRanker

COMPLETE = {
    "machine": {"cpu": "x"},
    "scenarios": {n: dict.fromkeys(SCENARIO_FIELDS, 1) | {"errors": 0} for n in SCENARIOS},
    "ratios": {"keystroke_hit_vs_ceiling": 0.7, "rank_200_vs_naive_200": 2.0},
    "scoring_efficiency": 0.5,
}


def test_complete_result_passes_and_each_defect_is_named():
    assert completeness_problems(COMPLETE) == []
    broken = copy.deepcopy(COMPLETE)
    broken["scenarios"]["events"]["errors"] = 3
    del broken["scenarios"]["naive_200"]
    broken["scenarios"]["rank_200"]["rps"] = 0
    del broken["ratios"]["rank_200_vs_naive_200"]
    problems = completeness_problems(broken)
    assert sorted(problems) == ["events: 3 errors", "missing ratio rank_200_vs_naive_200", "missing scenario naive_200",
                                "rank_200: no successful requests"]  # fmt: skip


def test_flops_per_candidate_counts_the_per_candidate_matmuls_of_the_model():
    spec = ModelSpec(n_countries=3, n_clusters=2, n_entities=10, n_users=5, n_genres=4,
                     dense_mean=[0.0] * len(DENSE_FEATURES), dense_std=[1.0] * len(DENSE_FEATURES))  # fmt: skip
    model = UnifiedRanker(spec)
    per_candidate = ("cross", "mlp", "head")
    weights = sum(p.numel() for n, p in model.named_parameters() if n.startswith(per_candidate) and n.endswith("weight") and p.dim() == 2)
    assert flops_per_candidate(spec.to_dict(), len(DENSE_FEATURES)) == 2 * weights
