"""`unirank bench-train`: what training costs as the data grows, and what data-parallel processes buy.

Contract: for each size, `unirank data synth --events N` (users and entities grow with N) then `unirank
train` on it, each in its own process tree, timed, its peak resident memory (the sum over the tree,
sampled every 0.1 s with psutil) recorded — `unirank train` goes out of core above its `--out-of-core-above`,
and synth writes parts above its `--part-events`, both at their defaults here; then the smallest size
trained in memory with 1 and 2 DDP processes (`--nproc`): rows/s from the manifests and test NDCG@10
per task. A run that fails (out of memory
included) is recorded with its exit status, not raised. Writes results/bench-train-<timestamp>.json, a
markdown table and a PNG. Targets (the scale issue's): peak RSS at the largest size ≤ 2x the smallest's,
time about linear in the events.

    unirank bench-train --sizes 1000000,5000000,20000000      # the scale issue's sizes
    unirank bench-train --quick                                # 200k and 1M events
"""

from __future__ import annotations

import contextlib
import json
import shutil
import subprocess
import sys
import tempfile
import time
from pathlib import Path

import psutil

from loadtest.bench import machine
from loadtest.report import figure, save_results
from unirank.core.markdown import markdown_table

CLI = [sys.executable, "-m", "unirank.cli"]


def _tree_rss(proc: psutil.Process) -> int:
    total = 0
    for p in [proc, *proc.children(recursive=True)]:
        with contextlib.suppress(psutil.Error):
            total += p.memory_info().rss
    return total


def measured(cmd: list[str], log: Path) -> dict:
    """Runs cmd; its wall time, the peak RSS of its whole process tree, and its exit status."""
    started, peak = time.perf_counter(), 0
    with log.open("w") as out:
        proc = subprocess.Popen(cmd, stdout=out, stderr=subprocess.STDOUT)
        watched = psutil.Process(proc.pid)
        while proc.poll() is None:
            with contextlib.suppress(psutil.Error):
                peak = max(peak, _tree_rss(watched))
            time.sleep(0.1)
    return {"seconds": time.perf_counter() - started, "peak_rss_mb": peak / 2**20, "exit": proc.returncode}


def _manifest_stats(bundle: Path) -> dict:
    manifest = json.loads((bundle / "manifest.json").read_text())
    epochs = manifest["training"]["epochs"]
    return {
        "out_of_core": "out_of_core" in manifest["training_data"],
        "sparse_embeddings": bool(manifest["training"].get("sparse_embeddings")),
        "fit_rows_per_s": sum(e.get("rows_per_s", 0.0) for e in epochs) / max(len(epochs), 1),
        "epochs": len(epochs),
        "ndcg@10": {t: m["model"]["ndcg@10"] for t, m in manifest["metrics"]["tasks"].items()},
    }


