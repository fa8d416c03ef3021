"""loadtest/report.py: the benchmarks' one way to write a markdown table, a PNG figure and a run's files."""

from __future__ import annotations

import json
from pathlib import Path

import pytest

from loadtest.report import figure, save_results
from unirank.core.markdown import markdown_table


def test_a_markdown_table_has_its_headers_a_separator_and_a_line_per_row():
    text = markdown_table(("scenario", "req/s"), [("rank_200", "1,000"), ("ceiling", 13431)])
    assert text.splitlines() == ["| scenario | req/s |", "|---|---|", "| rank_200 | 1,000 |", "| ceiling | 13431 |"]
    with pytest.raises(ValueError, match="2 headers"):
        markdown_table(("a", "b"), [("only one",)])


def test_a_figure_is_saved_as_a_png_and_closed_even_when_plotting_fails(tmp_path):
    import matplotlib.pyplot as plt

    with figure(tmp_path / "two.png", 2, size=(6, 3)) as (fig, axes):
        axes[0].plot([1, 2], [3, 4])
        axes[1].bar(["a"], [1])
    assert (tmp_path / "two.png").read_bytes()[:8] == b"\x89PNG\r\n\x1a\n"
    open_before = len(plt.get_fignums())
    with pytest.raises(RuntimeError), figure(tmp_path / "broken.png") as (fig, ax):
        raise RuntimeError("a plot that fails")
    assert not (tmp_path / "broken.png").exists() and len(plt.get_fignums()) == open_before


def test_save_results_writes_json_markdown_and_the_plot_when_asked(tmp_path):
    def plot(result, path):
        with figure(path) as (_, ax):
            ax.plot(result["xs"])

    written = save_results({"xs": [1, 2, 3]}, tmp_path, "demo", "| a |\n|---|\n", plot)
    files = {kind: Path(path) for kind, path in written["files"].items()}
    assert json.loads(files["json"].read_text())["xs"] == [1, 2, 3]
    assert files["markdown"].read_text().startswith("| a |")
    assert files["plot"].read_bytes()[:4] == b"\x89PNG"
    without = save_results({"xs": []}, tmp_path / "no-plot", "demo", "text")
    assert set(without["files"]) == {"json", "markdown"}
