"""`unirank study --front`: the quality–cost front over architectures.

Contract: `run_front(data_dir, out_root, seeds, epochs, architectures)` trains each architecture of
ARCHITECTURES as the study trains its reference row (the same splits, feature tables, seeds and test
requests); a row of INT8_ROWS takes its base row's models with the exported graph's weights quantized to
int8 and scores the test requests through onnxruntime. Per row it reports: NDCG@10 per task (mean and
spread over seeds), FLOPs per candidate (`ModelSpec.flops_per_candidate`, what the benchmark's limit
reads), and the measured cost of its graph as a bundle exports it (the entity side inside) — onnxruntime
on one CPU thread, one context with 200 candidates, median of repeated calls. Each row is compared with
`default`, with PREVIOUS_DEFAULT and with the best row of each task by the study's paired test
(per-request NDCG@10 averaged over seeds). "Within noise of the best" on a task: not below the task's
best row, or below it with p >= 0.05. The recommendation is the cheapest row (FLOPs, then measured cost)
within noise of the best on every task. Writes front.json, front.md and front.png (NDCG@10 against FLOPs,
a panel per task).
"""

from __future__ import annotations

import json
import tempfile
import time
from dataclasses import asdict
from pathlib import Path

import numpy as np

from model_export.entity_graph import graph_batch
from model_export.evaluate import per_task, score_onnx
from model_export.export import export_onnx, quantize_int8
from model_export.splits import Encoded
from model_export.study import REFERENCE, Study, Variant, paired_tests, summarise
from model_export.train import predict
from unirank.core.features import graph_input_names
from unirank.core.markdown import markdown_table
from unirank.core.spec import Architecture
from unirank.core.vocab import TASKS

PREVIOUS_DEFAULT = "previous default (dim 32, ctx 64, hidden 64)"  # what the default replaced (2 cross layers)
ARCHITECTURES = {
    "default": Architecture(),  # dim 16, ctx 32, hidden 32, one cross layer: this front's pick (docs/study.md)
    "no crossing": Architecture(cross_layers=0),
    "2 cross layers": Architecture(cross_layers=2),
    "cross rank 4": Architecture(cross_rank=4),
    "narrower (dim 8, ctx 16, hidden 16)": Architecture(dim=8, ctx_dim=16, hidden=16),
    PREVIOUS_DEFAULT: Architecture(dim=32, ctx_dim=64, hidden=64, cross_layers=2),
    "wide (dim 48, ctx 96, hidden 128)": Architecture(dim=48, ctx_dim=96, hidden=128, cross_layers=2),
}
# rows of another row's models with the exported graph's weights quantized to int8 (`unirank train --int8`),
# scored through onnxruntime
INT8_ROWS = {"default, int8": "default"}
COST_CANDIDATES, COST_CALLS = 200, 300
NOISE_P = 0.05


def scoring_batch(enc: Encoded, candidates: int = COST_CANDIDATES) -> dict[str, np.ndarray]:
    """One context of the split (its first request) with `candidates` candidate rows of the split (cycled):
    the shape of one /rank call."""
    x = enc.inputs
    rows = np.arange(candidates) % len(enc)
    batch = {k: x[k][:1] for k in x if k.startswith("ctx")}
    batch |= {k: x[k][rows] for k in x if k.startswith("cand") and k != "cand_ctx"}
    batch["cand_ctx"] = np.zeros(candidates, np.int64)
    return batch


def exported_session(model, enc: Encoded, tables, int8: bool = False):
    """An onnxruntime session (1 thread) of the model's graph as a bundle exports it (the entity side
    inside, from `tables`; with `int8`, its weights quantized)."""
    import onnxruntime as ort

    batch = scoring_batch(enc)
    with tempfile.TemporaryDirectory() as tmp:
        path = Path(tmp) / "model.onnx"
        export_onnx(model, batch, path, tables)
        if int8:
            quantize_int8(path, graph_batch(batch))
        options = ort.SessionOptions()
        options.intra_op_num_threads = options.inter_op_num_threads = 1
        options.log_severity_level = 3  # the entity side's table is overridable by design: no warning about it
        return ort.InferenceSession(str(path), options, providers=["CPUExecutionProvider"])