def run(sizes: list[int], epochs: int, work: Path) -> dict:
    rows, ddp = [], []
    for n in sizes:
        data, bundle = work / f"data-{n}", work / f"bundle-{n}"
        synth = [*CLI, "data", "synth", "--out", str(data), "--events", str(n)]
        synth += ["--users", str(max(1000, n // 50)), "--entities", str(max(600, min(50_000, n // 200)))]
        print(f"bench-train: synth {n:,} events", flush=True)
        made = measured(synth, work / f"synth-{n}.log")
        row = {"events": n, "synth": made}
        if made["exit"] == 0:
            print(f"bench-train: train on {n:,} events", flush=True)
            train = [*CLI, "train", "--data", str(data), "--out", str(bundle), "--epochs", str(epochs)]
            row["train"] = measured(train, work / f"train-{n}.log")
            if row["train"]["exit"] == 0:
                row |= _manifest_stats(bundle)
        rows.append(row)
    smallest = work / f"data-{sizes[0]}"
    for nproc in (1, 2):
        bundle = work / f"ddp-{nproc}"
        print(f"bench-train: {nproc} process(es) on {sizes[0]:,} events", flush=True)
        cmd = [*CLI, "train", "--data", str(smallest), "--out", str(bundle), "--epochs", str(epochs)]
        # both in memory whatever the size (the smallest): one process against two on the same path
        cmd += ["--out-of-core-above", str(10 * sizes[0])]
        result = measured(cmd + ["--nproc", str(nproc)], work / f"ddp-{nproc}.log")
        ddp.append(
            {"processes": nproc, "events": sizes[0]} | result | (_manifest_stats(bundle) if not result["exit"] else {})
        )
    return {"machine": machine(), "epochs": epochs, "sizes": rows, "ddp": ddp}


def targets(r: dict) -> dict:
    done = [s for s in r["sizes"] if s.get("train", {}).get("exit") == 0]
    if len(done) < 2 or len(done) < len(r["sizes"]):
        return {"every size trained": False}
    first, last = done[0], done[-1]
    scale = last["events"] / first["events"]
    return {
        "every size trained": True,
        "peak RSS at the largest <= 2x the smallest": last["train"]["peak_rss_mb"] <= 2 * first["train"]["peak_rss_mb"],
        "time about linear (<= 1.5x proportional)": last["train"]["seconds"] <= 1.5 * scale * first["train"]["seconds"],
    }


def table(r: dict) -> str:
    sizes = []
    for s in r["sizes"]:
        train = s.get("train", {})
        ndcg = " / ".join(f"{v:.4f}" for v in s.get("ndcg@10", {}).values()) or f"failed (exit {train.get('exit')})"
        sizes.append(
            (
                f"{s['events']:,}",
                f"{s['synth']['seconds']:.1f}",
                f"{s['synth']['peak_rss_mb']:.0f}",
                f"{train.get('seconds', float('nan')):.1f}",
                f"{train.get('peak_rss_mb', float('nan')):.0f}",
                "yes" if s.get("out_of_core") else "no",
                "sparse" if s.get("sparse_embeddings") else "dense",
                f"{s.get('fit_rows_per_s', 0):.0f}",
                ndcg,
            )
        )
    ddp = []
    for d in r["ddp"]:
        ndcg = " / ".join(f"{v:.4f}" for v in d.get("ndcg@10", {}).values()) or f"failed (exit {d['exit']})"
        ddp.append(
            (d["processes"], f"{d['events']:,}", f"{d['seconds']:.1f}", f"{d.get('fit_rows_per_s', 0):.0f}", ndcg)
        )
    headers = ("events", "synth s", "synth peak RSS MB", "train s", "train peak RSS MB", "out of core", "id tables")
    lines = [
        markdown_table((*headers, "fit rows/s", "NDCG@10 search / prequery / mlt"), sizes),
        "",
        markdown_table(("DDP processes", "events", "train s", "fit rows/s", "NDCG@10 search / prequery / mlt"), ddp),
    ]
    lines += ["", "Targets: " + ", ".join(f"{k}: {'met' if v else 'MISSED'}" for k, v in r["targets"].items())]
    return "\n".join(lines) + "\n"


def plot(r: dict, path: Path) -> None:
    done = [s for s in r["sizes"] if s.get("train", {}).get("exit") == 0]
    with figure(path, 2, size=(11, 4), dpi=110) as (fig, axes):
        events = [s["events"] for s in done]
        axes[0].plot(events, [s["train"]["peak_rss_mb"] for s in done], "o-", label="peak RSS (MB)")
        axes[0].set_xscale("log")
        axes[0].set_xlabel("events")
        axes[0].set_ylabel("MB")
        twin = axes[0].twinx()
        twin.plot(events, [s["train"]["seconds"] for s in done], "s--", color="tab:red", label="train time (s)")
        twin.set_ylabel("seconds")
        axes[0].set_title("unirank train vs data size")
        axes[1].bar([str(d["processes"]) for d in r["ddp"]], [d.get("fit_rows_per_s", 0) for d in r["ddp"]])
        axes[1].set_xlabel("DDP processes")
        axes[1].set_ylabel("fit rows/s")
        axes[1].set_title(f"data parallel on {r['ddp'][0]['events']:,} events")


def bench_train(sizes: list[int], epochs: int, out: Path, keep: bool = False) -> dict:
    work = Path(tempfile.mkdtemp(prefix="unirank-bench-train-"))
    try:
        result = run(sorted(sizes), epochs, work)
    finally:
        if not keep:
            shutil.rmtree(work, ignore_errors=True)
    result["targets"] = targets(result)
    return save_results(result, out, "bench-train", table(result), plot)
