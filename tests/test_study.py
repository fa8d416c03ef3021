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
