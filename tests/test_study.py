"""The offline study end to end on small data: every row, every task, the paired tests and the report."""

from __future__ import annotations

import json

import pytest

from model_export.study import HEADLINES, VARIANTS, run_study


def test_study_writes_every_row_the_paired_tests_and_the_report(data_dir, tmp_path):
    out = run_study(data_dir, tmp_path, seeds=(0,), epochs=1, log=lambda *_: None)
    result = json.loads((out / "study.json").read_text())
    rows = result["rows"]
    for name in [*VARIANTS, "lightgbm lambdamart", "popularity"]:
        assert set(rows[name]) == {"search", "prequery", "more_like_this"}, name
    assert set(rows["bm25"]) == {"search"} and set(rows["implicit als"]) == {"prequery", "more_like_this"}
    assert set(rows["sasrec"]) == {"prequery", "more_like_this"}
    assert all(0.0 < rows["sasrec"][task]["ndcg@10"] <= 1.0 for task in ("prequery", "more_like_this"))
    # Every row is scored on the same test requests.
    for task in ("search", "prequery", "more_like_this"):
        assert len({r[task]["requests"] for r in rows.values() if task in r}) == 1
        assert 0.0 < rows["unified (full)"][task]["ndcg@10"] <= 1.0
    assert len(result["paired_tests"]) == sum(len(tasks) for *_, tasks in HEADLINES)
    for t in result["paired_tests"]:
        assert 0.0 <= t["p_value"] <= 1.0 and t["ci95"][0] <= t["diff"] <= t["ci95"][1]
    report = (out / "report.md").read_text()
    assert "## Paired tests" in report and "## Targets" in report and (out / "ndcg.png").stat().st_size > 10_000


def test_study_runs_only_the_rows_asked_for_and_refuses_unknown_ones(data_dir, tmp_path):
    rows = ("unified (full)", "+ listwise loss", "popularity")
    out = run_study(data_dir, tmp_path, seeds=(0,), epochs=1, log=lambda *_: None, rows=rows)
    result = json.loads((out / "study.json").read_text())
    assert set(result["rows"]) == set(rows)
    # only the headline comparisons whose two rows ran
    assert {(t["a"], t["b"]) for t in result["paired_tests"]} == {("+ listwise loss", "unified (full)")}
    with pytest.raises(ValueError, match="unknown study rows"):
        run_study(data_dir, tmp_path, seeds=(0,), epochs=1, log=lambda *_: None, rows=("unified (fulll)",))


def test_a_larger_log_is_studied_on_a_sample_of_whole_users(data_dir, tmp_path):
    """Above `max_events`, the study reads a bounded sample: every event of a share of the users, the same
    users whatever the file layout, and the report says so."""
    import numpy as np
    import pyarrow.parquet as pq

    from model_export.event_log import sample_users
    from tests.helpers import shuffled_partitioned_copy

    full = pq.read_table(data_dir / "events.parquet")
    assert sample_users(data_dir, full.num_rows) is None  # nothing to sample
    dataset, info = sample_users(data_dir, 20_000)
    assert 12_000 < dataset.events.num_rows < 28_000 and info["events"] == dataset.events.num_rows
    assert info["of"] == full.num_rows
    users, counts = np.unique(full.column("user_id").to_numpy(zero_copy_only=False), return_counts=True)
    in_sample, sample_counts = np.unique(
        dataset.events.column("user_id").to_numpy(zero_copy_only=False), return_counts=True
    )
    complete = dict(zip(users.tolist(), counts.tolist(), strict=True))
    assert all(complete[u] == n for u, n in zip(in_sample.tolist(), sample_counts.tolist(), strict=True) if u)
    partitioned = shuffled_partitioned_copy(data_dir, tmp_path / "partitioned", seed=2, rows_per_file=6_000)
    assert sample_users(partitioned, 20_000)[0].events.equals(dataset.events)

    rows = ("unified (full)", "popularity")
    out = run_study(data_dir, tmp_path, seeds=(0,), epochs=1, log=lambda *_: None, rows=rows, max_events=20_000)
    result = json.loads((out / "study.json").read_text())
    assert result["sample"]["events"] == dataset.events.num_rows
    assert result["rows"]["unified (full)"]["search"]["ndcg@10"] > 0
    assert "A sample of the users" in (out / "report.md").read_text()


def test_a_thinned_task_keeps_a_share_of_its_fit_requests_and_nothing_else_changes(data_dir, tmp_path):
    """`--task-share more_like_this=0.2`: that task's fit requests thinned (whole requests, the same for
    every row), the other tasks and the validation and test windows whole; the report says so."""
    import numpy as np

    from model_export.study import Study, parse_task_shares, thin

    whole = Study(data_dir, (0,), 1, rows=("unified (full)",))
    thinned = Study(data_dir, (0,), 1, rows=("unified (full)",), task_share={"more_like_this": 0.2})
    (fit_w, val_w, test_w), (fit_t, val_t, test_t) = whole.encoded("full", True), thinned.encoded("full", True)
    count = lambda enc, task: int((enc.row_task == task).sum())  # noqa: E731
    assert 0.1 < count(fit_t, "more_like_this") / count(fit_w, "more_like_this") < 0.3
    for task in ("search", "prequery"):
        assert count(fit_t, task) == count(fit_w, task)
    assert len(val_t) == len(val_w) and len(test_t) == len(test_w)
    # whole requests: every kept request keeps all of its rows
    requests, rows = np.unique(fit_t.inputs["cand_ctx"], return_counts=True)
    whole_rows = dict(zip(*np.unique(fit_w.inputs["cand_ctx"], return_counts=True), strict=True))
    assert all(whole_rows[r] == n for r, n in zip(requests.tolist(), rows.tolist(), strict=True))
    assert np.array_equal(thin(fit_w, {"more_like_this": 0.2}).labels, fit_t.labels)  # the same draw every time
    out = run_study(
        data_dir,
        tmp_path,
        seeds=(0,),
        epochs=1,
        log=lambda *_: None,
        rows=("unified (full)",),
        task_share={"more_like_this": 0.2},
    )
    result = json.loads((out / "study.json").read_text())
    assert result["task_share"] == {"more_like_this": 0.2}
    assert result["fit_rows_per_task"]["more_like_this"] == count(fit_t, "more_like_this")
    assert "Thinned tasks" in (out / "report.md").read_text()
    for bad in (["mlt=0.1"], ["more_like_this=0"], ["more_like_this=1.5"], ["more_like_this"]):
        with pytest.raises(ValueError, match="TASK=SHARE"):
            parse_task_shares(bad)


