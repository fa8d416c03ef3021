"""The CLI's edges, as a new user meets them: a bad argument is one error naming it, exit code 2, no
traceback; invalid option combinations and other catalogues are refused before any work."""

from __future__ import annotations

import pytest
from typer.testing import CliRunner

from unirank.cli import app

runner = CliRunner()


def run(*args: str):
    return runner.invoke(app, [str(a) for a in args])


@pytest.mark.parametrize(
    ("args", "names"),
    [
        (["evaluate", "--bundle", "{bundle}", "--data", "{data}", "--split", "bogus"], ["--split", "validation"]),
        (
            ["train", "--data", "{data}", "--out", "{tmp}/b", "--personalization", "bogus"],
            ["--personalization", "full"],
        ),
        (["train", "--data", "/nonexistent", "--out", "{tmp}/b"], ["--data", "events.parquet"]),
        (["train", "--data", "{data}", "--out", "{tmp}/b", "--tasks", "search,foo"], ["--tasks", "foo", "prequery"]),
        (["train", "--data", "{data}", "--out", "{tmp}/b", "--rank-by", "play"], ["play head"]),
        (
            ["train", "--data", "{data}", "--out", "{tmp}/b", "--personalization", "cluster", "--history-encoder"],
            ["full"],
        ),
        (["evaluate", "--bundle", "/typo", "--data", "{data}"], ["--bundle", "manifest.json"]),
        (["manifest", "/typo"], ["manifest.json"]),
        (["bench-scoring", "--sizes", "1,x"], ["--sizes", "integers"]),
    ],
)
def test_a_bad_argument_is_one_error_naming_it(args, names, bundle_dir, data_dir, tmp_path):
    result = run(*(a.format(bundle=bundle_dir, data=data_dir, tmp=tmp_path) for a in args))
    assert result.exit_code == 2, result.output
    assert "Traceback" not in result.output
    flat = " ".join(result.output.replace("│", " ").split())
    for name in names:
        assert name in flat, flat
    assert not (tmp_path / "b").exists()  # refused before any work


def test_evaluate_refuses_another_catalogue(bundle_dir, tmp_path):
    import pyarrow.compute as pc
    import pyarrow.parquet as pq

    from model_export.synth import SynthParams, generate

    other = tmp_path / "other"
    generate(SynthParams(users=200, entities=150, events=8_000, seed=11), other)
    for name, column in (("events", "target_entity_id"), ("entities", "entity_id")):  # another catalogue's ids
        table = pq.read_table(other / f"{name}.parquet")
        renamed = pc.binary_join_element_wise("other-", table.column(column), "")
        pq.write_table(
            table.set_column(table.schema.get_field_index(column), column, renamed), other / f"{name}.parquet"
        )
    result = run("evaluate", "--bundle", bundle_dir, "--data", other, "--json", tmp_path / "e.json")
    assert result.exit_code == 2 and "0.0%" in result.output and "--allow-catalog-mismatch" in result.output
    result = run(
        "evaluate", "--bundle", bundle_dir, "--data", other, "--json", tmp_path / "e.json", "--allow-catalog-mismatch"
    )
    assert result.exit_code == 0 and "warning: 0.0%" in result.output


def test_manifest_prints_the_summary(bundle_dir):
    result = run("manifest", bundle_dir)
    assert result.exit_code == 0 and '"personalization": "full"' in result.output and '"options"' in result.output