def onnx_cost_us(model, enc: Encoded, tables, int8: bool = False, calls: int = COST_CALLS) -> float:
    """Median microseconds of one call of `exported_session` on a 200-candidate batch."""
    session = exported_session(model, enc, tables, int8)
    batch = graph_batch(scoring_batch(enc))
    feed = {k: batch[k] for k in graph_input_names(model.spec.input_names())}
    for _ in range(20):
        session.run(None, feed)
    times = []
    for _ in range(calls):
        started = time.perf_counter()
        session.run(None, feed)
        times.append(time.perf_counter() - started)
    return float(np.median(times) * 1e6)


def within_noise(rows: dict, tests: list[dict]) -> dict[str, dict[str, bool]]:
    """{architecture: {task: within noise of that task's best row}} from the tests of each row against the best."""
    out: dict[str, dict[str, bool]] = {name: {} for name in rows}
    for t in tests:
        out[t["a"]][t["task"]] = t["diff"] >= 0 or t["p_value"] >= NOISE_P
    return out


def run_front(
    data_dir: Path | str,
    out_root: Path | str = "results",
    seeds=(0, 1, 2),
    epochs: int = 6,
    architectures: tuple[str, ...] | None = None,
    log=print,
) -> Path:
    from tqdm import tqdm

    started = time.perf_counter()
    names = architectures or (*ARCHITECTURES, *INT8_ROWS)
    if unknown := [n for n in names if n not in ARCHITECTURES and n not in INT8_ROWS]:
        raise ValueError(f"unknown architectures {unknown}; known: {', '.join([*ARCHITECTURES, *INT8_ROWS])}")
    study = Study(Path(data_dir), tuple(seeds), epochs, rows=(REFERENCE,))
    _, _, test = study.encoded("full", True)
    per_seed: dict[str, list[dict]] = {}
    cost: dict[str, dict] = {}
    fitted: dict[tuple[str, int], object] = {}  # an int8 row quantizes its base row's models

    def model_of(name: str, seed: int):
        if (name, seed) not in fitted:
            fitted[name, seed] = study.fit_model(Variant(architecture=ARCHITECTURES[name]), seed)
        return fitted[name, seed]

    for name in tqdm(names, desc="front", unit="architecture"):
        int8 = name in INT8_ROWS
        for seed in seeds:
            model = model_of(INT8_ROWS.get(name, name), seed)
            if int8:
                scores = score_onnx(None, test, session=exported_session(model, test, study.tables, int8=True))
            else:
                scores = predict(model, test)
            per_seed.setdefault(name, []).append(per_task(test, scores, TASKS))
            if name not in cost:
                cost[name] = {
                    "flops": model.spec.flops_per_candidate(),
                    "onnx_us_200": onnx_cost_us(model, test, study.tables, int8),
                    "int8": int8,
                }
    rows = summarise(per_seed)
    best = {task: max(rows, key=lambda n, t=task: rows[n][t]["ndcg@10"]) for task in TASKS}
    vs_best = paired_tests(per_seed, [(n, best[t], (t,)) for t in TASKS for n in names if n != best[t]])
    noise = within_noise(rows, vs_best)
    for task in TASKS:
        noise[best[task]][task] = True
    candidates = [n for n in names if all(noise[n].values())]
    # the fewest FLOPs; between equal FLOPs (a row and its int8 graph) the faster graph
    chosen = min(candidates, key=lambda n: (cost[n]["flops"], cost[n]["onnx_us_200"], n)) if candidates else None
    result = {
        "data": str(data_dir),
        "seeds": list(seeds),
        "epochs": epochs,
        "architectures": {
            n: {
                "architecture": asdict(ARCHITECTURES[INT8_ROWS.get(n, n)]),
                **cost[n],
                "tasks": rows[n],
                "within_noise": noise[n],
            }
            for n in names
        },
        "best": best,
        "vs_default": paired_tests(per_seed, [(n, "default", TASKS) for n in names if n != "default"]),
        # does a row keep what the previous default gave, task by task (the bar a new default must clear)
        "vs_previous_default": paired_tests(
            per_seed,
            [(n, PREVIOUS_DEFAULT, TASKS) for n in names if n != PREVIOUS_DEFAULT and PREVIOUS_DEFAULT in names],
        ),
        "vs_best": vs_best,
        "cheapest_within_noise": chosen,
        "seconds": time.perf_counter() - started,
    }
    out = Path(out_root) / f"front-{time.strftime('%Y%m%d-%H%M%S')}"
    out.mkdir(parents=True, exist_ok=True)
    (out / "front.json").write_text(json.dumps(result, indent=2))
    (out / "front.md").write_text(markdown(result))
    plot(result, out / "front.png")
    log(f"front written to {out} in {result['seconds']:.0f}s")
    return out