def test_lambdamart_gain_shares_cover_every_column_largest_first(data_dir):
    from model_export.lambdamart_gain import COLUMNS, gain_shares

    shares = gain_shares(data_dir, "search")
    assert set(shares) == set(COLUMNS) and abs(sum(shares.values()) - 1) < 1e-6
    assert list(shares.values()) == sorted(shares.values(), reverse=True) and max(shares.values()) > 0


def test_the_history_encoder_target_reads_its_test_against_the_reference_not_sasrec():
    from model_export.report import targets

    def test(a, b, diff, p):
        return {"a": a, "b": b, "task": "prequery", "diff": diff, "relative": diff / 0.5, "p_value": p}

    row = {"prequery": {"ndcg@10": 0.50}, "more_like_this": {"ndcg@10": 0.60}}
    result = {
        "rows": {"unified (full)": row, "+ history encoder": row, "sasrec": {"prequery": {"ndcg@10": 0.40}}},
        "paired_tests": [
            test("+ history encoder", "sasrec", 0.10, 1e-9),  # listed first: a big lift over another row
            test("+ history encoder", "unified (full)", 0.001, 0.7),
        ],
    }
    got = {name: (ok, detail) for name, ok, detail in targets(result)}
    assert got["history encoder lifts prequery over full (paired, p < 0.05)"] == (False, "+0.2%, p = 0.7")
    assert got["unified >= SASRec on prequery"] == (True, "0.5000 vs 0.4000")
    assert "unified >= SASRec on more_like_this" not in got  # a row that did not run is not judged


def test_the_front_reports_quality_flops_and_measured_cost_per_architecture(data_dir, tmp_path):
    from model_export.front import ARCHITECTURES, INT8_ROWS, run_front

    names = ("default", "no crossing", "default, int8")
    out = run_front(data_dir, tmp_path, seeds=(0, 1), epochs=1, architectures=names, log=lambda *_: None)
    result = json.loads((out / "front.json").read_text())
    archs = result["architectures"]
    assert set(archs) == set(names)
    assert archs["no crossing"]["flops"] < archs["default"]["flops"]  # the cross layers' matmuls are gone
    # the int8 row: the default's models, quantized; scores that moved a little, not a different ranker
    assert archs["default, int8"]["int8"] and not archs["default"]["int8"]
    assert archs["default, int8"]["architecture"] == archs["default"]["architecture"]
    for task in ("search", "prequery", "more_like_this"):
        int8, full = archs["default, int8"]["tasks"][task]["ndcg@10"], archs["default"]["tasks"][task]["ndcg@10"]
        assert abs(int8 - full) < 0.05 and int8 != full
    for a in archs.values():
        assert a["onnx_us_200"] > 0 and set(a["tasks"]) == {"search", "prequery", "more_like_this"}
        assert all(0 < a["tasks"][t]["ndcg@10"] <= 1 for t in a["tasks"])
    # each task's best row is within noise of itself; the choice is the cheapest row within noise everywhere
    for task, best in result["best"].items():
        assert archs[best]["within_noise"][task]
    within = [n for n, a in archs.items() if all(a["within_noise"].values())]
    assert result["cheapest_within_noise"] == min(within, key=lambda n: (archs[n]["flops"], archs[n]["onnx_us_200"]))
    assert {t["a"] for t in result["vs_default"]} == {"no crossing", "default, int8"}
    assert "Cheapest within noise" in (out / "front.md").read_text() and (out / "front.png").stat().st_size > 10_000
    with pytest.raises(ValueError, match="unknown architectures"):
        run_front(data_dir, tmp_path, seeds=(0,), epochs=1, architectures=("huge",))
    assert set(ARCHITECTURES) | set(INT8_ROWS) >= set(names)


def test_the_cost_batch_is_one_context_with_200_candidates(data_dir):
    from model_export.data import Dataset
    from model_export.front import scoring_batch
    from model_export.splits import encode_split
    from model_export.table_builder import build_tables
    from unirank.core.features import FeatureEncoder

    dataset = Dataset.load(data_dir)
    tables = build_tables(dataset.entities, dataset.split("feature"), dataset.events, seed=0)
    enc = encode_split(FeatureEncoder(tables, "full"), dataset, "test")
    batch = scoring_batch(enc)
    assert batch["ctx_ids"].shape[0] == 1 and (batch["cand_ctx"] == 0).all()
    assert all(batch[k].shape[0] == 200 for k in batch if k.startswith("cand"))
