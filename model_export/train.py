"""Training: encode the splits with the shared feature code, fit with BCE + Adam, early-stop on validation.

With `listwise_weight` > 0 the loss adds, per request, the softmax cross-entropy of its impressions
(ListNet with the clicks as the target distribution), and batches hold whole requests. BCE stays in the
loss so that the output keeps meaning P(click) (the service ranks by it, `rank_by` multiplies it with
P(play), and the cache stores it); the listwise term only sharpens the order within a request.

`train_bundle` is what `unirank train` runs: feature tables from the feature window, the model fitted
on the fit window, the ONNX bundle exported (with the parity check) and evaluated on the test window.
"""

from __future__ import annotations

import tempfile
import time
from dataclasses import dataclass, field
from pathlib import Path

import numpy as np
import pyarrow as pa
import pyarrow.compute as pc
import torch
from tqdm import tqdm

from model_export import memory
from model_export.data import SPLIT_BOUNDS, Dataset
from model_export.event_log import CHUNK_ROWS, IN_MEMORY_ROWS, EventLog, count_events
from model_export.model import UnifiedRanker
from model_export.splits import Encoded, EncodedChunks, click_log, concat_encoded, encode_events, encode_split
from model_export.table_builder import ClickLog, Vocabularies, WindowStatistics, build_tables, tables_from
from unirank.core.context import personalization_rank
from unirank.core.features import DENSE_FEATURES, FeatureEncoder
from unirank.core.spec import Architecture, ModelOptions, ModelSpec, Vocabulary
from unirank.core.tables import FeatureTables
from unirank.core.vocab import PERSONALIZATION_LEVELS, TASKS

# Above this many user + entity rows, the id tables are updated sparsely by default: a dense AdamW step's
# cost grows with the tables (`python -m loadtest.optimizer_step`: 34 vs 20 ms per step at 35k rows, 132
# vs 24 ms at 320k); below, training keeps dense AdamW, so small logs train exactly as they always did.
SPARSE_ID_ROWS = 50_000

_PERSONAL_DENSE = [DENSE_FEATURES.index("als_affinity"), DENSE_FEATURES.index("history_affinity")]
# what an entity nobody engaged with lacks: its id, and every engagement statistic (it keeps its content)
_ENGAGEMENT_DENSE = [
    DENSE_FEATURES.index(f)
    for f in ("pop_global", "pop_country", "qe_clicks", "qe_ctr", "co_clicks", "als_affinity", "history_affinity")
]


@dataclass(frozen=True)
class TrainConfig:
    """One training run: data use, optimisation, and the model (`architecture`, `options`) as the spec
    takes them. Invalid values are refused here, before any data is read."""

    personalization: str = "full"
    tasks: tuple[str, ...] = TASKS
    epochs: int = 8
    batch_size: int = 1024
    lr: float = 2e-3
    patience: int = 1
    seed: int = 0
    impute: bool = True
    cold_user_rate: float = 0.1  # rows trained as if the user were unknown, so cold start is learned
    cold_entity_rate: float = 0.0  # rows trained as if the candidate were new (no id, no statistics; DropoutNet)
    threads: int = 2
    listwise_weight: float = 0.0  # weight of the per-request softmax cross-entropy next to BCE
    weight_decay: float = 0.0  # AdamW's decoupled weight decay (the embeddings memorise ids fast)
    # The id tables (entities, users, query tokens) updated only in the rows a batch touches (SparseAdam,
    # "lazy Adam") instead of AdamW over every row each step, whose cost grows with the tables, not the
    # batch. None: when the users and entities are more than SPARSE_ID_ROWS (and no weight decay).
    sparse_embeddings: bool | None = None
    # the exported graph's matrix weights as int8 (onnxruntime's dynamic quantization: activations quantized
    # per call); the bundle records how far its scores are from the float graph's
    int8: bool = False
    architecture: Architecture = field(default_factory=Architecture)
    options: ModelOptions = field(default_factory=ModelOptions)

    def __post_init__(self) -> None:
        if problems := self.problems():
            raise ValueError("; ".join(problems))

    def problems(self) -> list[str]:
        out = []
        if self.personalization not in PERSONALIZATION_LEVELS:
            out.append(
                f"personalization must be one of {', '.join(PERSONALIZATION_LEVELS)}, not {self.personalization!r}"
            )
        unknown = [t for t in self.tasks if t not in TASKS]
        if unknown or not self.tasks:
            out.append(f"tasks must be a non-empty subset of {', '.join(TASKS)} (unknown: {', '.join(unknown) or '-'})")
        for name in ("cold_user_rate", "cold_entity_rate"):
            if not 0.0 <= getattr(self, name) < 1.0:
                out.append(f"{name} must be in [0, 1)")
        if not 0.0 <= self.weight_decay < 1.0:
            out.append("weight_decay must be in [0, 1)")
        if not 0.0 <= self.listwise_weight <= 100.0:
            out.append("listwise_weight must be in [0, 100]")
        if self.sparse_embeddings and self.weight_decay > 0:
            out.append("sparse_embeddings needs weight_decay 0 (SparseAdam has no weight decay)")
        if self.epochs < 1 or self.batch_size < 1:
            out.append("epochs and batch_size must be at least 1")
        if self.personalization in PERSONALIZATION_LEVELS:
            out += self.options.problems(self.personalization)
        return out


