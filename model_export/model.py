"""The unified contextual ranker (UniCoRn) in torch: P(engagement | context, target entity).

Contract: `UnifiedRanker(spec)` takes the inputs `spec.input_names()` names and returns P(click) per
candidate ("score"), plus P(play) with the play head; the shape comes from `unirank.core.spec`
alone, which the service and the benchmark read too. docs/model.md describes the network and the
research options.
"""

from __future__ import annotations

import math

import torch
from torch import nn

from unirank.core.context import N_TASKS
from unirank.core.features import DENSE_FEATURES
from unirank.core.history import HISTORY_KINDS
from unirank.core.lexical import LEXICAL_FEATURES
from unirank.core.recency import RECENCY_FEATURES
from unirank.core.spec import ModelSpec
from unirank.core.tables import KINDS
from unirank.core.text import TOKEN_BUCKETS


class CrossLayer(nn.Module):
    """DCN-v2: x_{l+1} = x0 * (W x_l + b) + x_l, with W = U V of rank `rank` when rank > 0
    (the per-candidate cost falls from width^2 to 2 width rank)."""

    def __init__(self, dim: int, rank: int = 0):
        super().__init__()
        if 0 < rank < dim // 2:
            self.linear = nn.Sequential(nn.Linear(dim, rank, bias=False), nn.Linear(rank, dim))
        else:
            self.linear = nn.Linear(dim, dim)

    def forward(self, x0: torch.Tensor, x: torch.Tensor) -> torch.Tensor:
        return x0 * self.linear(x) + x


class ResidualBlock(nn.Module):
    def __init__(self, dim: int, hidden: int):
        super().__init__()
        self.net = nn.Sequential(nn.LayerNorm(dim), nn.Linear(dim, hidden), nn.ReLU(), nn.Linear(hidden, dim))

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        return x + self.net(x)


class AspectGate(nn.Module):
    """S&R Foundation model: per task, a softmax over the ID, text and sparse aspects (x3, so 1 each at
    the start) scales their feature groups; the context groups pass unchanged."""

    def __init__(self, groups: list[int], aspects: list[int]):
        super().__init__()
        self.logits = nn.Embedding(N_TASKS, 3)
        nn.init.zeros_(self.logits.weight)
        self.register_buffer("column_aspect", _column_labels(aspects, groups))

    def forward(self, task: torch.Tensor) -> torch.Tensor:
        """(B,) task ids -> (B, width) scale of each column of the per-candidate vector."""
        weights = 3 * torch.softmax(self.logits(task), -1)
        scale = torch.cat([torch.ones_like(weights[:, :1]), weights], 1)  # aspect 0: context, unscaled
        return scale.index_select(1, self.column_aspect)


def _column_labels(labels: list[int], widths: list[int]) -> torch.Tensor:
    """Each column of the per-candidate vector labelled with its group's label (for gathering scales)."""
    return torch.repeat_interleave(torch.tensor(labels), torch.tensor(widths))


class TaskGate(nn.Module):
    """Scenario-conditioned feature scaling: per task, a factor in (0, 2) for each feature group."""

    def __init__(self, dim: int, groups: list[int]):
        super().__init__()
        self.gate = nn.Linear(dim, len(groups))
        nn.init.zeros_(self.gate.weight)
        nn.init.zeros_(self.gate.bias)  # starts as the identity (2 * sigmoid(0) = 1)
        self.register_buffer("column_group", _column_labels(list(range(len(groups))), groups))

    def forward(self, task: torch.Tensor) -> torch.Tensor:
        """(B, dim) task embeddings -> (B, width) scale of each column of the per-candidate vector."""
        return (2 * torch.sigmoid(self.gate(task))).index_select(1, self.column_group)


