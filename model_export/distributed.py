"""Data-parallel training under torchrun (DDP): `unirank train --nproc N` on one machine, the Kubernetes
training Job (k8s/training) across nodes.

Contract: every process is started by torchrun (it sets RANK, WORLD_SIZE, MASTER_ADDR/PORT); the backend
is NCCL when CUDA is available, else gloo. Rank 0 builds the feature tables once (statistics, clusters,
collaborative-filtering factors) and sends their files to the other ranks through the process group (no
shared filesystem needed between nodes); every rank, rank 0 included, loads them from those files, so
every rank encodes identical tensors. Only rank 0 writes the output directory. In memory, each rank
encodes the fit and validation windows and `model_export.train.fit` gives each its slice of every batch;
out of core (a log above `--out-of-core-above` events), rank 0 also sends the click log, and each rank
reads the log a time slice at a time and encodes only its share of the fit window's requests. DDP
averages the gradients; rank 0 exports the bundle (with the parity check) and evaluates it, as
`unirank train` does. The same data gives the same model quality within the noise of a seed.

    python -m torch.distributed.run --standalone --nproc-per-node 2 -m model_export.distributed \\
        --data artifacts/demo-data --out artifacts/ddp --config '{"epochs": 4, ...}'
"""

from __future__ import annotations

import argparse
import io
import json
import os
import shutil
import sys
import tarfile
import tempfile
import time
from dataclasses import asdict
from pathlib import Path

import numpy as np
import torch
import torch.distributed as dist

from model_export.data import Dataset
from model_export.event_log import CHUNK_ROWS, IN_MEMORY_ROWS, EventLog, count_events
from model_export.splits import click_log, encode_split
from model_export.table_builder import build_tables
from model_export.train import (
    TrainConfig,
    config_from_dict,
    encode_out_of_core,
    fit,
    out_of_core_summary,
    out_of_core_tables,
)
from unirank.core.context import personalization_rank
from unirank.core.features import FeatureEncoder
from unirank.core.tables import FeatureTables


def train_distributed(
    data_dir: Path, out: Path, cfg: TrainConfig, chunk_rows: int = CHUNK_ROWS, in_memory_rows: int = IN_MEMORY_ROWS
) -> dict | None:
    """One rank's part of a distributed `unirank train`; rank 0 returns the manifest, the others None. A
    log of more than `in_memory_rows` events is read out of core (`_train_out_of_core`)."""
    dist.init_process_group("nccl" if torch.cuda.is_available() else "gloo")
    rank, world = dist.get_rank(), dist.get_world_size()
    log = print if rank == 0 else (lambda *_: None)
    staging = Path(tempfile.mkdtemp(prefix="unirank-ddp-tables-"))
    try:
        if count_events(data_dir) > in_memory_rows:
            manifest = _train_out_of_core(data_dir, out, cfg, chunk_rows, staging, rank, world, log)
        else:
            manifest = _train_in_memory(data_dir, out, cfg, staging, rank, world, log)
        dist.barrier()
        return manifest
    finally:
        shutil.rmtree(staging, ignore_errors=True)
        dist.destroy_process_group()


def _train_in_memory(data_dir, out, cfg, staging: Path, rank: int, world: int, log) -> dict | None:
    """Every rank loads the log and encodes the whole fit window; `fit` gives each its slice of every batch."""
    from model_export.evaluate import evaluate_bundle
    from model_export.export import export_bundle, record_metrics

    started = time.perf_counter()
    dataset = Dataset.load(data_dir)
    if rank == 0:
        log(f"{world} processes; loaded {dataset.events.num_rows} events, {dataset.entities.num_rows} entities")
        build_tables(
            dataset.entities,
            dataset.split("feature"),
            dataset.events,
            seed=cfg.seed,
            text=cfg.options.text_features,
        ).save(staging)
    tables, _ = _share_from_rank_0(staging, rank)
    encoder = FeatureEncoder(tables, cfg.personalization)
    clicks = click_log(encoder, dataset) if personalization_rank(cfg.personalization) >= 2 else None
    fit_enc = encode_split(encoder, dataset, "fit", cfg.tasks, cfg.impute, clicks)
    val_enc = encode_split(encoder, dataset, "validation", cfg.tasks, cfg.impute, clicks)
    log(f"encoded fit {len(fit_enc)} rows, validation {len(val_enc)} rows in {time.perf_counter() - started:.1f}s")
    model, training = fit(tables, fit_enc, val_enc, cfg, log, rank=rank, world=world)
    if rank > 0:
        return None
    summary = {
        "events": dataset.events.num_rows,
        "entities": dataset.entities.num_rows,
        "rows": {s: int(dataset.split(s).num_rows) for s in ("feature", "fit", "validation", "test")},
        "tasks": list(cfg.tasks),
        "processes": world,
    }
    export_bundle(model, tables, val_enc, out, cfg, training, summary)
    manifest = record_metrics(out, evaluate_bundle(out, data_dir))
    log(f"bundle {manifest['version']} written to {out} in {time.perf_counter() - started:.1f}s")
    return manifest


