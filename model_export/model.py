"""The unified contextual ranker (UniCoRn): P(engagement | context, target entity).

Embeddings for every categorical feature (task, country, user cluster, source entity, user, query
tokens, target entity, kind, genres); the context tower runs once per context and is gathered for
each candidate (`cand_ctx`), then DCN-v2 cross layers and a residual MLP score each candidate.

Options from the related research, each off by default and a training flag:
- `task_gate` (USR): a gate from the task embedding scales each feature group of the candidate vector;
- `mmoe_experts` (UniSAR / MMoE): the MLP becomes shared experts mixed by one gate per task, with one
  output head per task;
- `history_encoder` (UniSAR): the user's last events (entity, and where each came from — search or a
  recommendation surface — and whether it was played) through one self-attention layer, so the
  transitions between search and recommendation are learnable, then attention from the target entity;
- `text_features` (S&R Foundation model): the title's MiniLM embedding (PCA-reduced, a table built at
  export) as a feature group, and an aspect gate — per task, a softmax over ID, text and sparse
  features — so entities with no engagement (a near-untrained ID embedding) rank by their text;
- `play_head` (USR's global labels): a second head for P(play | click); the model then outputs both
  P(click) ("score") and P(play) = P(click) x P(play | click) ("play"), trained on both labels.
"""

from __future__ import annotations

from dataclasses import asdict, dataclass

import torch
from torch import nn

import math

from model_export.features import CTX_IDS, DENSE_FEATURES, input_names
from model_export.tables import HISTORY_KINDS
from model_export.text_features import TEXT_DIM
from model_export.text import TOKEN_BUCKETS


@dataclass
class ModelSpec:
    n_countries: int
    n_clusters: int
    n_entities: int
    n_users: int
    n_genres: int
    dense_mean: list[float]
    dense_std: list[float]
    dim: int = 32
    ctx_dim: int = 64  # width of the context vector each candidate sees
    hidden: int = 64
    cross_layers: int = 2  # 0 turns feature crossing off (MLP only)
    cross_rank: int = 16  # low-rank cross layers (DCN-v2 "LowRank"); 0 = full rank
    mlp_blocks: int = 1
    task_feature: bool = True
    interaction: bool = True  # context (x) target entity element-wise product (GMF) as an input
    user_embedding: bool = True  # learned user representations (personalization "full")
    task_gate: bool = False
    mmoe_experts: int = 0  # 0: one shared MLP and head
    expert_hidden: int = 32  # hidden width of each MMoE expert (half the shared MLP's: 3 experts cost 1.5 of it)
    play_head: bool = False
    history_encoder: bool = False
    history_length: int = 20  # events per context the encoder reads
    text_features: bool = False
    text_vector: bool = True  # with text_features: the title vector itself, not only its similarities (source, history)

    def to_dict(self) -> dict:
        return asdict(self)


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


N_TASKS = 4  # index 0: unknown


def feature_groups(spec: ModelSpec) -> list[int]:
    """Widths of the groups of the per-candidate vector: context, entity, [context x entity], kind, genres, dense."""
    return ([spec.ctx_dim, spec.dim] + ([spec.dim] if spec.interaction else []) + [8, 16, len(DENSE_FEATURES)]
            + ([spec.dim] if spec.history_encoder else []) + ([spec.dim] if spec.text_features else []))  # fmt: skip


def feature_aspects(spec: ModelSpec) -> list[int]:
    """The aspect of each feature group for the aspect gate: 0 context (not gated), 1 ID, 2 text, 3 sparse."""
    return ([0, 1] + ([1] if spec.interaction else []) + [3, 3, 3] + ([0] if spec.history_encoder else [])
            + ([2] if spec.text_features else []))  # fmt: skip


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


def model_width(spec: ModelSpec) -> int:
    """Width of the per-candidate vector: context, entity, context x entity, kind (8), genres (16), dense."""
    return sum(feature_groups(spec))


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

    def attend(self, encoded: torch.Tensor, mask: torch.Tensor, target: torch.Tensor, cand_ctx: torch.Tensor) -> torch.Tensor:
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


def _bag(table: nn.Embedding, ids: torch.Tensor) -> torch.Tensor:
    """Mean of non-padding embeddings (id 0 is padding); written out so it exports to plain ONNX ops."""
    mask = (ids > 0).to(table.weight.dtype)
    weights = mask / mask.sum(1, keepdim=True).clamp(min=1.0)
    return (weights.unsqueeze(1) @ table(ids)).squeeze(1)  # a batched matmul, cheaper than multiply-and-sum


