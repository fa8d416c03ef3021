"""Encoding whole splits of a dataset with the shared feature code, for training and offline evaluation."""

from __future__ import annotations

from collections.abc import Iterator
from dataclasses import dataclass
from pathlib import Path

import numpy as np
import pyarrow as pa
import pyarrow.compute as pc

from model_export.data import Dataset, Requests
from unirank.core.context import build_context, personalization_rank
from unirank.core.features import FeatureEncoder, history_matrices, history_vectors
from unirank.core.history import event_kinds
from unirank.core.vocab import TASKS

_TASKS = np.array(sorted(TASKS))
ENCODED_HISTORY = 20  # history events per context kept in the encoded splits (the encoder's maximum)


@dataclass
class Encoded:
    """One split, encoded: per-request contexts and per-impression candidates (cand_ctx -> request)."""

    inputs: dict[str, np.ndarray]
    labels: np.ndarray
    played: np.ndarray
    row_task: np.ndarray
    requests: Requests | None  # None: read back from disk (`EncodedChunks`)

    def __len__(self) -> int:
        return len(self.labels)


def encode_split(
    encoder: FeatureEncoder, dataset: Dataset, split: str, tasks=None, impute: bool = True, clicks: tuple | None = None
) -> Encoded:
    """Encode a split exactly as the service would, request by request, but vectorised."""
    if personalization_rank(encoder.level) >= 2:
        clicks = clicks or click_log(encoder, dataset)
    return encode_events(encoder, dataset.split(split), tasks, impute, clicks)


def encode_events(
    encoder: FeatureEncoder, events: pa.Table, tasks=None, impute: bool = True, clicks: tuple | None = None
) -> Encoded:
    """Encode whole requests of a log (a split, or a time slice of one); `clicks` (`click_log`) is needed
    from `full` personalization up."""
    if tasks is not None:
        events = events.filter(pc.is_in(events.column("task"), value_set=pa.array(list(tasks))))
    req = Requests.from_events(events)
    t = encoder.tables
    contexts = [
        build_context(task, country, user, query, source, t.title_of, impute=impute)
        for task, country, user, query, source in zip(
            req.task, req.country, req.user_id, req.query, req.source_entity_id, strict=True
        )
    ]
    hist = hist_text = None
    if personalization_rank(encoder.level) >= 2:
        req_user = np.fromiter((t.user_index.get(u, 0) for u in req.user_id), np.int64)
        # only these requests' users' clicks: the same windows, at the cost of the slice, not of the log
        mine = np.isin(clicks[0], np.unique(req_user))
        clicks = clicks if mine.all() else tuple(c[mine] for c in clicks)
        hist = history_vectors(t, clicks[0], clicks[1], clicks[2], req_user, req.timestamp)
        if encoder.text:
            hist_text = history_vectors(t, clicks[0], clicks[1], clicks[2], req_user, req.timestamp, t.text_vec)
        seq = history_matrices(*clicks, req_user, req.timestamp, ENCODED_HISTORY)
    else:
        seq = (np.zeros((len(contexts), ENCODED_HISTORY), np.int64),) * 2
    ctx = encoder.encode_contexts(contexts, hist, hist_text=hist_text, recent=seq)
    cand = encoder.entity_indices(req.target_entity_id)
    inputs = encoder.encode_candidates(ctx, cand, req.row_request)
    inputs["ctx_hist"], inputs["ctx_hist_kind"] = seq
    return Encoded(inputs, req.clicked, req.played, req.task[req.row_request], req)


class EncodedChunks:
    """An encoded split kept on disk, a chunk (whole requests) per file: what training and validation read
    when the split does not fit in memory. `len()` counts rows; iterating loads one chunk at a time."""

    def __init__(self, directory: Path):
        self.directory = directory
        directory.mkdir(parents=True, exist_ok=True)
        self.files: list[Path] = []
        self.file_rows: list[int] = []
        self.rows = 0

    def append(self, enc: Encoded) -> None:
        path = self.directory / f"chunk-{len(self.files):05d}.npz"
        arrays = {f"x_{k}": v for k, v in enc.inputs.items()}
        task = np.searchsorted(_TASKS, enc.row_task.astype(str)).astype(np.int8)
        np.savez(path, labels=enc.labels, played=enc.played, row_task=task, **arrays)
        self.files.append(path)
        self.file_rows.append(len(enc))
        self.rows += len(enc)

    def load(self, i: int) -> Encoded:
        with np.load(self.files[i]) as z:
            inputs = {k[2:]: z[k] for k in z.files if k.startswith("x_")}
            return Encoded(inputs, z["labels"], z["played"], _TASKS.astype(object)[z["row_task"]], None)

    def __len__(self) -> int:
        return self.rows

    def __iter__(self) -> Iterator[Encoded]:
        return (self.load(i) for i in range(len(self.files)))


def concat_encoded(parts: list[Encoded]) -> Encoded:
    """Chunks as one encoded split (their contexts renumbered)."""
    if len(parts) == 1:
        return parts[0]
    offsets = np.cumsum([0] + [p.inputs["ctx_ids"].shape[0] for p in parts[:-1]])
    inputs = {}
    for k in parts[0].inputs:
        if k == "cand_ctx":
            inputs[k] = np.concatenate([p.inputs[k] + o for p, o in zip(parts, offsets, strict=True)])
        else:
            inputs[k] = np.concatenate([p.inputs[k] for p in parts])
    return Encoded(
        inputs,
        np.concatenate([p.labels for p in parts]),
        np.concatenate([p.played for p in parts]),
        np.concatenate([p.row_task for p in parts]),
        None,
    )


def click_log(encoder: FeatureEncoder, dataset: Dataset) -> tuple[np.ndarray, np.ndarray, np.ndarray]:
    """(user index, timestamp ms, entity index, event kind) of every click in the log, for history features."""
    clicks = dataset.events.filter(pc.field("clicked"))
    t = encoder.tables
    users = np.fromiter((t.user_index.get(u, 0) for u in clicks.column("user_id").to_pylist()), np.int64)
    ents = encoder.entity_indices(clicks.column("target_entity_id").to_pylist())
    kinds = event_kinds(
        clicks.column("task").to_numpy(zero_copy_only=False), clicks.column("played").to_numpy(zero_copy_only=False)
    )
    return users, clicks.column("timestamp").cast(pa.int64()).to_numpy(), ents, kinds
