"""Title text features for entities added at run time: the bundle's MiniLM encoder (ONNX) and
tokenizer, then the bundle's projection — the same features training gave catalog entities, no torch."""

from __future__ import annotations

from pathlib import Path

import numpy as np
import onnxruntime as ort

from unirank.core.text_features import TextProjection, load_tokenizer, tokenize

BATCH = 64


class TextEncoder:
    def __init__(self, bundle: Path, entry: dict, projection: TextProjection, threads: int = 1):
        options = ort.SessionOptions()
        options.intra_op_num_threads = threads
        self.session = ort.InferenceSession(str(bundle / entry["file"]), options, providers=["CPUExecutionProvider"])
        self.tokenizer = load_tokenizer(bundle / entry["tokenizer"])
        self.projection = projection

    def embed(self, titles: list[str]) -> np.ndarray:
        """(n, 384) L2-normalised sentence embeddings (model-independent: any bundle can project them)."""
        parts = [
            self.session.run(None, tokenize(self.tokenizer, titles[i : i + BATCH]))[0]
            for i in range(0, len(titles), BATCH)
        ]
        return np.concatenate(parts).astype(np.float32) if parts else np.zeros((0, 384), np.float32)

    def features(self, embeddings: np.ndarray) -> np.ndarray:
        """(n, TEXT_DIM) text features of this bundle."""
        return self.projection.apply(embeddings)

    def embed_query(self, query: str) -> np.ndarray:
        """A query in the space of the catalogue's title vectors (`FeatureTables.text_vec`)."""
        return self.features(self.embed([query]))[0]
