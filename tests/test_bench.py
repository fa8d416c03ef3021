"""The benchmark's own logic: the CI completeness check and the FLOP count it reports against numpy."""

from __future__ import annotations

import copy
from pathlib import Path

import numpy as np
import pytest

from loadtest.bench import SCENARIO_FIELDS, SCENARIOS, completeness_problems
from model_export.model import UnifiedRanker
from unirank.core.features import DENSE_FEATURES
from unirank.core.spec import ModelOptions, ModelSpec, Vocabulary

COMPLETE = {
    "machine": {"cpu": "x"},
    "scenarios": {n: dict.fromkeys(SCENARIO_FIELDS, 1) | {"errors": 0} for n in SCENARIOS}
    | {"keystroke_get": dict.fromkeys(SCENARIO_FIELDS, 1) | {"errors": 0, "browser_cache": {"share": 0.03}}},
    "ratios": {
        "keystroke_hit_vs_ceiling": 0.7,
        "keystroke_get_vs_keystroke_hit": 0.9,
        "rank_200_vs_naive_200": 2.0,
        "rollout_p99_vs_rank_200_p99": 1.1,
        "keystroke_hit_p99_log_on_vs_off": 1.0,
        "rank_200_p99_log_on_vs_off": 1.0,
        "keystroke_hit_rps_log_on_vs_off": 0.99,
        "rank_200_rps_log_on_vs_off": 0.99,
        "rank_200_vs_limit": 0.3,
        "keystroke_miss_vs_limit": 0.4,
        "rank_200_vs_onnxruntime_limit": 0.5,
    },
    "scoring_efficiency": 0.5,
    "limits": {"rank_200_rps": 2000.0, "keystroke_miss_rps": 2500.0, "rank_200_onnxruntime_rps": 1500.0},
    "rank_200_split": {"per_request_us": 800.0, "ceiling_us": 60.0, "onnxruntime_us": 250.0, "service_us": 490.0},
    "rank_200_stages": {"requests": 1, "total_ms": 2.0, "ms": {"inference": 1.0, "other": 1.0}, "share": {}},
}


def test_complete_result_passes_and_each_defect_is_named():
    assert completeness_problems(COMPLETE) == []
    broken = copy.deepcopy(COMPLETE)
    broken["scenarios"]["events"]["errors"] = 3
    del broken["scenarios"]["naive_200"]
    broken["scenarios"]["rank_200"]["rps"] = 0
    broken["scenarios"]["rollout"] |= {"switches": 4, "switch_failures": 1}
    del broken["ratios"]["rank_200_vs_naive_200"]
    problems = completeness_problems(broken)
    assert sorted(problems) == [
        "events: 3 errors",
        "missing ratio rank_200_vs_naive_200",
        "missing scenario naive_200",
        "rank_200: no successful requests",
        "rollout: 4 default switches, 1 refused",
    ]


@pytest.mark.parametrize(
    "options", [{}, {"mmoe_experts": 3, "play_head": True, "history_encoder": True, "text_features": True}]
)
def test_flops_per_candidate_counts_the_per_candidate_matmuls_of_the_model(options):
    n = len(DENSE_FEATURES)
    spec = ModelSpec(Vocabulary(3, 2, 10, 5, 4), [0.0] * n, [1.0] * n, options=ModelOptions(**options))
    model = UnifiedRanker(spec)
    per_candidate = ("cross", "mlp", "head", "mmoe", "play", "history.target", "text")
    weights = sum(
        p.numel()
        for n, p in model.named_parameters()
        if n.startswith(per_candidate) and n.endswith("weight") and p.dim() == 2
    )
    a = spec.architecture
    attention = 2 * 2 * a.history_length * a.dim if spec.options.history_encoder else 0  # scores and the weighted sum
    assert spec.flops_per_candidate() == 2 * weights + attention
    assert ModelSpec.from_dict(spec.to_dict()) == spec


def test_scoring_bench_measures_every_provider_of_this_machine(bundle_dir, tmp_path):
    import json

    import onnxruntime

    from loadtest.accel_bench import run_scoring

    result = run_scoring(bundle_dir, sizes=(1, 300), out_dir=tmp_path)
    written = json.loads(Path(result["files"]["json"]).read_text())
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
    written = json.loads(Path(result["files"]["json"]).read_text())
    assert set(written["scenarios"]) == {"candidates_200", "keystroke_miss", "more_like_this_miss"}
    for row in written["scenarios"].values():
        assert row["bundle"]["n"] == row["baseline"]["n"] == 30
        assert row["ratio"]["p99_ms"] == row["bundle"]["p99_ms"] / row["baseline"]["p99_ms"]
    assert set(written["target_met"]) == set(written["scenarios"])
    assert (
        Path(result["files"]["markdown"]).read_text().count("|") > 20
        and (tmp_path / result["files"]["plot"].split("/")[-1]).stat().st_size > 0
    )


