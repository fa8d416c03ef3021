"""The model's shape as one torch-free object: what `model_export.model` builds, what the manifest
records, what the service reads (inputs, outputs, history length) and what the benchmark's cost
estimate counts (FLOPs per candidate).

Contract: `ModelSpec.from_dict(spec.to_dict())` round-trips; `from_dict` also reads the flat spec of
bundles written before the options were nested. `TrainConfig` carries `Architecture` and
`ModelOptions` as they are; invalid combinations are refused by `ModelOptions.problems` before
anything trains.
"""

from __future__ import annotations

from dataclasses import asdict, dataclass, field, fields
from typing import Literal

from unirank.core.context import N_TASKS, personalization_rank
from unirank.core.features import CTX_IDS, DENSE_FEATURES, HISTORY_INPUTS, INPUT_NAMES, TEXT_INPUTS
from unirank.core.text_features import TEXT_DIM
from unirank.core.vocab import PERSONALIZATION_LEVELS, Level

RANK_BY = ("click", "play")


@dataclass(frozen=True)
class Architecture:
    """Sizes of the network (training flags). The defaults are the point of the quality-cost front chosen
    in docs/study.md ("The quality-cost front"): within the previous defaults' (dim 32, ctx_dim 64, hidden
    64, two cross layers) seed noise on every task of both the demo data and MovieLens, at ~21k FLOPs per
    candidate against ~66k."""

    dim: int = 16  # embedding width
    ctx_dim: int = 32  # width of the context vector each candidate sees
    hidden: int = 32
    cross_layers: int = 1  # 0 turns feature crossing off (MLP only)
    cross_rank: int = 16  # low-rank cross layers (DCN-v2 "LowRank"); 0 = full rank
    mlp_blocks: int = 1
    interaction: bool = True  # context (x) target entity element-wise product (GMF) as an input
    task_feature: bool = True
    kind_dim: int = 8
    genre_dim: int = 16
    expert_hidden: int = 32  # hidden width of each MMoE expert
    history_length: int = 20  # events per context the history encoder reads


@dataclass(frozen=True)
class ModelOptions:
    """The research's options, each off by default (docs/model.md says what each does)."""

    task_gate: bool = False  # task-conditioned feature scaling (USR)
    mmoe_experts: int = 0  # shared experts, one gate and head per task (MMoE); 0: off
    play_head: bool = False  # also P(play | click); the bundle outputs P(play) too
    history_encoder: bool = False  # self-attention over the mixed search/recommendation history (UniSAR)
    text_features: bool = False  # MiniLM title features + an aspect gate (S&R Foundation model)
    text_vector: bool = True  # with text_features: the title vector too, not only its similarities
    rank_by: Literal["click", "play"] = "click"  # the bundle's default ranking score
    # dense features also as piecewise-linear encodings over this many quantile bins of the fit window, each
    # feature's through its own learned linear map to `numeric_dim` columns, beside the standardised raw
    # values (Gorishniy et al., NeurIPS 2022); 0: the standardised raw values alone
    numeric_bins: int = 0
    numeric_dim: int = 4
    # the lexical evidence (LEXICAL_FEATURES: match position, BM25, typo and facet match); off, the graph
    # zeroes those columns and the service does not compute them (an ablation, and what it costs at /rank)
    lexical_features: bool = True
    # what the user just did (RECENCY_FEATURES: the last events' affinity, genre match, co-clicks and whether
    # the last was a search); off, the same masking as the lexical evidence
    recency_features: bool = True

    def problems(self, personalization: str) -> list[str]:
        """What is wrong with these options for a model of this personalization level (empty: fine)."""
        out = []
        if self.rank_by not in RANK_BY:
            out.append(f"rank_by must be one of {', '.join(RANK_BY)}, not {self.rank_by!r}")
        elif self.rank_by == "play" and not self.play_head:
            out.append("rank_by 'play' needs the play head (--play-head)")
        if self.mmoe_experts < 0:
            out.append("mmoe_experts must be 0 (off) or more")
        if self.history_encoder and personalization != Level.FULL:
            out.append(f"the history encoder needs personalization 'full', not {personalization!r}")
        if not self.text_vector and not self.text_features:
            out.append("--no-text-vector only applies with --text-features")
        if self.numeric_bins < 0 or self.numeric_bins == 1 or self.numeric_dim < 1:
            out.append("numeric_bins must be 0 (off) or at least 2, and numeric_dim at least 1")
        return out


@dataclass(frozen=True)
class Vocabulary:
    """Sizes of the id vocabularies (from the feature tables); index 0 of each is the unknown bucket."""

    n_countries: int
    n_clusters: int
    n_entities: int
    n_users: int
    n_genres: int


