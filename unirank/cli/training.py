"""Training jobs: train, evaluate, study, cold-start, build-demo, manifest."""

from __future__ import annotations

import json
import time
from pathlib import Path
from typing import Annotated

import typer

from unirank.cli.app import (
    Personalization,
    RankBy,
    Split,
    app,
    bundle_dir,
    dataset_dir,
    parse_tasks,
    user_errors,
)
from unirank.core.vocab import TASKS

DataDir = Annotated[
    str, typer.Option(help="Dataset directory in the event schema, or its s3:// / gs:// URL", callback=dataset_dir)
]
BundleDir = Annotated[Path, typer.Option(help="Bundle directory", callback=bundle_dir)]


@app.command()
@user_errors(ValueError)
def train(
    data: DataDir,
    out: Annotated[Path, typer.Option(help="Bundle directory to write")],
    personalization: Annotated[Personalization, typer.Option(help="How personal the model is")] = "full",
    tasks: Annotated[str, typer.Option(help="Comma-separated tasks to train on", callback=parse_tasks)] = ",".join(
        TASKS
    ),
    epochs: Annotated[int, typer.Option(min=1)] = 8,
    seed: int = 0,
    batch_size: Annotated[int, typer.Option(min=1)] = 1024,
    task_gate: Annotated[bool, typer.Option(help="Task-conditioned feature scaling (USR)")] = False,
    mmoe_experts: Annotated[int, typer.Option(min=0, help="MMoE: shared experts, a gate and head per task")] = 0,
    play_head: Annotated[bool, typer.Option(help="Also learn P(play | click); the bundle outputs P(play)")] = False,
    rank_by: Annotated[RankBy, typer.Option(help="The bundle's default ranking score")] = "click",
    history_encoder: Annotated[bool, typer.Option(help="Self-attention over the mixed search/rec history")] = False,
    text_features: Annotated[bool, typer.Option(help="MiniLM title features + aspect gate, for cold start")] = False,
    text_vector: Annotated[
        bool, typer.Option(help="With --text-features: the title vector too, not only its similarities")
    ] = True,
    numeric_bins: Annotated[
        int,
        typer.Option(
            min=0, help="Dense features as piecewise-linear encodings over this many quantile bins (0: raw values)"
        ),
    ] = 0,
    lexical_features: Annotated[
        bool, typer.Option(help="Match position, BM25, typo and facet match as features (off: an ablation)")
    ] = True,
    recency_features: Annotated[
        bool,
        typer.Option(help="The last events' affinity, genre match, co-clicks and search-or-not (off: an ablation)"),
    ] = True,
    cold_entity_rate: Annotated[
        float, typer.Option(min=0.0, max=0.99, help="Share of training rows shown as a new entity (DropoutNet)")
    ] = 0.0,
    listwise_weight: Annotated[
        float,
        typer.Option(min=0.0, max=100.0, help="Add per-request softmax cross-entropy (ListNet) to BCE, this much"),
    ] = 0.0,
    sparse_embeddings: Annotated[
        bool | None,
        typer.Option(
            "--sparse-embeddings/--dense-embeddings",
            help="Update only the id-table rows a batch touches (SparseAdam); unset: above 50k users + entities",
            show_default=False,
        ),
    ] = None,
    int8: Annotated[
        bool,
        typer.Option(help="Quantize the exported graph's weights to int8 (dynamic quantization; docs/model.md)"),
    ] = False,
    nproc: Annotated[
        int, typer.Option(min=1, help="Data-parallel processes on this machine (torchrun, DDP: gloo, or NCCL on GPUs)")
    ] = 1,
    out_of_core_above: Annotated[
        int,
        typer.Option(min=0, help="A log of more events is trained out of core, a time slice at a time (0: always)"),
    ] = 2_000_000,
    chunk_rows: Annotated[int, typer.Option(min=10_000, help="Rows of a time slice out of core")] = 500_000,
) -> None:
    """Train the unified ranker, export the ONNX bundle (parity-checked) and evaluate it on the test window."""
    from model_export.evaluate import format_table
    from model_export.train import TrainConfig, train_bundle
    from unirank.core.spec import ModelOptions

    options = ModelOptions(
        task_gate=task_gate,
        mmoe_experts=mmoe_experts,
        play_head=play_head,
        history_encoder=history_encoder,
        text_features=text_features,
        text_vector=text_vector,
        rank_by=RankBy(rank_by).value,
        numeric_bins=numeric_bins,
        lexical_features=lexical_features,
        recency_features=recency_features,
    )
    cfg = TrainConfig(
        personalization=Personalization(personalization).value,
        tasks=parse_tasks(tasks),
        epochs=epochs,
        seed=seed,
        batch_size=batch_size,
        cold_entity_rate=cold_entity_rate,
        listwise_weight=listwise_weight,
        sparse_embeddings=sparse_embeddings,
        int8=int8,
        options=options,
    )
    if nproc > 1:
        import json

        from model_export.distributed import launch

        if code := launch(data, out, cfg, nproc, chunk_rows, out_of_core_above):
            raise typer.Exit(code)
        manifest = json.loads((out / "manifest.json").read_text())
    else:
        manifest = train_bundle(data, out, cfg, typer.echo, chunk_rows, out_of_core_above)
    typer.echo(format_table(manifest["metrics"]))


