"""Data-parallel training under torchrun (DDP): `unirank train --nproc N` on one machine, the Kubernetes
training Job (k8s/training) across nodes.

Contract: every process is started by torchrun (it sets RANK, WORLD_SIZE, MASTER_ADDR/PORT); the backend
is NCCL when CUDA is available, else gloo. Rank 0 builds the feature tables once (statistics, clusters,
collaborative-filtering factors) and sends their files to the other ranks through the process group (no
shared filesystem needed between nodes); every rank, rank 0 included, loads them from those files, so
every rank encodes identical tensors. Only rank 0 writes the output directory. Each rank
encodes the fit and validation windows, `model_export.train.fit` gives each its slice of every batch and
DDP averages the gradients; rank 0 exports the bundle (with the parity check) and evaluates it, as
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

import torch
import torch.distributed as dist

from model_export.data import Dataset
from model_export.splits import click_log, encode_split
from model_export.table_builder import build_tables
from model_export.train import TrainConfig, config_from_dict, fit
from unirank.core.context import personalization_rank
from unirank.core.features import FeatureEncoder
from unirank.core.tables import FeatureTables


def train_distributed(data_dir: Path, out: Path, cfg: TrainConfig) -> dict | None:
    """One rank's part of a distributed `unirank train`; rank 0 returns the manifest, the others None."""
    from model_export.evaluate import evaluate_bundle
    from model_export.export import export_bundle, record_metrics

    dist.init_process_group("nccl" if torch.cuda.is_available() else "gloo")
    rank, world = dist.get_rank(), dist.get_world_size()
    log = print if rank == 0 else (lambda *_: None)
    started = time.perf_counter()
    staging = Path(tempfile.mkdtemp(prefix="unirank-ddp-tables-"))
    try:
        dataset = Dataset.load(data_dir)
        payload = [None]
        if rank == 0:
            log(f"{world} processes; loaded {dataset.events.num_rows} events, {dataset.entities.num_rows} entities")
            build_tables(
                dataset.entities,
                dataset.split("feature"),
                dataset.events,
                seed=cfg.seed,
                text=cfg.options.text_features,
            ).save(staging)
            payload = [_pack(staging)]
        dist.broadcast_object_list(payload, src=0)
        if rank > 0:
            _unpack(payload[0], staging)
        tables = FeatureTables.load(staging)
        encoder = FeatureEncoder(tables, cfg.personalization)
        clicks = click_log(encoder, dataset) if personalization_rank(cfg.personalization) >= 2 else None
        fit_enc = encode_split(encoder, dataset, "fit", cfg.tasks, cfg.impute, clicks)
        val_enc = encode_split(encoder, dataset, "validation", cfg.tasks, cfg.impute, clicks)
        log(f"encoded fit {len(fit_enc)} rows, validation {len(val_enc)} rows in {time.perf_counter() - started:.1f}s")
        model, training = fit(tables, fit_enc, val_enc, cfg, log, rank=rank, world=world)
        manifest = None
        if rank == 0:
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
        dist.barrier()
        return manifest
    finally:
        shutil.rmtree(staging, ignore_errors=True)
        dist.destroy_process_group()


def _pack(directory: Path) -> bytes:
    buffer = io.BytesIO()
    with tarfile.open(fileobj=buffer, mode="w") as tar:
        tar.add(directory, arcname=".")
    return buffer.getvalue()


def _unpack(payload: bytes, directory: Path) -> None:
    with tarfile.open(fileobj=io.BytesIO(payload)) as tar:
        tar.extractall(directory, filter="data")


def launch(data_dir: Path, out: Path, cfg: TrainConfig, nproc: int) -> int:
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
    ]
    env = os.environ | {"OMP_NUM_THREADS": str(threads)}
    return subprocess.run(cmd, env=env).returncode


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--data", type=Path, required=True)
    parser.add_argument("--out", type=Path, required=True)
    parser.add_argument("--config", default="{}", help="TrainConfig fields as JSON (unset: the defaults)")
    args = parser.parse_args()
    defaults = asdict(TrainConfig())
    given = json.loads(args.config)
    nested = {k: defaults[k] | given.get(k, {}) for k in ("architecture", "options")}
    train_distributed(args.data, args.out, config_from_dict(defaults | given | nested))


if __name__ == "__main__":
    main()
