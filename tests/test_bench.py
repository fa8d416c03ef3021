"""The benchmark's own logic: the CI completeness check and the FLOP count it reports against numpy."""

from __future__ import annotations

import copy

import pytest

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


@pytest.mark.parametrize("options", [{}, {"mmoe_experts": 3, "play_head": True, "history_encoder": True, "text_features": True}])
def test_flops_per_candidate_counts_the_per_candidate_matmuls_of_the_model(options):
    spec = ModelSpec(n_countries=3, n_clusters=2, n_entities=10, n_users=5, n_genres=4,
                     dense_mean=[0.0] * len(DENSE_FEATURES), dense_std=[1.0] * len(DENSE_FEATURES), **options)  # fmt: skip
    model = UnifiedRanker(spec)
    per_candidate = ("cross", "mlp", "head", "mmoe", "play", "history.target", "text")
    weights = sum(p.numel() for n, p in model.named_parameters() if n.startswith(per_candidate) and n.endswith("weight") and p.dim() == 2)
    attention = 2 * 2 * spec.history_length * spec.dim if spec.history_encoder else 0  # scores and the weighted sum
    assert flops_per_candidate(spec.to_dict(), len(DENSE_FEATURES)) == 2 * weights + attention


def test_scoring_bench_measures_every_provider_of_this_machine(bundle_dir, tmp_path):
    import json

    import onnxruntime

    from loadtest.accel_bench import run_scoring

    result = run_scoring(bundle_dir, sizes=(1, 300), out_dir=tmp_path)
    written = json.loads(open(result["files"]["json"]).read())
    configs = {row["config"] for row in written["rows"]}
    assert {"cpu_1_thread"} <= configs and all(row["candidates_per_s"] > 0 for row in written["rows"])
    assert len(written["rows"]) == 2 * len(configs)
    has_cuda = "CUDAExecutionProvider" in onnxruntime.get_available_providers()
    assert any(c.startswith("cuda") for c in configs) is has_cuda
    assert bool(written["ratios"]) is has_cuda  # CUDA vs CPU ratios exist only where CUDA does
    assert (tmp_path / result["files"]["plot"].split("/")[-1]).stat().st_size > 0


def test_options_bench_compares_two_bundles_in_one_interleaved_run(bundle_dir, tmp_path):
    import json

    from loadtest.options_bench import run_options

    result = run_options(bundle_dir, bundle_dir, n=30, out_dir=tmp_path)
    written = json.loads(open(result["files"]["json"]).read())
    assert set(written["scenarios"]) == {"candidates_200", "keystroke_miss", "more_like_this_miss"}
    for row in written["scenarios"].values():
        assert row["bundle"]["n"] == row["baseline"]["n"] == 30
        assert row["ratio"]["p99_ms"] == row["bundle"]["p99_ms"] / row["baseline"]["p99_ms"]
    assert set(written["target_met"]) == set(written["scenarios"])
    assert open(result["files"]["markdown"]).read().count("|") > 20 and (tmp_path / result["files"]["plot"].split("/")[-1]).stat().st_size > 0