def _dense_moments(fit: Encoded | EncodedChunks, across_ranks: bool = False) -> tuple[np.ndarray, np.ndarray]:
    """Mean and standard deviation of the dense features over the fit rows (chunk by chunk on disk; with
    `across_ranks`, over every rank's share of them)."""
    if isinstance(fit, Encoded):
        dense = fit.inputs["cand_dense"]
        return dense.mean(0), dense.std(0)
    width = len(DENSE_FEATURES)
    n, s1, s2 = 0, np.zeros(width), np.zeros(width)
    for part in fit:
        dense = part.inputs["cand_dense"].astype(np.float64)
        n, s1, s2 = n + len(dense), s1 + dense.sum(0), s2 + (dense * dense).sum(0)
    if across_ranks:
        import torch.distributed as dist

        sums = torch.from_numpy(np.concatenate([[n], s1, s2]))
        dist.all_reduce(sums)
        n, s1, s2 = float(sums[0]), sums[1 : 1 + width].numpy(), sums[1 + width :].numpy()
    mean = s1 / max(n, 1)
    return mean.astype(np.float32), np.sqrt(np.maximum(s2 / max(n, 1) - mean * mean, 0.0)).astype(np.float32)


def sparse_embeddings(cfg: TrainConfig, spec: ModelSpec) -> bool:
    """Whether this run updates the id tables sparsely (`TrainConfig.sparse_embeddings`, resolved)."""
    if cfg.sparse_embeddings is not None:
        return cfg.sparse_embeddings
    return cfg.weight_decay == 0 and spec.vocabulary.n_users + spec.vocabulary.n_entities > SPARSE_ID_ROWS


class _Optimizer:
    """AdamW over the model's parameters; with sparse id tables, SparseAdam over those instead."""

    def __init__(self, model: UnifiedRanker, cfg: TrainConfig, sparse: bool):
        tables = model.sparse_id_tables(sparse)
        ids = {id(p) for p in tables}
        dense = [p for p in model.parameters() if id(p) not in ids]
        self.parts = [torch.optim.AdamW(dense, lr=cfg.lr, weight_decay=cfg.weight_decay)]
        if tables:
            self.parts.append(torch.optim.SparseAdam(tables, lr=cfg.lr))

    def zero_grad(self) -> None:
        for part in self.parts:
            part.zero_grad()

    def step(self) -> None:
        for part in self.parts:
            part.step()