class UnifiedRanker(nn.Module):
    def __init__(self, spec: ModelSpec):
        super().__init__()
        self.spec = spec
        d = spec.dim
        self.task = nn.Embedding(4, d)
        self.country = nn.Embedding(spec.n_countries + 1, d)
        self.cluster = nn.Embedding(spec.n_clusters + 1, d)
        self.entity = nn.Embedding(spec.n_entities + 1, d)  # shared by source and target entities
        self.user = nn.Embedding(spec.n_users + 1, d)
        self.token = nn.Embedding(TOKEN_BUCKETS, d, padding_idx=0)
        self.kind = nn.Embedding(3, 8)
        self.genre = nn.Embedding(spec.n_genres + 1, 16, padding_idx=0)
        for emb in (self.entity, self.user, self.token):
            nn.init.normal_(emb.weight, std=0.01)
        self.ctx_proj = nn.Sequential(nn.Linear(d * (len(CTX_IDS) + 1), spec.hidden), nn.ReLU())
        self.ctx_out = nn.Linear(spec.hidden, spec.ctx_dim + (d if spec.interaction else 0))
        self.register_buffer("dense_mean", torch.tensor(spec.dense_mean, dtype=torch.float32))
        self.register_buffer("dense_std", torch.tensor(spec.dense_std, dtype=torch.float32))
        width = model_width(spec)
        self.task_gate = TaskGate(d, feature_groups(spec)) if spec.task_gate else None
        self.cross = nn.ModuleList(CrossLayer(width, spec.cross_rank) for _ in range(spec.cross_layers))
        if spec.mmoe_experts > 0:
            self.mmoe = MMoE(width, spec.expert_hidden, spec.mmoe_experts)
        else:
            self.mlp = nn.Sequential(*(ResidualBlock(width, spec.hidden) for _ in range(spec.mlp_blocks)), nn.LayerNorm(width))
            self.head = nn.Linear(width, 1)
        self.play = nn.Linear(width, 1) if spec.play_head else None
        self.history = HistoryEncoder(self.entity, d, spec.history_length) if spec.history_encoder else None
        if spec.text_features:
            self.text = nn.Linear(TEXT_DIM + 2 if spec.text_vector else 2, d)  # title vector (+) cosines with the source and the history
            self.aspect_gate = AspectGate(feature_groups(spec), feature_aspects(spec))

    def context(self, ctx_ids: torch.Tensor, ctx_query: torch.Tensor) -> torch.Tensor:
        task = self.task(ctx_ids[:, 0])
        if not self.spec.task_feature:
            task = torch.zeros_like(task)
        user = self.user(ctx_ids[:, 4])
        if not self.spec.user_embedding:
            user = torch.zeros_like(user)
        parts = [task, self.country(ctx_ids[:, 1]), self.cluster(ctx_ids[:, 2]), self.entity(ctx_ids[:, 3]), user,
                 _bag(self.token, ctx_query)]  # fmt: skip
        return self.ctx_out(self.ctx_proj(torch.cat(parts, dim=1)))

    def heads(self, ctx_ids, ctx_query, cand_ids, cand_genres, cand_dense, cand_ctx, *optional) -> tuple[torch.Tensor, torch.Tensor | None]:
        """Logits of P(click) and, with the play head, of P(play | click); one per candidate."""
        ctx = self.context(ctx_ids, ctx_query).index_select(0, cand_ctx)
        dense = (cand_dense - self.dense_mean) / self.dense_std
        entity = self.entity(cand_ids[:, 0])
        parts = [ctx[:, : self.spec.ctx_dim], entity]
        if self.spec.interaction:
            parts.append(ctx[:, self.spec.ctx_dim :] * entity)
        parts += [self.kind(cand_ids[:, 1]), _bag(self.genre, cand_genres), dense]
        optional = list(optional)  # in model_input_names order: history tensors, then text features
        if self.history is not None:
            ctx_hist, ctx_hist_kind = optional.pop(0), optional.pop(0)
            encoded, mask = self.history.encode(ctx_hist, ctx_hist_kind)
            parts.append(self.history.attend(encoded, mask, entity, cand_ctx))
        if self.spec.text_features:
            text = optional.pop(0)
            parts.append(self.text(text if self.spec.text_vector else text[:, -2:]))
        x0 = torch.cat(parts, 1)
        # The gates depend on the task only: computed per context (B rows), then one row gather per
        # candidate (a column gather per candidate costs more than the rest of the gated model).
        scales = ([self.aspect_gate(ctx_ids[:, 0])] if self.spec.text_features else []) + (
            [self.task_gate(self.task(ctx_ids[:, 0]))] if self.task_gate is not None else [])
        if scales:
            scale = scales[0] if len(scales) == 1 else scales[0] * scales[1]
            x0 = x0 * scale.index_select(0, cand_ctx)
        task = ctx_ids[:, 0].index_select(0, cand_ctx)
        x = x0
        for layer in self.cross:
            x = layer(x0, x)
        if self.spec.mmoe_experts > 0:
            h, click = self.mmoe(x, task)
        else:
            h = self.mlp(x)
            click = self.head(h).squeeze(-1)
        play = self.play(h).squeeze(-1) if self.play is not None else None
        return click, play

    def logits(self, *inputs) -> torch.Tensor:
        return self.heads(*inputs)[0]

    def forward(self, *inputs):
        """Inputs in `input_names(spec)` order. P(click) in (0, 1) per candidate ("score"); with the play
        head also P(play) ("play")."""
        click, play = self.heads(*inputs)
        p_click = torch.sigmoid(click)
        if play is None:
            return p_click
        return p_click, p_click * torch.sigmoid(play)


def model_input_names(spec: ModelSpec) -> tuple[str, ...]:
    return input_names(spec.history_encoder, spec.text_features)


def output_names(spec: ModelSpec) -> list[str]:
    return ["score", "play"] if spec.play_head else ["score"]