@app.command()
@user_errors(ValueError)
def evaluate(
    bundle: BundleDir,
    data: DataDir,
    split: Annotated[Split, typer.Option(help="Which time window to evaluate on")] = "test",
    json_out: Annotated[Path | None, typer.Option("--json", help="Where to write the JSON")] = None,
    allow_catalog_mismatch: Annotated[
        bool, typer.Option(help="Report even when most impressions are of entities the bundle does not know")
    ] = False,
    out_of_core_above: Annotated[
        int, typer.Option(min=0, help="A log of more events is read a time slice at a time (0: always)")
    ] = 2_000_000,
    chunk_rows: Annotated[int, typer.Option(min=10_000, help="Rows of a time slice out of core")] = 500_000,
) -> None:
    """Offline metrics per task for a bundle (through onnxruntime) next to a popularity baseline."""
    from model_export.evaluate import evaluate_bundle, format_table

    json_out = json_out or Path("results") / f"evaluate-{time.strftime('%Y%m%d-%H%M%S')}.json"
    minimum = 0.0 if allow_catalog_mismatch else 0.5
    result = evaluate_bundle(
        bundle,
        data,
        Split(split).value,
        json_out,
        minimum_overlap=minimum,
        chunk_rows=chunk_rows,
        in_memory_rows=out_of_core_above,
    )
    if result["catalog_overlap"] < 0.99:
        typer.echo(
            f"warning: {result['catalog_overlap']:.1%} of the impressions are of entities the bundle was trained "
            "with; the rest score as unknown entities",
            err=True,
        )
    typer.echo(format_table(result))
    typer.echo(f"written to {json_out}")


@app.command()
@user_errors(ValueError)
def study(
    data: Annotated[
        str | None,
        typer.Option(help="Dataset in the event schema (default: synthetic, generated)", callback=dataset_dir),
    ] = None,
    quick: Annotated[bool, typer.Option(help="Small data, one seed, two epochs: a smoke test")] = False,
    out: Annotated[Path, typer.Option(help="Where results/study-<timestamp>/ goes")] = Path("results"),
    seeds: Annotated[int, typer.Option(min=1, help="Seeds per trained row")] = 3,
    epochs: Annotated[int | None, typer.Option(min=1, help="Epochs per trained row (default 6; --quick 2)")] = None,
    row: Annotated[
        list[str] | None, typer.Option(help="Only these rows (repeat; e.g. 'unified (full)', 'lightgbm lambdamart')")
    ] = None,
    max_events: Annotated[
        int, typer.Option(min=1, help="A larger log is studied on a sample of its users of about this many events")
    ] = 2_000_000,
    task_share: Annotated[
        list[str] | None,
        typer.Option(help="Thin a task's fit requests to a share (repeat; e.g. more_like_this=0.1): data-thin tasks"),
    ] = None,
    front: Annotated[
        bool,
        typer.Option(help="The quality-cost front over architectures instead (NDCG@10 vs FLOPs and onnxruntime cost)"),
    ] = False,
    architecture: Annotated[
        list[str] | None, typer.Option(help="With --front: only these architectures (repeat; e.g. default)")
    ] = None,
) -> None:
    """Unified vs separate models, personalization lift, ablations and baselines, with paired tests; with
    --front, the quality-cost front over architectures."""
    from model_export.study import parse_task_shares, run_study

    shares = parse_task_shares(task_share)
    from model_export.synth import SynthParams, generate

    if data is None:
        data = Path("artifacts/study-quick-data" if quick else "artifacts/study-data")
        if not (data / "events.parquet").exists():
            if quick:
                params = SynthParams(users=1_500, entities=800, events=80_000, seed=0)
            else:
                params = SynthParams(users=12_000, entities=4_000, events=500_000, seed=0)
            generate(params, data)
    if front:
        from model_export.front import run_front

        path = run_front(
            data,
            out,
            seeds=(0,) if quick else tuple(range(seeds)),
            epochs=epochs or (2 if quick else 6),
            architectures=tuple(architecture) if architecture else None,
            log=typer.echo,
        )
        typer.echo((path / "front.md").read_text())
        return
    path = run_study(
        data,
        out,
        seeds=(0,) if quick else tuple(range(seeds)),
        epochs=epochs or (2 if quick else 6),
        log=typer.echo,
        rows=tuple(row) if row else None,
        max_events=max_events,
        task_share=shares,
    )
    typer.echo((path / "report.md").read_text())