@dataclass
class ModelSpec:
    vocabulary: Vocabulary
    dense_mean: list[float]
    dense_std: list[float]
    personalization: str = "full"
    architecture: Architecture = field(default_factory=Architecture)
    options: ModelOptions = field(default_factory=ModelOptions)
    # with options.numeric_bins: each dense feature's bin edges (numeric_bins + 1, increasing), from the fit window
    dense_edges: list[list[float]] | None = None

    def __post_init__(self) -> None:
        if self.personalization not in PERSONALIZATION_LEVELS:
            raise ValueError(f"personalization must be one of {', '.join(PERSONALIZATION_LEVELS)}")
        if problems := self.options.problems(self.personalization):
            raise ValueError("; ".join(problems))
        bins = self.options.numeric_bins
        if bins and (
            self.dense_edges is None
            or len(self.dense_edges) != len(DENSE_FEATURES)
            or any(len(e) != bins + 1 for e in self.dense_edges)
        ):
            raise ValueError(f"numeric_bins {bins} needs {bins + 1} bin edges for each of the dense features")

    @property
    def dense_width(self) -> int:
        """Columns of the dense features in the per-candidate vector: the standardised values, then their
        encodings."""
        o = self.options
        return len(DENSE_FEATURES) * (1 + (o.numeric_dim if o.numeric_bins else 0))

    @property
    def user_embedding(self) -> bool:
        """Learned user representations: personalization 'full' only."""
        return personalization_rank(self.personalization) >= 2

    @property
    def context_width(self) -> int:
        """Input of the context tower: one embedding per context id, plus the query's token bag."""
        return self.architecture.dim * (len(CTX_IDS) + 1)

    def feature_groups(self) -> list[int]:
        """Widths of the groups of the per-candidate vector: context, entity, [context x entity], kind,
        genres, dense, [history], [text]."""
        a, o = self.architecture, self.options
        return (
            [a.ctx_dim, a.dim]
            + ([a.dim] if a.interaction else [])
            + [a.kind_dim, a.genre_dim, self.dense_width]
            + ([a.dim] if o.history_encoder else [])
            + ([a.dim] if o.text_features else [])
        )

    def feature_aspects(self) -> list[int]:
        """The aspect of each feature group for the aspect gate: 0 context (not gated), 1 ID, 2 text, 3 sparse."""
        a, o = self.architecture, self.options
        return (
            [0, 1]
            + ([1] if a.interaction else [])
            + [3, 3, 3]
            + ([0] if o.history_encoder else [])
            + ([2] if o.text_features else [])
        )

    @property
    def width(self) -> int:
        """Width of the per-candidate vector."""
        return sum(self.feature_groups())

    @property
    def text_input_width(self) -> int:
        return TEXT_DIM + 2 if self.options.text_vector else 2

    def input_names(self) -> tuple[str, ...]:
        """The ONNX inputs: the base six, then the history tensors and the text features when used."""
        o = self.options
        return INPUT_NAMES + (HISTORY_INPUTS if o.history_encoder else ()) + (TEXT_INPUTS if o.text_features else ())

    def output_names(self) -> list[str]:
        return ["score", "play"] if self.options.play_head else ["score"]

    def flops_per_candidate(self) -> int:
        """2 x multiply-adds of the per-candidate part of the model: cross layers, the MLP and head (or
        the MMoE experts, gates and heads), the play head, the history attention and the text projection."""
        a, o, width = self.architecture, self.options, self.width
        per_cross = 2 * (2 * width * a.cross_rank) if 0 < a.cross_rank < width // 2 else 2 * width * width
        if o.mmoe_experts:
            e = o.mmoe_experts
            tower = 2 * (2 * width * a.expert_hidden * e + width * e * N_TASKS + width * N_TASKS)
        else:
            tower = a.mlp_blocks * 2 * (2 * width * a.hidden) + 2 * width
        play = 2 * width if o.play_head else 0
        history = 2 * (a.dim * a.dim + 2 * a.history_length * a.dim) if o.history_encoder else 0
        text = 2 * self.text_input_width * a.dim if o.text_features else 0
        numeric = 2 * len(DENSE_FEATURES) * o.numeric_bins * o.numeric_dim  # the per-feature maps of the encodings
        return a.cross_layers * per_cross + tower + play + history + text + numeric

    def to_dict(self) -> dict:
        return asdict(self)

    @classmethod
    def from_dict(cls, d: dict) -> ModelSpec:
        """From `to_dict`, or from the flat spec of older bundles (every field at the top level)."""
        if "vocabulary" in d:
            return cls(
                vocabulary=Vocabulary(**d["vocabulary"]),
                dense_mean=d["dense_mean"],
                dense_std=d["dense_std"],
                personalization=d["personalization"],
                architecture=Architecture(**d["architecture"]),
                options=ModelOptions(**d["options"]),
                dense_edges=d.get("dense_edges"),
            )
        pick = lambda kind: {f.name: d[f.name] for f in fields(kind) if f.name in d}  # noqa: E731
        return cls(
            vocabulary=Vocabulary(**pick(Vocabulary)),
            dense_mean=d["dense_mean"],
            dense_std=d["dense_std"],
            personalization="full" if d.get("user_embedding", True) else "cluster",
            architecture=Architecture(**pick(Architecture)),
            options=ModelOptions(**pick(ModelOptions)),
        )