def markdown(result: dict) -> str:
    archs = result["architectures"]
    lines = [
        f"# Quality–cost front — {result['data']}",
        "",
        f"Seeds {result['seeds']}, {result['epochs']} epochs max. NDCG@10 (mean ± std over seeds); * within noise "
        f"of the task's best (paired, p >= {NOISE_P}); onnxruntime µs for one context and 200 candidates, 1 thread.",
        "",
        markdown_table(
            ("architecture", "FLOPs / candidate", "onnxruntime µs / 200", *TASKS),
            [
                (
                    name,
                    f"{a['flops']:,}",
                    f"{a['onnx_us_200']:.0f}",
                    *(
                        f"{a['tasks'][t]['ndcg@10']:.4f} ± {a['tasks'][t]['ndcg@10_std']:.4f}"
                        + (" *" if a["within_noise"].get(t) else "")
                        for t in TASKS
                    ),
                )
                for name, a in sorted(archs.items(), key=lambda kv: kv[1]["flops"])
            ],
        ),
        "",
        "Against `default` (paired):",
        "",
        markdown_table(
            ("architecture", "task", "NDCG@10", "relative", "p"),
            [
                (t["a"], t["task"], f"{t['ndcg_a']:.4f}", f"{100 * t['relative']:+.1f} %", f"{t['p_value']:.2g}")
                for t in result["vs_default"]
            ],
        ),
        "",
        f"Against `{PREVIOUS_DEFAULT}` (paired):",
        "",
        markdown_table(
            ("architecture", "task", "NDCG@10", "relative", "p"),
            [
                (t["a"], t["task"], f"{t['ndcg_a']:.4f}", f"{100 * t['relative']:+.1f} %", f"{t['p_value']:.2g}")
                for t in result.get("vs_previous_default", [])
            ],
        ),
        "",
        f"Cheapest within noise of the best on every task: **{result['cheapest_within_noise'] or 'none'}**",
    ]
    return "\n".join(lines) + "\n"


def plot(result: dict, path: Path) -> None:
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    archs = result["architectures"]
    fig, axes = plt.subplots(1, len(TASKS), figsize=(4.2 * len(TASKS), 3.6))
    try:
        for ax, task in zip(axes, TASKS, strict=True):
            for name, a in archs.items():
                m = a["tasks"][task]
                ax.errorbar(a["flops"], m["ndcg@10"], yerr=m["ndcg@10_std"], fmt="o", capsize=3)
                label = name.split(" (")[0]
                ax.annotate(label, (a["flops"], m["ndcg@10"]), fontsize=7, xytext=(3, 3), textcoords="offset points")
            ax.set_xscale("log")
            ax.set_xlabel("FLOPs per candidate")
            ax.set_title(task)
        axes[0].set_ylabel("NDCG@10")
        fig.tight_layout()
        fig.savefig(path, dpi=120)
    finally:
        plt.close(fig)