def _train_out_of_core(data_dir, out, cfg, chunk_rows: int, staging: Path, rank: int, world: int, log) -> dict | None:
    """Rank 0 builds the tables and the click log in one pass over the log and sends them; each rank
    encodes only its share of every fit slice's requests (`request_share`) to its own local files and
    trains on those (`fit(sharded=True)`); rank 0 alone encodes the validation window, exports and
    evaluates slice by slice. No rank holds the log, or more than its share of the fit window."""
    from model_export.evaluate import evaluate_bundle
    from model_export.export import export_bundle, record_metrics

    started = time.perf_counter()
    source = EventLog(data_dir, chunk_rows)  # every rank: the slice plan (a scan of a few columns)
    if rank == 0:
        log(f"{world} processes; scanned {source.rows} events: out of core, time slices of about {chunk_rows} rows")
        tables, clicks = out_of_core_tables(source, cfg)
        tables.save(staging)
        if clicks is not None:
            np.savez(staging / _CLICKS, *clicks)
        del tables, clicks
    tables, clicks = _share_from_rank_0(staging, rank)
    encoder = FeatureEncoder(tables, cfg.personalization)
    with tempfile.TemporaryDirectory(prefix="unirank-ddp-train-") as work:
        fit_enc = encode_out_of_core(encoder, source, "fit", cfg, clicks, Path(work) / "fit", rank, world)
        val_enc = None
        if rank == 0:
            val_enc = encode_out_of_core(encoder, source, "validation", cfg, clicks, Path(work) / "validation")
        log(f"encoded rank 0's share of fit, {len(fit_enc)} rows, in {time.perf_counter() - started:.1f}s")
        model, training = fit(tables, fit_enc, val_enc, cfg, log, rank=rank, world=world, sharded=True)
        if rank > 0:
            return None
        summary = out_of_core_summary(source, cfg, len(fit_enc.files)) | {"processes": world}
        export_bundle(model, tables, val_enc.load(0), out, cfg, training, summary)
    del model, tables, encoder
    manifest = record_metrics(out, evaluate_bundle(out, data_dir, source=source, clicks=clicks))
    log(f"bundle {manifest['version']} written to {out} in {time.perf_counter() - started:.1f}s")
    return manifest


_CLICKS = "click_log.npz"


def _share_from_rank_0(staging: Path, rank: int) -> tuple[FeatureTables, tuple | None]:
    """Rank 0's files in `staging` (the tables, and the click log when there is one) sent to every rank
    through the process group; every rank, rank 0 included, loads them from its files."""
    payload = [_pack(staging) if rank == 0 else None]
    dist.broadcast_object_list(payload, src=0)
    if rank > 0:
        _unpack(payload[0], staging)
    del payload
    clicks = None
    if (staging / _CLICKS).exists():
        with np.load(staging / _CLICKS) as z:
            clicks = tuple(z[f"arr_{i}"] for i in range(len(z.files)))
        (staging / _CLICKS).unlink()
    return FeatureTables.load(staging), clicks


def _pack(directory: Path) -> bytes:
    buffer = io.BytesIO()
    with tarfile.open(fileobj=buffer, mode="w") as tar:
        tar.add(directory, arcname=".")
    return buffer.getvalue()


def _unpack(payload: bytes, directory: Path) -> None:
    with tarfile.open(fileobj=io.BytesIO(payload)) as tar:
        tar.extractall(directory, filter="data")


def launch(
    data_dir: Path,
    out: Path,
    cfg: TrainConfig,
    nproc: int,
    chunk_rows: int = CHUNK_ROWS,
    in_memory_rows: int = IN_MEMORY_ROWS,
) -> int:
    """`unirank train --nproc N`: torchrun on this machine, N processes (each gets the cores / N)."""
    import subprocess

    threads = max(1, (os.cpu_count() or 1) // nproc)
    config = asdict(cfg) | {"tasks": list(cfg.tasks), "threads": threads}
    cmd = [sys.executable, "-m", "torch.distributed.run", "--standalone", "--nproc-per-node", str(nproc)]
    cmd += [
        "-m",
        "model_export.distributed",
        "--data",
        str(data_dir),
        "--out",
        str(out),
        "--config",
        json.dumps(config),
        "--chunk-rows",
        str(chunk_rows),
        "--out-of-core-above",
        str(in_memory_rows),
    ]
    env = os.environ | {"OMP_NUM_THREADS": str(threads)}
    return subprocess.run(cmd, env=env).returncode


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--data", type=Path, required=True)
    parser.add_argument("--out", type=Path, required=True)
    parser.add_argument("--config", default="{}", help="TrainConfig fields as JSON (unset: the defaults)")
    parser.add_argument("--chunk-rows", type=int, default=CHUNK_ROWS, help="Rows of a time slice out of core")
    parser.add_argument(
        "--out-of-core-above", type=int, default=IN_MEMORY_ROWS, help="A log of more events is read out of core"
    )
    args = parser.parse_args()
    defaults = asdict(TrainConfig())
    given = json.loads(args.config)
    nested = {k: defaults[k] | given.get(k, {}) for k in ("architecture", "options")}
    train_distributed(
        args.data, args.out, config_from_dict(defaults | given | nested), args.chunk_rows, args.out_of_core_above
    )


if __name__ == "__main__":
    main()