def make_spec(
    tables: FeatureTables, fit: Encoded | EncodedChunks, cfg: TrainConfig, sharded: bool = False
) -> ModelSpec:
    mean, std = _dense_moments(fit, across_ranks=sharded)
    bins = cfg.options.numeric_bins
    edges = dense_edges(fit, bins) if bins else None
    vocabulary = Vocabulary(
        n_countries=len(tables.countries) - 1,
        n_clusters=tables.n_clusters,
        n_entities=tables.n_entities,
        n_users=len(tables.user_ids) - 1,
        n_genres=len(tables.genres) - 1,
    )
    return ModelSpec(
        vocabulary=vocabulary,
        dense_mean=mean.tolist(),
        dense_std=np.maximum(std, 1e-3).tolist(),
        personalization=cfg.personalization,
        architecture=cfg.architecture,
        options=cfg.options,
        dense_edges=edges,
    )


def dense_edges(fit: Encoded | EncodedChunks, bins: int, sample: int = 200_000, seed: int = 0) -> list[list[float]]:
    """Each dense feature's bin edges for piecewise-linear encodings: `bins` quantile bins of the fit rows (a
    sample of `sample` rows at most), made strictly increasing in float32 (a value many rows share, as a 0
    count, takes bins 1e-6 wide rather than none: a step instead of a slope, never a division by 0)."""
    rng = np.random.default_rng(seed)
    parts = [fit.inputs["cand_dense"]] if isinstance(fit, Encoded) else [p.inputs["cand_dense"] for p in fit]
    take = max(sample // max(len(parts), 1), 1)
    dense = np.concatenate([p[rng.choice(len(p), min(len(p), take), replace=False)] for p in parts if len(p)])
    edges = np.quantile(dense.astype(np.float64), np.linspace(0.0, 1.0, bins + 1), axis=0).T.astype(np.float32)
    for row in edges:  # (bins + 1,) per feature; a bin at least 1e-6 (relative) wide: 1 / width stays finite
        for i in range(1, len(row)):
            low = row[i - 1]
            row[i] = max(row[i], low + np.float32(1e-6) * max(np.float32(1.0), abs(low)))
    return edges.tolist()


def _rows_batch(
    enc: Encoded,
    rows: np.ndarray,
    rng: np.random.Generator | None,
    cold_rate: float,
    spec: ModelSpec,
    cold_entity_rate: float = 0.0,
):
    """Inputs for a batch of impressions, each with its own context row (cand_ctx = arange); with `rng`,
    some rows as an unknown user would send them, and some as if their candidate were new."""
    x = enc.inputs
    req = x["cand_ctx"][rows]
    ctx_ids = x["ctx_ids"][req].copy()
    dense = x["cand_dense"][rows].copy()
    cand_text = None
    length = spec.architecture.history_length
    hist = x["ctx_hist"][req, :length].copy()
    hist_kind = x["ctx_hist_kind"][req, :length].copy()
    if rng is not None and cold_rate > 0:
        cold = rng.random(len(rows)) < cold_rate
        ctx_ids[cold, 2] = 0
        ctx_ids[cold, 4] = 0
        dense[np.ix_(cold, _PERSONAL_DENSE)] = 0.0
        hist[cold] = 0
        hist_kind[cold] = 0
        if "cand_text" in x:
            cand_text = x["cand_text"][rows].copy()
            cand_text[cold, -1] = 0.0  # the similarity to the user's history: none for an unknown user
    cand_ids = x["cand_ids"][rows]
    if rng is not None and cold_entity_rate > 0:
        new = rng.random(len(rows)) < cold_entity_rate
        cand_ids = cand_ids.copy()
        cand_ids[new, 0] = 0
        dense[np.ix_(new, _ENGAGEMENT_DENSE)] = 0.0
    batch = {
        "ctx_ids": ctx_ids,
        "ctx_query": x["ctx_query"][req],
        "cand_ids": cand_ids,
        "cand_genres": x["cand_genres"][rows],
        "cand_dense": dense,
        "cand_ctx": np.arange(len(rows), dtype=np.int64),
        "ctx_hist": hist,
        "ctx_hist_kind": hist_kind,
        "cand_text": cand_text if cand_text is not None else x["cand_text"][rows],
    }
    return [torch.from_numpy(batch[k]) for k in spec.input_names()]


@torch.no_grad()
def predict(model: UnifiedRanker, enc: Encoded, batch_size: int = 8192) -> np.ndarray:
    model.eval()
    out = np.empty(len(enc), np.float32)
    for s in range(0, len(enc), batch_size):
        rows = np.arange(s, min(s + batch_size, len(enc)))
        out[rows] = torch.sigmoid(model.logits(*_rows_batch(enc, rows, None, 0.0, model.spec))).numpy()
    return out


def _logloss(p: np.ndarray, y: np.ndarray) -> float:
    p = np.clip(p, 1e-6, 1 - 1e-6)
    return float(-(y * np.log(p) + (1 - y) * np.log(1 - p)).mean())


def _validation_logloss(model: UnifiedRanker, val: Encoded | EncodedChunks) -> float:
    if isinstance(val, Encoded):
        return _logloss(predict(model, val), val.labels)
    total = sum(_logloss(predict(model, part), part.labels) * len(part) for part in val)
    return total / max(len(val), 1)


def _chunk_groups(fit: Encoded | EncodedChunks, rng: np.random.Generator, buffer: int) -> list[np.ndarray]:
    """One epoch's groups of chunks on disk: the chunks in a shuffled order, `buffer` at a time (in
    memory: one group, the whole split)."""
    if isinstance(fit, Encoded):
        return [np.zeros(1, np.int64)]
    chunks = rng.permutation(len(fit.files))
    return [chunks[s : s + buffer] for s in range(0, len(chunks), buffer)]


def _group_rows(fit: Encoded | EncodedChunks, group: np.ndarray) -> int:
    return len(fit) if isinstance(fit, Encoded) else sum(fit.file_rows[int(i)] for i in group)


def _epoch_parts(fit: Encoded | EncodedChunks, groups: list[np.ndarray], rng: np.random.Generator, by_request: bool):
    """(rows, their order) for one epoch, a group of chunks at a time, each group shuffled (a shuffle
    buffer of a few time slices; in memory: the whole split, shuffled)."""
    for group in groups:
        part = fit if isinstance(fit, Encoded) else concat_encoded([fit.load(int(i)) for i in group])
        yield part, _epoch_order(part, rng, by_request)


def _epoch_order(enc: Encoded, rng: np.random.Generator, by_request: bool) -> np.ndarray:
    """Row order of one epoch: shuffled rows, or shuffled requests with their rows kept together."""
    order = rng.permutation(len(enc))
    if not by_request:
        return order
    request = enc.inputs["cand_ctx"]
    request_rank = rng.permutation(int(request.max()) + 1)
    return order[np.argsort(request_rank[request[order]], kind="stable")]


def listwise_loss(logits: torch.Tensor, labels: torch.Tensor, request: torch.Tensor) -> torch.Tensor:
    """Mean over the requests with a click of -sum(y_i * log softmax(s)_i) / sum(y): softmax taken over
    each request's rows in the batch (a request cut by a batch border counts as two shorter lists)."""
    group = torch.unique(request, return_inverse=True)[1]
    n = int(group.max()) + 1
    top = torch.full((n,), -torch.inf).scatter_reduce(0, group, logits.detach(), "amax")
    lse = top + torch.log(torch.zeros(n).index_add(0, group, torch.exp(logits - top[group])))
    positives = torch.zeros(n).index_add(0, group, labels)
    loss = torch.zeros(n).index_add(0, group, labels * (lse[group] - logits))
    has = positives > 0
    if not has.any():
        return logits.sum() * 0.0
    return (loss[has] / positives[has]).mean()


def config_from_dict(d: dict) -> TrainConfig:
    """A TrainConfig back from `asdict` (the manifest's `train_config`, a distributed run's argument)."""
    nested = {"architecture": Architecture(**d["architecture"]), "options": ModelOptions(**d["options"])}
    return TrainConfig(**(d | nested | {"tasks": tuple(d["tasks"])}))


class _Heads(torch.nn.Module):
    """The training forward (both heads' logits) as a module's forward, which DDP needs to sync gradients."""

    def __init__(self, model: UnifiedRanker):
        super().__init__()
        self.model = model

    def forward(self, *inputs):
        return self.model.heads(*inputs)


@dataclass(frozen=True)
class _Sharing:
    """How the processes share the fit rows. One process (`world` 1) takes every row. Inside
    torch.distributed, every process walks the same permutation of the fit rows and takes its slice of
    each batch (so a step sees what one process's step would); `sharded`, each rank holds only its own
    share and walks its own shuffle, `batch_size / world` rows a step."""

    rank: int = 0
    world: int = 1
    sharded: bool = False

    @property
    def distributed(self) -> bool:
        return self.world > 1

    @property
    def own_rows(self) -> bool:
        return self.sharded and self.world > 1

    def generators(self, seed: int) -> tuple[np.random.Generator, np.random.Generator]:
        """(cold-start draws, row order): one generator for both on one process; distributed, the order
        is the same on every rank (its own on a sharded one) and the draws are each rank's own."""
        rng = np.random.default_rng(seed)
        if not self.distributed:
            return rng, rng
        order = np.random.default_rng([seed, self.rank, 1]) if self.sharded else np.random.default_rng(seed)
        return np.random.default_rng([seed, self.rank]), order

    def step_rows(self, batch_size: int) -> int:
        return -(-batch_size // self.world) if self.sharded else batch_size

    def steps(self, local_steps: int) -> int:
        """Every rank takes as many steps as the smallest share gives (DDP steps together)."""
        return _all_reduce_min(local_steps) if self.own_rows else local_steps

    def rows_of(self, rows: np.ndarray) -> np.ndarray | None:
        """This process's rows of a batch; None: a last batch too small to share, skipped by every rank."""
        if not self.distributed or self.sharded:
            return rows
        return np.array_split(rows, self.world)[self.rank] if len(rows) >= self.world else None

    def wrap(self, heads: torch.nn.Module) -> torch.nn.Module:
        if not self.distributed:
            return heads
        from torch.nn.parallel import DistributedDataParallel

        return DistributedDataParallel(heads)  # broadcasts rank 0's initial parameters

    def validation(self, model: UnifiedRanker, val_enc: Encoded | EncodedChunks) -> float:
        """Rank 0's validation loss, on every rank (it decides early stopping)."""
        val = _validation_logloss(model, val_enc) if self.rank == 0 else 0.0
        return _broadcast(val) if self.distributed else val


class _EarlyStopping:
    """Keeps the parameters of the best validation loss; stops after `patience` epochs without one."""

    def __init__(self, patience: int):
        self.patience = patience
        self.best, self.best_state, self.bad = float("inf"), None, 0

    def stop(self, val: float, model: torch.nn.Module) -> bool:
        if val < self.best - 1e-4:
            self.best, self.bad = val, 0
            self.best_state = {k: v.detach().clone() for k, v in model.state_dict().items()}
            return False
        self.bad += 1
        return self.bad > self.patience


@dataclass
class _Step:
    """One optimisation step's fixed parts: the model's heads, its optimiser and how the loss is made."""

    heads: torch.nn.Module
    opt: _Optimizer
    cfg: TrainConfig
    spec: ModelSpec
    sharing: _Sharing
    loss_fn: torch.nn.Module = field(default_factory=torch.nn.BCEWithLogitsLoss)

    def __call__(self, part: Encoded, rows: np.ndarray, labels, played, rng: np.random.Generator) -> float:
        """Trains on `rows` of `part`; returns the batch's summed loss."""
        cfg = self.cfg
        click, play = self.heads(*_rows_batch(part, rows, rng, cfg.cold_user_rate, self.spec, cfg.cold_entity_rate))
        loss = self.loss_fn(click, labels[rows])
        if cfg.listwise_weight > 0:
            request = torch.from_numpy(part.inputs["cand_ctx"][rows])
            loss = loss + cfg.listwise_weight * listwise_loss(click, labels[rows], request)
        if play is not None:  # P(play | click): learned on the clicked rows only
            clicked = labels[rows] > 0
            if clicked.any():
                loss = loss + self.loss_fn(play[clicked], played[rows][clicked])
            elif self.sharing.distributed:  # DDP needs a gradient for every parameter on every rank
                loss = loss + 0.0 * play.sum()
        self.opt.zero_grad()
        loss.backward()
        self.opt.step()
        return loss.item() * len(rows)


def _train_epoch(
    step: _Step,
    fit_enc: Encoded | EncodedChunks,
    rngs: tuple[np.random.Generator, np.random.Generator],
    shuffle_buffer: int,
    epoch: int,
) -> tuple[float, int]:
    """One pass over the fit rows (on disk: `shuffle_buffer` chunks at a time); (summed loss, rows seen)."""
    rng, order_rng = rngs
    sharing, step_rows = step.sharing, step.sharing.step_rows(step.cfg.batch_size)
    groups = _chunk_groups(fit_enc, order_rng, shuffle_buffer)
    steps = sharing.steps(sum(-(-_group_rows(fit_enc, g) // step_rows) for g in groups))
    bar = tqdm(total=steps, desc=f"epoch {epoch}", unit="batch", leave=False, disable=sharing.rank > 0)
    total, seen, taken = 0.0, 0, 0
    for part, order in _epoch_parts(fit_enc, groups, order_rng, step.cfg.listwise_weight > 0):
        if taken >= steps:
            break
        labels = torch.from_numpy(part.labels)
        played = torch.from_numpy(part.played.astype(np.float32))
        for s in range(0, len(order), step_rows):
            if taken >= steps:
                break
            taken += 1
            bar.update()
            rows = sharing.rows_of(order[s : s + step_rows])
            if rows is None:
                continue
            total += step(part, rows, labels, played, rng)
            seen += len(rows)
        if not isinstance(fit_enc, Encoded):  # on disk: let go of this part before the next is read
            del part, order, labels, played
            memory.release()
    bar.close()
    return total, seen


def fit(
    tables: FeatureTables,
    fit_enc: Encoded | EncodedChunks,
    val_enc: Encoded | EncodedChunks,
    cfg: TrainConfig,
    log=print,
    rank: int = 0,
    world: int = 1,
    shuffle_buffer: int = 2,
    sharded: bool = False,
) -> tuple[UnifiedRanker, dict]:
    """The model fitted on `fit_enc`, early-stopped on `val_enc`, and its training history. With `world` >
    1 (inside torch.distributed) the processes share the rows as `_Sharing` says (`sharded`: each rank
    holds only its own share; `val_enc` is needed on rank 0 only) and DDP averages the gradients; an
    epoch of a sharded run leaves out the few rows by which a share exceeds the smallest, different ones
    each epoch. Splits on disk (`EncodedChunks`) are walked `shuffle_buffer` chunks at a time."""
    torch.manual_seed(cfg.seed)
    torch.set_num_threads(cfg.threads)
    sharing = _Sharing(rank, world, sharded)
    rngs = sharing.generators(cfg.seed)
    spec = make_spec(tables, fit_enc, cfg, sharded=sharing.own_rows)
    model = UnifiedRanker(spec)
    sparse = sparse_embeddings(cfg, spec)
    opt = _Optimizer(model, cfg, sparse)  # before DDP wraps the model: it reads which gradients are sparse
    step = _Step(sharing.wrap(_Heads(model)), opt, cfg, spec, sharing)
    stopping, history = _EarlyStopping(cfg.patience), []
    for epoch in range(1, cfg.epochs + 1):
        model.train()
        started = time.perf_counter()
        total, seen = _train_epoch(step, fit_enc, rngs, shuffle_buffer, epoch)
        seconds = time.perf_counter() - started
        val = sharing.validation(model, val_enc)
        rows_s = seen * world / seconds
        record = {"epoch": epoch, "train_logloss": total / seen, "val_logloss": val, "seconds": seconds}
        history.append(record | {"rows_per_s": rows_s})
        log(
            f"epoch {epoch}: train logloss {total / seen:.4f}  val logloss {val:.4f}  "
            f"({seconds:.1f}s, {len(fit_enc)} rows, {rows_s:.0f} rows/s{f', {world} processes' if world > 1 else ''})"
        )
        if stopping.stop(val, model):
            log(f"early stop after epoch {epoch}")
            break
    model.load_state_dict(stopping.best_state)
    model.sparse_id_tables(False)
    model.eval()
    return model, {"epochs": history, "best_val_logloss": stopping.best, "sparse_embeddings": sparse}


def _all_reduce_min(value: int) -> int:
    import torch.distributed as dist

    tensor = torch.tensor([value], dtype=torch.int64)
    dist.all_reduce(tensor, op=dist.ReduceOp.MIN)
    return int(tensor.item())


def _broadcast(value: float) -> float:
    import torch.distributed as dist

    tensor = torch.tensor([value], dtype=torch.float64)
    dist.broadcast(tensor, 0)
    return float(tensor.item())


def train_bundle(
    data_dir: Path | str,
    out: Path | str,
    cfg: TrainConfig,
    log=print,
    chunk_rows: int = CHUNK_ROWS,
    in_memory_rows: int = IN_MEMORY_ROWS,
) -> dict:
    """Everything `unirank train` does; returns the manifest. A log of more than `in_memory_rows` events
    is trained out of core, in time slices of about `chunk_rows` rows (`train_out_of_core`)."""
    from model_export.evaluate import evaluate_bundle
    from model_export.export import export_bundle, record_metrics

    if count_events(data_dir) > in_memory_rows:
        return train_out_of_core(data_dir, out, cfg, log, chunk_rows)
    started = time.perf_counter()
    dataset = Dataset.load(data_dir)
    log(f"loaded {dataset.events.num_rows} events, {dataset.entities.num_rows} entities")
    tables = build_tables(
        dataset.entities, dataset.split("feature"), dataset.events, seed=cfg.seed, text=cfg.options.text_features
    )
    encoder = FeatureEncoder(tables, cfg.personalization)
    clicks = click_log(encoder, dataset) if personalization_rank(cfg.personalization) >= 2 else None
    fit_enc = encode_split(encoder, dataset, "fit", cfg.tasks, cfg.impute, clicks)
    val_enc = encode_split(encoder, dataset, "validation", cfg.tasks, cfg.impute, clicks)
    log(f"encoded fit {len(fit_enc)} rows, validation {len(val_enc)} rows in {time.perf_counter() - started:.1f}s")
    model, training = fit(tables, fit_enc, val_enc, cfg, log)
    summary = {
        "events": dataset.events.num_rows,
        "entities": dataset.entities.num_rows,
        "rows": {s: int(dataset.split(s).num_rows) for s in ("feature", "fit", "validation", "test")},
        "tasks": list(cfg.tasks),
    }
    manifest = export_bundle(model, tables, val_enc, out, cfg, training, summary)
    metrics = evaluate_bundle(out, data_dir)
    manifest = record_metrics(out, metrics)
    log(f"bundle {manifest['version']} written to {out} in {time.perf_counter() - started:.1f}s")
    return manifest


def out_of_core_tables(source: EventLog, cfg: TrainConfig) -> tuple[FeatureTables, tuple | None]:
    """One pass over the log, a slice at a time: the feature tables (the same as in memory: their
    statistics are sums) and, from `full` personalization up, the click log (four integers per click)."""
    v = Vocabularies.of(source.entities, source.countries, source.users)
    stats, clicks = WindowStatistics(v), ClickLog(v)
    for split in SPLIT_BOUNDS:
        for chunk in tqdm(
            source.chunks(split), desc=f"statistics: {split}", total=len(source.slices(split)), unit="slice"
        ):
            clicks.add(chunk)
            if split == "feature":
                stats.add(chunk)
    tables = tables_from(source.entities, v, stats, clicks, seed=cfg.seed, text=cfg.options.text_features)
    return tables, clicks.arrays() if personalization_rank(cfg.personalization) >= 2 else None


def request_share(events: pa.Table, rank: int, world: int) -> pa.Table:
    """This rank's share of a slice's requests: every `world`-th request, counted by first appearance
    (whole requests, so a listwise loss still sees each request's impressions together)."""
    if world == 1:
        return events
    codes = pc.dictionary_encode(events.column("request_id").combine_chunks()).indices.to_numpy()
    return events.filter(pa.array(codes % world == rank))


def encode_out_of_core(
    encoder: FeatureEncoder,
    source: EventLog,
    split: str,
    cfg: TrainConfig,
    clicks: tuple | None,
    directory: Path,
    rank: int = 0,
    world: int = 1,
) -> EncodedChunks:
    """A split encoded a time slice at a time to files in `directory` (with `world` > 1: this rank's share
    of each slice's requests)."""
    encoded = EncodedChunks(directory)
    desc = f"encoding: {split}" + (f" (rank {rank}'s share)" if world > 1 else "")
    for chunk in tqdm(source.chunks(split), desc=desc, total=len(source.slices(split)), unit="slice", disable=rank > 0):
        enc = encode_events(encoder, request_share(chunk, rank, world), cfg.tasks, cfg.impute, clicks)
        if len(enc):
            encoded.append(enc)
        del chunk, enc
        memory.release()
    return encoded


def train_out_of_core(
    data_dir: Path | str, out: Path | str, cfg: TrainConfig, log=print, chunk_rows: int = CHUNK_ROWS
) -> dict:
    """`train_bundle` for a log that need not fit in memory. The log is read a time slice of about
    `chunk_rows` rows at a time (`EventLog`): one pass builds the feature tables (`out_of_core_tables`), the
    fit and validation windows are encoded slice by slice to files in a temporary directory, training
    walks them two slices at a time in a shuffled order (a shuffle buffer instead of one permutation of
    the whole window), and the test window is evaluated slice by slice. Memory holds the tables, the
    click log, a slice or two and the model, whatever the log's size."""
    from model_export.evaluate import evaluate_bundle
    from model_export.export import export_bundle, record_metrics

    started = time.perf_counter()
    source = EventLog(data_dir, chunk_rows)
    log(
        f"scanned {source.rows} events ({len(source.users)} users), {source.entities.num_rows} entities: "
        f"out of core, time slices of about {chunk_rows} rows"
    )
    tables, click_rows = out_of_core_tables(source, cfg)
    memory.release()
    encoder = FeatureEncoder(tables, cfg.personalization)
    with tempfile.TemporaryDirectory(prefix="unirank-train-") as work:
        encoded = {
            split: encode_out_of_core(encoder, source, split, cfg, click_rows, Path(work) / split)
            for split in ("fit", "validation")
        }
        log(
            f"encoded fit {len(encoded['fit'])} rows in {len(encoded['fit'].files)} slices, validation "
            f"{len(encoded['validation'])} rows in {time.perf_counter() - started:.1f}s"
        )
        model, training = fit(tables, encoded["fit"], encoded["validation"], cfg, log)
        summary = out_of_core_summary(source, cfg, len(encoded["fit"].files))
        manifest = export_bundle(model, tables, encoded["validation"].load(0), out, cfg, training, summary)
    del model, tables, encoder, encoded
    memory.release()  # the evaluation loads the bundle's own tables and model
    metrics = evaluate_bundle(out, data_dir, source=source, clicks=click_rows)
    manifest = record_metrics(out, metrics)
    log(f"bundle {manifest['version']} written to {out} in {time.perf_counter() - started:.1f}s")
    return manifest


def out_of_core_summary(source: EventLog, cfg: TrainConfig, fit_slices: int) -> dict:
    """The manifest's `training_data` of a run out of core."""
    return {
        "events": source.rows,
        "entities": source.entities.num_rows,
        "rows": {s: source.split_rows(s) for s in SPLIT_BOUNDS},
        "tasks": list(cfg.tasks),
        "out_of_core": {"chunk_rows": source.chunk_rows, "fit_slices": fit_slices},
    }