class HistoryEncoder(nn.Module):
    """Self-attention over a context's history events, then attention from each candidate's entity."""

    def __init__(self, entity: nn.Embedding, dim: int, length: int):
        super().__init__()
        self.entity = entity  # shared with the source and target entities
        self.kind = nn.Embedding(HISTORY_KINDS, dim)
        self.position = nn.Parameter(torch.zeros(length, dim))
        self.qkv = nn.Linear(dim, 3 * dim)
        self.out = nn.Linear(dim, dim)
        self.norm = nn.LayerNorm(dim)
        self.target = nn.Linear(dim, dim)
        self.scale = 1.0 / math.sqrt(dim)

    def encode(self, hist: torch.Tensor, kind: torch.Tensor) -> tuple[torch.Tensor, torch.Tensor]:
        """(B, H) ids -> (B, H, dim) encoded events and the (B, H) 0/1 mask of real events."""
        mask = (hist > 0).to(self.position.dtype)
        x = self.entity(hist) + self.kind(kind) + self.position
        q, k, v = self.qkv(x).chunk(3, -1)
        scores = q @ k.transpose(1, 2) * self.scale + (mask.unsqueeze(1) - 1.0) * 1e4
        return self.norm(x + self.out(torch.softmax(scores, -1) @ v)), mask

    def attend(
        self, encoded: torch.Tensor, mask: torch.Tensor, target: torch.Tensor, cand_ctx: torch.Tensor
    ) -> torch.Tensor:
        """(N, dim): each candidate's attention-weighted summary of its context's history (0 when empty)."""
        h, m = encoded.index_select(0, cand_ctx), mask.index_select(0, cand_ctx)
        scores = (h @ self.target(target).unsqueeze(-1)).squeeze(-1) * self.scale + (m - 1.0) * 1e4
        weights = torch.softmax(scores, -1) * m.amax(-1, keepdim=True)
        return (weights.unsqueeze(1) @ h).squeeze(1)  # a batched matmul: no (N, H, dim) product in memory


class MMoE(nn.Module):
    """Shared experts, one softmax gate per task over them, and one logit head per task.

    Each expert is a residual block; since the gates sum to one, mixing the blocks' outputs is the input
    plus the mixed expert branches, so the experts share one input norm (their affine parts fold into
    their first layers), all first layers run as one matmul, and one norm follows the mixture."""

    def __init__(self, width: int, hidden: int, experts: int):
        super().__init__()
        self.norm = nn.LayerNorm(width)
        self.up = nn.Linear(width, hidden * experts)  # every expert's first layer
        self.down = nn.ModuleList(nn.Linear(hidden, width) for _ in range(experts))
        self.out_norm = nn.LayerNorm(width)
        self.gates = nn.Linear(width, experts * N_TASKS)
        self.heads = nn.Linear(width, N_TASKS)
        nn.init.normal_(self.heads.weight, std=0.02)
        nn.init.zeros_(self.heads.bias)
        self.n, self.hidden = experts, hidden

    def forward(self, x: torch.Tensor, task: torch.Tensor) -> tuple[torch.Tensor, torch.Tensor]:
        """(the task's mixture of experts (N, width), the task's logit (N,))"""
        h = torch.relu(self.up(self.norm(x)))
        gates = self.gates(x).reshape(-1, N_TASKS, self.n)
        gate = torch.softmax(torch.gather(gates, 1, task.reshape(-1, 1, 1).expand(-1, 1, self.n)).squeeze(1), -1)
        mixed = x
        for e, down in enumerate(self.down):
            mixed = mixed + gate[:, e : e + 1] * down(h[:, e * self.hidden : (e + 1) * self.hidden])
        mixed = self.out_norm(mixed)
        return mixed, torch.gather(self.heads(mixed), 1, task.reshape(-1, 1)).squeeze(1)


class PiecewiseLinear(nn.Module):
    """Numeric features as piecewise-linear encodings (Gorishniy et al., "On Embeddings for Numerical Features
    in Tabular Deep Learning", NeurIPS 2022): for bin t of feature f with edges [lo, hi), how far x is
    through it, clipped to [0, 1] (so a value reads as 1, ..., 1, a fraction, 0, ..., 0); then each feature's
    own linear map to `dim` columns and a ReLU. The edges are quantiles of the fit window (in the bundle):
    a learned, thresholded view of popularity, counts and match scores, as a GBDT's splits are."""

    def __init__(self, edges: list[list[float]], dim: int):
        super().__init__()
        e = torch.tensor(edges, dtype=torch.float32)  # (F, T + 1)
        self.register_buffer("low", e[:, :-1])
        self.register_buffer("inv_width", 1.0 / (e[:, 1:] - e[:, :-1]))
        features, bins = self.low.shape
        self.weight = nn.Parameter(torch.randn(features, bins, dim) / math.sqrt(bins))
        self.bias = nn.Parameter(torch.zeros(features, dim))

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        """(N, F) raw values -> (N, F * dim)."""
        encoded = ((x.unsqueeze(-1) - self.low) * self.inv_width).clamp(0.0, 1.0)  # (N, F, T)
        mapped = torch.matmul(encoded.transpose(0, 1), self.weight).transpose(0, 1) + self.bias  # (N, F, dim)
        return torch.relu(mapped).reshape(x.shape[0], -1)


