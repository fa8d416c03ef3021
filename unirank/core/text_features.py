"""Title text features, the torch-free side: the projection from a MiniLM sentence embedding to the
TEXT_DIM features the model reads, and the tokenizer the bundle's ONNX title encoder takes.

Contract: `TextProjection.apply(embeddings)` gives the same features at training (catalog titles,
`model_export.text_embeddings`) and at serving (titles of entities added at run time).
"""

from __future__ import annotations

from dataclasses import dataclass
from pathlib import Path

import numpy as np

TEXT_DIM = 32
EMBEDDING_DIM = 384  # all-MiniLM-L6-v2
MAX_TOKENS = 64  # titles are short; sentence-transformers' own limit (256) never applies to them


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


def tokenize(tokenizer, titles: list[str]) -> dict[str, np.ndarray]:
    """input_ids and attention_mask, padded to the longest title; shared with the service."""
    encoded = tokenizer.encode_batch(list(titles))
    return {
        "input_ids": np.array([e.ids for e in encoded], np.int64),
        "attention_mask": np.array([e.attention_mask for e in encoded], np.int64),
    }


def load_tokenizer(path: Path | str):
    from tokenizers import Tokenizer

    tokenizer = Tokenizer.from_file(str(path))
    tokenizer.enable_truncation(MAX_TOKENS)
    tokenizer.enable_padding()
    return tokenizer
