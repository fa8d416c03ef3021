"""The study's report: a markdown file with the main table, the lifts, the paired tests and a verdict
on each target, and PNG bar charts (NDCG@10 per task and row, with the spread over seeds)."""

from __future__ import annotations

from pathlib import Path

import numpy as np

from model_export.evaluate import METRICS
from unirank.core.vocab import TASKS


def targets(result: dict) -> list[tuple[str, bool, str]]:
    rows = result["rows"]
    nd = lambda row, task: rows[row][task]["ndcg@10"] if task in rows.get(row, {}) else float("nan")  # noqa: E731
    out = []

    def at_least(name: str, a: float, b: float) -> None:  # a target whose rows were not run is not judged
        if not (np.isnan(a) or np.isnan(b)):
            out.append((name, a >= b, f"{a:.4f} vs {b:.4f}"))

    for task in TASKS:
        at_least(f"unified >= separate on {task}", nd("unified (full)", task), nd("separate per task (full)", task))
    for task, need in (("search", 0.07), ("prequery", 0.10), ("more_like_this", 0.10)):
        f, n = nd("unified (full)", task), nd("unified (none)", task)
        if not (np.isnan(f) or np.isnan(n)):
            out.append((f"full >= +{need:.0%} over none on {task}", f / n - 1 >= need, f"{f / n - 1:+.1%}"))
    for task in TASKS:
        u = nd("unified (full)", task)
        other = nd("bm25", task) if task == "search" else nd("implicit als", task)
        at_least(f"unified >= LightGBM on {task}", u, nd("lightgbm lambdamart", task))
        at_least(f"unified >= {'BM25' if task == 'search' else 'ALS'} on {task}", u, other)
    test = next(
        (
            t
            for t in result.get("paired_tests", ())
            if (t["a"], t["b"], t["task"]) == ("+ history encoder", "unified (full)", "prequery")
        ),
        None,
    )
    if test is not None:
        lifted = test["diff"] > 0 and test["p_value"] < 0.05
        out.append(
            (
                "history encoder lifts prequery over full (paired, p < 0.05)",
                lifted,
                f"{test['relative']:+.1%}, p = {test['p_value']:.2g}",
            )
        )
    for task in ("prequery", "more_like_this"):  # the sequential anchor a history-aware model must reach
        at_least(f"unified >= SASRec on {task}", nd("unified (full)", task), nd("sasrec", task))
        at_least(f"history encoder >= SASRec on {task}", nd("+ history encoder", task), nd("sasrec", task))
    return out


def markdown(result: dict) -> str:
    rows = result["rows"]
    lines = [
        f"# unirank study — {result['data']}",
        "",
        f"Seeds {result['seeds']}, {result['epochs']} epochs max, finished in {result['seconds']:.0f}s. "
        "Mean over seeds (± std over seeds where a row was trained per seed).",
        "",
    ]
    if shares := result.get("task_share"):
        kept = ", ".join(f"{task} {share:.0%}" for task, share in shares.items())
        per_task = ", ".join(f"{task} {n:,}" for task, n in result.get("fit_rows_per_task", {}).items())
        lines += [
            f"Thinned tasks: the fit window keeps {kept} of the task's requests, for every trained row and "
            f"LambdaMART alike (fit rows then: {per_task}); validation and test stay whole.",
            "",
        ]
    if sample := result.get("sample"):
        lines += [
            f"A sample of the users: {sample['events']:,} of the log's {sample['of']:,} events (every event of "
            f"{sample['users_share']:.1%} of the users, chosen by {sample['by']}; `--max-events`).",
            "",
        ]
    if result.get("generator"):
        lines += ["Generator parameters (fixed before the study): `" + str(result["generator"]["params"]) + "`", ""]
    for task in TASKS:
        lines += [
            f"## {task}",
            "",
            "| row | " + " | ".join(METRICS) + " | requests |",
            "|---|" + "---|" * (len(METRICS) + 1),
        ]
        for name, per_task in rows.items():
            if task not in per_task:
                continue
            r = per_task[task]
            cells = [f"{r[m]:.4f} ± {r[m + '_std']:.4f}" if r["seeds"] > 1 else f"{r[m]:.4f}" for m in METRICS]
            lines.append(f"| {name} | " + " | ".join(cells) + f" | {r['requests']} |")
        lines.append("")
    lines += [
        "## Paired tests (per-request NDCG@10, averaged over seeds)",
        "",
        "| a | b | task | NDCG a | NDCG b | a − b | relative | 95% CI (bootstrap) | p (paired t) |",
        "|---|---|---|---|---|---|---|---|---|",
    ]
    for t in result["paired_tests"]:
        lines.append(
            f"| {t['a']} | {t['b']} | {t['task']} | {t['ndcg_a']:.4f} | {t['ndcg_b']:.4f} | {t['diff']:+.4f} | "
            f"{t['relative']:+.1%} | [{t['ci95'][0]:+.4f}, {t['ci95'][1]:+.4f}] | {t['p_value']:.2g} |"
        )
    lines += ["", "## Targets", ""]
    lines += [f"- {'met' if ok else 'MISSED'}: {name} ({detail})" for name, ok, detail in targets(result)]
    return "\n".join(lines) + "\n"


def plot(result: dict, path: Path) -> None:
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    rows = result["rows"]
    fig, axes = plt.subplots(1, 3, figsize=(17, 5.5), sharey=False)
    for ax, task in zip(axes, TASKS, strict=True):
        names = [n for n in rows if task in rows[n]]
        means = [rows[n][task]["ndcg@10"] for n in names]
        stds = [rows[n][task]["ndcg@10_std"] for n in names]
        colors = [
            "tab:blue"
            if n.startswith("unified (full)")
            else "tab:gray"
            if n in ("popularity", "bm25", "implicit als", "lightgbm lambdamart")
            else "tab:orange"
            for n in names
        ]
        ax.barh(np.arange(len(names)), means, xerr=stds, color=colors)
        ax.set_yticks(np.arange(len(names)), names)
        ax.invert_yaxis()
        lo = min(means) * 0.9
        ax.set_xlim(lo, max(means) * 1.03)
        ax.set_title(f"{task}: NDCG@10")
    fig.suptitle("unirank study (blue: the unified model; orange: variants; gray: baselines)")
    fig.tight_layout()
    fig.savefig(path, dpi=110)
    plt.close(fig)


def write_report(result: dict, out: Path) -> None:
    (out / "report.md").write_text(markdown(result))
    plot(result, out / "ndcg.png")