def _bag(table: nn.Embedding, ids: torch.Tensor) -> torch.Tensor:
    """Mean of non-padding embeddings (id 0 is padding); written out so it exports to plain ONNX ops.
    For the query's tokens: one row per context."""
    return (_bag_weights(ids, table).unsqueeze(1) @ table(ids)).squeeze(1)  # a batched matmul


def _candidate_bag(table: nn.Embedding, ids: torch.Tensor) -> torch.Tensor:
    """`_bag` for one row per candidate (the genres), as a sum of weighted columns: onnxruntime's CPU MatMul
    of N (1 x 3) @ (3 x dim) products, or a ReduceSum over the middle axis, costs per candidate about
    what the model's 64 x 164 layer does; a Mul and an Add per column a third of it. The same values bit
    for bit (tests/test_model.py); not for the query's tokens, whose 8-term sums round differently and
    run once per context anyway."""
    rows, weights = table(ids), _bag_weights(ids, table)
    bag = rows[:, 0] * weights[:, :1]
    for k in range(1, ids.shape[1]):
        bag = bag + rows[:, k] * weights[:, k : k + 1]
    return bag


def _bag_weights(ids: torch.Tensor, table: nn.Embedding) -> torch.Tensor:
    mask = (ids > 0).to(table.weight.dtype)
    return mask / mask.sum(1, keepdim=True).clamp(min=1.0)


