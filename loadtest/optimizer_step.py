"""One training step's time, dense AdamW against sparse id tables, as the user and entity tables grow.

Contract: builds the bundle's model (its architecture and options) with the given numbers of users and
entities, and times forward + backward + optimiser step on random batches of `--batch` rows, once with
AdamW over every parameter (`--dense-embeddings`) and once with the id tables sparse (SparseAdam over
them, AdamW over the rest: `--sparse-embeddings`). What `model_export.train.SPARSE_ID_ROWS` is chosen by.
Prints a table; `--out` also writes JSON.

    python -m loadtest.optimizer_step --bundle artifacts/demo --sizes 15000:20000,75000:20000,300000:20000
"""

from __future__ import annotations

import argparse
import dataclasses
import json
import time
from pathlib import Path

import numpy as np
import torch

from model_export.model import UnifiedRanker
from model_export.train import TrainConfig, _Optimizer
from unirank.core.spec import ModelSpec


def _batch(rng: np.random.Generator, spec: ModelSpec, users: int, entities: int, rows: int) -> list[torch.Tensor]:
    v = spec.vocabulary
    ctx = np.stack(
        [
            rng.integers(0, 3, rows),
            rng.integers(0, v.n_countries + 1, rows),
            rng.integers(0, v.n_clusters + 1, rows),
            rng.integers(0, entities + 1, rows),
            rng.integers(0, users + 1, rows),
        ],
        1,
    )
    cand = np.stack([rng.integers(0, entities + 1, rows), rng.integers(0, 3, rows)], 1)
    inputs = {
        "ctx_ids": ctx,
        "ctx_query": rng.integers(0, 1000, (rows, 8)),
        "cand_ids": cand,
        "cand_genres": rng.integers(0, v.n_genres + 1, (rows, 3)),
        "cand_dense": rng.standard_normal((rows, len(spec.dense_mean))).astype(np.float32),
        "cand_ctx": np.arange(rows),
    }
    return [torch.from_numpy(inputs[k]) for k in spec.input_names()[:6]]


def step_ms(spec: ModelSpec, users: int, entities: int, sparse: bool, rows: int, steps: int) -> float:
    """Milliseconds per step (after 10 warm-up steps), on 2 threads as `unirank train` runs."""
    spec = dataclasses.replace(
        spec, vocabulary=dataclasses.replace(spec.vocabulary, n_users=users, n_entities=entities)
    )
    torch.manual_seed(0)
    torch.set_num_threads(2)
    model = UnifiedRanker(spec)
    opt = _Optimizer(model, TrainConfig(sparse_embeddings=sparse), sparse)
    rng = np.random.default_rng(0)
    labels = torch.from_numpy(rng.integers(0, 2, rows).astype(np.float32))
    for i in range(steps + 10):
        if i == 10:
            started = time.perf_counter()
        loss = torch.nn.functional.binary_cross_entropy_with_logits(
            model.logits(*_batch(rng, spec, users, entities, rows)), labels
        )
        opt.zero_grad()
        loss.backward()
        opt.step()
    return (time.perf_counter() - started) / steps * 1000


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--bundle", type=Path, default=Path("artifacts/demo"))
    parser.add_argument("--sizes", default="15000:20000,75000:20000,300000:20000", help="users:entities,...")
    parser.add_argument("--batch", type=int, default=1024)
    parser.add_argument("--steps", type=int, default=60)
    parser.add_argument("--out", type=Path)
    args = parser.parse_args()
    manifest = json.loads((args.bundle / "manifest.json").read_text())
    spec = ModelSpec.from_dict(manifest["model"])
    spec = dataclasses.replace(
        spec, options=dataclasses.replace(spec.options, history_encoder=False, text_features=False)
    )
    rows = []
    print("| users | entities | dense AdamW ms/step | sparse id tables ms/step |\n|---|---|---|---|")
    for size in args.sizes.split(","):
        users, entities = (int(x) for x in size.split(":"))
        dense = step_ms(spec, users, entities, False, args.batch, args.steps)
        sparse = step_ms(spec, users, entities, True, args.batch, args.steps)
        rows.append({"users": users, "entities": entities, "dense_ms": dense, "sparse_ms": sparse})
        print(f"| {users:,} | {entities:,} | {dense:.1f} | {sparse:.1f} |", flush=True)
    if args.out:
        args.out.parent.mkdir(parents=True, exist_ok=True)
        args.out.write_text(json.dumps({"batch": args.batch, "steps": args.steps, "rows": rows}, indent=2))


if __name__ == "__main__":
    main()