@app.command("cold-start")
@user_errors(ValueError)
def cold_start(
    data: Annotated[
        str, typer.Option(help="Dataset in the event schema", callback=dataset_dir)
    ] = "artifacts/demo-data",
    seeds: Annotated[int, typer.Option(min=1, help="Seeds per row")] = 3,
    epochs: Annotated[int, typer.Option(min=1)] = 6,
    share: Annotated[
        float, typer.Option(min=0.01, max=0.9, help="Share of entities held out (never engaged before the test window)")
    ] = 0.1,
    out: Annotated[Path, typer.Option(help="Where results/cold-start-<timestamp>/ goes")] = Path("results"),
) -> None:
    """Entities unseen in training: NDCG@10 of the model with and without title text features."""
    from model_export.cold_start import run_cold_start

    path = run_cold_start(data, out, tuple(range(seeds)), epochs, share, log=typer.echo)
    typer.echo((path / "report.md").read_text())


@app.command("build-demo")
def build_demo(
    out: Annotated[Path, typer.Option(help="Bundle directory")] = Path("artifacts/demo"),
    data: Annotated[Path, typer.Option(help="Where the demo dataset goes")] = Path("artifacts/demo-data"),
    events: Annotated[int, typer.Option(min=1000)] = 200_000,
    seed: int = 0,
    session_intent: Annotated[
        float,
        typer.Option(
            min=0.0, max=1.0, help="Share of search sessions with a short-term intent (docs/pipeline.md, the generator)"
        ),
    ] = 0.5,
) -> None:
    """Small synthetic data -> train -> export, in one go (the bundle `make serve` uses). Half the search
    sessions carry an intent by default, so the demo shows the pre-query row following what was just
    searched and clicked."""
    from model_export.evaluate import format_table
    from model_export.synth import SynthParams, generate
    from model_export.train import TrainConfig, train_bundle

    started = time.perf_counter()
    generate(SynthParams(users=4_000, entities=2_000, events=events, seed=seed, session_intent=session_intent), data)
    manifest = train_bundle(data, out, TrainConfig(personalization="full", epochs=6, seed=seed), log=typer.echo)
    typer.echo(format_table(manifest["metrics"]))
    typer.echo(f"demo bundle ready in {time.perf_counter() - started:.0f}s: {out}")


@app.command()
def manifest(bundle: Annotated[Path, typer.Argument(help="Bundle directory", callback=bundle_dir)]) -> None:
    """Print a bundle's manifest summary: version, personalization, tasks, model options, parity."""
    m = json.loads((bundle / "manifest.json").read_text())
    summary = {
        k: m.get(k) for k in ("version", "created", "personalization", "tasks", "rank_by", "parity_max_abs_diff")
    }
    summary["options"] = m.get("model", {}).get("options")
    typer.echo(json.dumps(summary, indent=2))