class UnifiedRanker(nn.Module):
    def __init__(self, spec: ModelSpec):
        super().__init__()
        self.spec = spec
        arch, options, vocab = spec.architecture, spec.options, spec.vocabulary
        self.arch, self.options = arch, options
        d = arch.dim
        self.task = nn.Embedding(N_TASKS, d)
        self.country = nn.Embedding(vocab.n_countries + 1, d)
        self.cluster = nn.Embedding(vocab.n_clusters + 1, d)
        self.entity = nn.Embedding(vocab.n_entities + 1, d)  # shared by source and target entities
        self.user = nn.Embedding(vocab.n_users + 1, d)
        self.token = nn.Embedding(TOKEN_BUCKETS, d, padding_idx=0)
        self.kind = nn.Embedding(len(KINDS) + 1, arch.kind_dim)
        self.genre = nn.Embedding(vocab.n_genres + 1, arch.genre_dim, padding_idx=0)
        for emb in (self.entity, self.user, self.token):
            nn.init.normal_(emb.weight, std=0.01)
        self.ctx_proj = nn.Sequential(nn.Linear(spec.context_width, arch.hidden), nn.ReLU())
        self.ctx_out = nn.Linear(arch.hidden, arch.ctx_dim + (d if arch.interaction else 0))
        self.register_buffer("dense_mean", torch.tensor(spec.dense_mean, dtype=torch.float32))
        self.register_buffer("dense_std", torch.tensor(spec.dense_std, dtype=torch.float32))
        self.numeric = PiecewiseLinear(spec.dense_edges, options.numeric_dim) if options.numeric_bins else None
        mask = None
        off = (LEXICAL_FEATURES if not options.lexical_features else ()) + (
            RECENCY_FEATURES if not options.recency_features else ()
        )
        if off:  # those columns read as zeros, whatever the input holds
            mask = torch.tensor([f not in off for f in DENSE_FEATURES], dtype=torch.float32)
        self.register_buffer("dense_mask", mask)
        width, groups = spec.width, spec.feature_groups()
        self.task_gate = TaskGate(d, groups) if options.task_gate else None
        self.cross = nn.ModuleList(CrossLayer(width, arch.cross_rank) for _ in range(arch.cross_layers))
        if options.mmoe_experts > 0:
            self.mmoe = MMoE(width, arch.expert_hidden, options.mmoe_experts)
        else:
            blocks = (ResidualBlock(width, arch.hidden) for _ in range(arch.mlp_blocks))
            self.mlp = nn.Sequential(*blocks, nn.LayerNorm(width))
            self.head = nn.Linear(width, 1)
        self.play = nn.Linear(width, 1) if options.play_head else None
        self.history = HistoryEncoder(self.entity, d, arch.history_length) if options.history_encoder else None
        if options.text_features:
            # the title vector (unless text_vector is off) and its cosines with the source and the history
            self.text = nn.Linear(spec.text_input_width, d)
            self.aspect_gate = AspectGate(groups, spec.feature_aspects())

    def sparse_id_tables(self, sparse: bool = True) -> list[nn.Parameter]:
        """Sets whether the id tables (entities, users, query tokens: the ones that grow with the data)
        give sparse gradients; returns their weights when they do."""
        tables = (self.entity, self.user, self.token)
        for table in tables:
            table.sparse = sparse
        return [t.weight for t in tables] if sparse else []

    def context(self, ctx_ids: torch.Tensor, ctx_query: torch.Tensor) -> torch.Tensor:
        task = self.task(ctx_ids[:, 0])
        if not self.arch.task_feature:
            task = torch.zeros_like(task)
        user = self.user(ctx_ids[:, 4])
        if not self.spec.user_embedding:
            user = torch.zeros_like(user)
        parts = [
            task,
            self.country(ctx_ids[:, 1]),
            self.cluster(ctx_ids[:, 2]),
            self.entity(ctx_ids[:, 3]),
            user,
            _bag(self.token, ctx_query),
        ]
        return self.ctx_out(self.ctx_proj(torch.cat(parts, dim=1)))

    def entity_side(self, entity: torch.Tensor, kind: torch.Tensor, genres: torch.Tensor) -> torch.Tensor:
        """(N, dim + kind_dim + genre_dim): what the network makes of a candidate alone — its id's
        embedding, its kind's and the bag of its genres' — from (N,) model entity ids, (N,) kinds and
        (N, 3) genre ids. The export computes it once per entity into a table the graph gathers from
        (`model_export.export`)."""
        return torch.cat([self.entity(entity), self.kind(kind), _candidate_bag(self.genre, genres)], 1)

    def heads(self, ctx_ids, ctx_query, cand_ids, cand_genres, cand_dense, cand_ctx, *optional):
        """Logits of P(click) and, with the play head, of P(play | click) (else None); one per candidate."""
        side = self.entity_side(cand_ids[:, 0], cand_ids[:, 1], cand_genres)
        return self.heads_from_side(ctx_ids, ctx_query, side, cand_dense, cand_ctx, *optional)

    def heads_from_side(self, ctx_ids, ctx_query, side, cand_dense, cand_ctx, *optional):
        """`heads` with each candidate's `entity_side` row given."""
        # split per context, then gathered per candidate: no (N, width) slice copies
        ctx = self.context(ctx_ids, ctx_query)
        if self.dense_mask is not None:
            cand_dense = cand_dense * self.dense_mask
        dense = (cand_dense - self.dense_mean) / self.dense_std
        if self.numeric is not None:  # the encodings beside the values: thresholds without losing the slope
            dense = torch.cat([dense, self.numeric(cand_dense)], 1)
        d = self.arch.dim
        entity = side[:, :d]
        parts = [ctx[:, : self.arch.ctx_dim].index_select(0, cand_ctx), entity]
        if self.arch.interaction:
            parts.append(ctx[:, self.arch.ctx_dim :].index_select(0, cand_ctx) * entity)
        parts += [side[:, d:], dense]  # the kind's embedding and the genres' bag, side by side
        optional = list(optional)  # in spec.input_names() order: history tensors, then text features
        if self.history is not None:
            ctx_hist, ctx_hist_kind = optional.pop(0), optional.pop(0)
            encoded, mask = self.history.encode(ctx_hist, ctx_hist_kind)
            parts.append(self.history.attend(encoded, mask, entity, cand_ctx))
        if self.options.text_features:
            text = optional.pop(0)
            parts.append(self.text(text if self.options.text_vector else text[:, -2:]))
        x0 = torch.cat(parts, 1)
        # The gates depend on the task only: computed per context (B rows), then one row gather per
        # candidate (a column gather per candidate costs more than the rest of the gated model).
        scale = None
        if self.options.text_features:
            scale = self.aspect_gate(ctx_ids[:, 0])
        if self.task_gate is not None:
            gate = self.task_gate(self.task(ctx_ids[:, 0]))
            scale = gate if scale is None else scale * gate
        if scale is not None:
            x0 = x0 * scale.index_select(0, cand_ctx)
        task = ctx_ids[:, 0].index_select(0, cand_ctx)
        x = x0
        for layer in self.cross:
            x = layer(x0, x)
        if self.options.mmoe_experts > 0:
            h, click = self.mmoe(x, task)
        else:
            h = self.mlp(x)
            click = self.head(h).squeeze(-1)
        play = self.play(h).squeeze(-1) if self.play is not None else None
        return click, play

    def logits(self, *inputs) -> torch.Tensor:
        return self.heads(*inputs)[0]

    def forward(self, *inputs):
        """Inputs in `spec.input_names()` order. P(click) in (0, 1) per candidate ("score"); with the play
        head also P(play) ("play")."""
        click, play = self.heads(*inputs)
        p_click = torch.sigmoid(click)
        if play is None:
            return p_click
        return p_click, p_click * torch.sigmoid(play)