def test_bench_train_targets_and_table_name_what_failed():
    from loadtest.train_bench import table, targets

    def size(events, seconds, rss, exit_code=0):
        row = {"events": events, "synth": {"seconds": 1.0, "peak_rss_mb": 500.0, "exit": 0}}
        row["train"] = {"seconds": seconds, "peak_rss_mb": rss, "exit": exit_code}
        if exit_code == 0:
            row |= {"fit_rows_per_s": 1000.0, "ndcg@10": {"search": 0.8, "prequery": 0.6, "more_like_this": 0.6}}
        return row

    ddp = [
        {"processes": 1, "events": 1, "seconds": 1.0, "exit": 0},
        {"processes": 2, "events": 1, "seconds": 2.0, "exit": 1},
    ]
    flat = {"sizes": [size(1_000_000, 60, 1000), size(5_000_000, 290, 1500)], "ddp": ddp}
    assert all(targets(flat).values())
    linear_memory = {"sizes": [size(1_000_000, 60, 1000), size(5_000_000, 600, 5000)], "ddp": ddp}
    got = targets(linear_memory)
    assert not got["peak RSS at the largest <= 2x the smallest"] and not got["time about linear (<= 1.5x proportional)"]
    oom = {"sizes": [size(1_000_000, 60, 1000), size(20_000_000, 10, 20000, exit_code=-9)], "ddp": ddp}
    assert targets(oom) == {"every size trained": False}
    rendered = table(oom | {"targets": targets(oom)})
    assert "failed (exit -9)" in rendered and "failed (exit 1)" in rendered and "MISSED" in rendered


def test_onnx_node_profile_accounts_for_every_profiled_node_of_the_bundle(bundle_dir):
    import onnx

    from loadtest.onnx_nodes import profile

    result = profile(bundle_dir, candidates=64, runs=5)
    ns = result["ns_per_candidate"]
    assert result["candidates"] == 64
    # the model's own layers are there, each with time, and the per-operator sums add up to the total
    assert ns["ops"]["Gemm"] + ns["ops"].get("FusedGemm", 0.0) > 0
    assert all(v >= 0 for v in ns["nodes"].values()) and len(ns["nodes"]) >= 20
    assert sum(ns["ops"].values()) == pytest.approx(result["total_ns_per_candidate"])
    exported_ops = {node.op_type for node in onnx.load(str(bundle_dir / "model.onnx")).graph.node}
    assert {"Gather", "Concat"} <= exported_ops & set(ns["ops"])


def test_the_in_process_cpu_measure_answers_every_request_and_counts_inference_calls(bundle_dir):
    from loadtest.asgi_cpu import measure

    miss = measure(bundle_dir, "keystroke_miss", 160)
    ceiling = measure(bundle_dir, "ceiling", 160)
    assert miss["statuses"] == {200: 160} and ceiling["statuses"] == {200: 160}
    assert 1.0 <= miss["requests_per_inference_call"] <= 8.0 and ceiling["requests_per_inference_call"] is None
    assert miss["cpu_us_per_request"] > 0 and ceiling["cpu_us_per_request"] > 0


def test_the_in_process_cpu_measure_runs_without_the_model_in_a_process_of_its_own(bundle_dir):
    import subprocess
    import sys

    # its own process: the stub replaces Scorer.score for the whole interpreter
    run = [sys.executable, "-m", "loadtest.asgi_cpu", "--bundle", str(bundle_dir), "--scenario", "rank_200"]
    out = subprocess.run([*run, "--requests", "80", "--without-model"], capture_output=True, text=True, check=True)
    assert "statuses {200: 80}" in out.stdout and "requests per inference call" in out.stdout


def test_the_onnxruntime_probe_times_the_bundles_call_and_the_split_adds_up(bundle_dir):
    from loadtest.bench import ONNXRUNTIME_REQUESTS_PER_CALL, onnxruntime_probe, split_rank_200

    probe = onnxruntime_probe(bundle_dir.resolve(), None)
    batched = probe["onnxruntime_us_per_request_when_batched"]
    assert set(batched) == {"1", "2", "4", "8"} and all(us > 0 for us in batched.values())
    assert probe["us"]["onnxruntime"] > 0 and probe["us"]["parse (200 ids)"] > 0
    assert probe["us"]["onnxruntime, IO binding"] > 0
    split = split_rank_200(1000.0, 1 / 10_000, 50e-6, probe)  # 1,000 µs a request, a 100 µs ceiling
    assert split["per_request_us"] == pytest.approx(1000.0) and split["ceiling_us"] == pytest.approx(100.0)
    assert split["onnxruntime_us"] == batched[str(ONNXRUNTIME_REQUESTS_PER_CALL)]
    assert split["ceiling_us"] + split["onnxruntime_us"] + split["service_us"] == pytest.approx(1000.0)
    assert split["model_at_matmul_rate_us"] == pytest.approx(50.0)


def test_the_io_bound_call_the_profile_times_gives_the_plain_calls_scores(bundle_dir):
    import numpy as np

    from loadtest.onnx_nodes import rank_200_inputs
    from loadtest.rank_profile import _bound_call
    from service.core.settings import Settings
    from service.model.bundle import LoadedBundle

    bundle = LoadedBundle.load(bundle_dir, Settings(bundle=str(bundle_dir)))
    inputs = rank_200_inputs(bundle, bundle_dir, 64)
    call = _bound_call(bundle.scorer, inputs)
    assert np.array_equal(call(), bundle.scorer.score(inputs)) and np.array_equal(call(), call())


def test_retrieval_recall_counts_each_request_once_and_facets_find_genres(bundle_dir, data_dir, tmp_path):
    import shutil

    import pyarrow.parquet as pq

    from loadtest.retrieval_recall import _requests, recall
    from service.core.settings import Settings
    from service.model.bundle import LoadedBundle

    bundle = LoadedBundle.load(bundle_dir, Settings(micro_batch=False))
    sets = _requests(bundle, data_dir)
    assert sets["typed"] and sets["genre"] and not sets["tag"]  # the synthetic catalogue has no tags
    got = recall(bundle, sets, 100)
    assert got["typed"]["title_words"] > 0.9 and got["typed"]["service"] > 0.9  # typed prefixes of titles
    assert got["genre"]["service"] > got["genre"]["title_words"]  # genre names find titles beyond their words
    shuffled = tmp_path / "shuffled"  # row order carries nothing: the same requests, the same recall
    shuffled.mkdir()
    events = pq.read_table(data_dir / "events.parquet")
    pq.write_table(events.take(np.random.default_rng(0).permutation(events.num_rows)), shuffled / "events.parquet")
    shutil.copy(data_dir / "entities.parquet", shuffled / "entities.parquet")
    assert recall(bundle, _requests(bundle, shuffled), 100) == got


def test_session_adaptation_compares_live_history_with_none_on_the_same_requests(bundle_dir, data_dir, tmp_path):
    """`loadtest.session_adaptation --live`: the same requests with and without the live history, the first
    setting the baseline, the difference's interval around it; the live history moves the row; the rows'
    order in the log carries nothing."""
    import shutil

    import pyarrow.parquet as pq

    from loadtest.session_adaptation import measure, write

    got = measure(bundle_dir, data_dir, [50], limit=150, live=True)
    assert list(got["settings"]) == ["no live history", "live history, 50 related"] and 50 <= got["requests"] <= 150
    base, live = got["settings"]["no live history"], got["settings"]["live history, 50 related"]
    assert base["vs_baseline"] == 0.0 and base["vs_baseline_ci95"] == [0.0, 0.0]
    low, high = live["vs_baseline_ci95"]
    assert low <= live["vs_baseline"] <= high and low < high  # the history changed some rankings
    write(got, tmp_path / "out")
    assert "live history" in (tmp_path / "out" / "session_adaptation.md").read_text()
    assert (tmp_path / "out" / "session_adaptation.png").stat().st_size > 5_000
    shuffled = tmp_path / "shuffled"
    shuffled.mkdir()
    events = pq.read_table(data_dir / "events.parquet")
    pq.write_table(events.take(np.random.default_rng(0).permutation(events.num_rows)), shuffled / "events.parquet")
    shutil.copy(data_dir / "entities.parquet", shuffled / "entities.parquet")
    assert measure(bundle_dir, shuffled, [50], limit=150, live=True) == got


def test_the_replayed_snapshot_holds_only_clicks_before_the_replay(bundle_dir, data_dir):
    """The bundle's snapshot holds each user's latest clicks up to the end of its log; the replay's holds
    the last ones strictly before its start, most recent first, so no setting sees the clicks it predicts."""
    from loadtest.session_adaptation import snapshot_at
    from model_export.data import Dataset
    from model_export.splits import click_log
    from service.core.settings import Settings
    from service.model.bundle import LoadedBundle
    from unirank.core.history import HISTORY_LENGTH

    bundle = LoadedBundle.load(bundle_dir, Settings(micro_batch=False))
    dataset = Dataset.load(data_dir)
    users, ts, ents, _ = click_log(bundle.features.encoder, dataset)
    end = int(np.quantile(ts, 0.5))
    latest_user = users[np.argmax(ts)]
    assert bundle.tables.history_of(latest_user)[0] in ents[ts == ts.max()]  # the bundle's: up to the log's end
    snapshot_at(bundle, dataset, end)
    checked = 0
    for u in np.unique(users[users > 0])[:50].tolist():
        before = np.flatnonzero((users == u) & (ts < end))
        got = bundle.tables.history_of(u)
        if not len(before) or len(before) > HISTORY_LENGTH:  # at the cut, equal times may order either way
            assert len(got) == min(len(before), HISTORY_LENGTH)
            continue
        assert sorted(got.tolist()) == sorted(ents[before].tolist())
        assert got[0] in ents[before[ts[before] == ts[before].max()]]  # the most recent first
        checked += len(got) > 0
    assert checked > 10
