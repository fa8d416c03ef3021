"""The MiniLM title encoder exported to ONNX for the bundle, with its tokenizer.

The service embeds the titles of entities added at run time (`POST /entities`) with these two files
and the bundle's `TextProjection`, so a new entity gets the same text features a catalog entity got at
training time. Export fails unless onnxruntime and sentence-transformers agree on sample titles.
"""

from __future__ import annotations

import shutil
from pathlib import Path

import numpy as np
import torch

from model_export.text_embeddings import minilm_path, title_embeddings
from unirank.core.text_features import load_tokenizer, tokenize

ONNX_FILE = "text_encoder.onnx"
TOKENIZER_FILE = "tokenizer.json"
PARITY_TOLERANCE = 1e-4
SAMPLE_TITLES = ["Stranger Things", "The Crown: Season 2", "Planet Earth II", "a", "Zyx Quantum Chronicles of the Deep"]


class MeanPooledEncoder(torch.nn.Module):
    """BERT -> mean over real tokens -> L2 normalisation: what sentence-transformers computes."""

    def __init__(self, bert: torch.nn.Module):
        super().__init__()
        self.bert = bert

    def forward(self, input_ids: torch.Tensor, attention_mask: torch.Tensor) -> torch.Tensor:
        hidden = self.bert(input_ids=input_ids, attention_mask=attention_mask).last_hidden_state
        mask = attention_mask.unsqueeze(-1).to(hidden.dtype)
        pooled = (hidden * mask).sum(1) / mask.sum(1).clamp(min=1e-9)
        return torch.nn.functional.normalize(pooled, dim=1)


def export_text_encoder(out: Path | str) -> dict:
    """Writes text_encoder.onnx and tokenizer.json into `out`; returns their manifest entry."""
    import onnxruntime as ort
    from transformers import AutoModel

    out = Path(out)
    source = Path(minilm_path())
    shutil.copyfile(source / TOKENIZER_FILE, out / TOKENIZER_FILE)
    tokenizer = load_tokenizer(out / TOKENIZER_FILE)
    sample = tokenize(tokenizer, SAMPLE_TITLES)
    encoder = MeanPooledEncoder(AutoModel.from_pretrained(str(source), attn_implementation="eager")).eval()
    torch.onnx.export(
        encoder,
        (torch.from_numpy(sample["input_ids"]), torch.from_numpy(sample["attention_mask"])),
        str(out / ONNX_FILE),
        input_names=["input_ids", "attention_mask"],
        output_names=["embedding"],
        dynamic_axes={
            "input_ids": {0: "n", 1: "tokens"},
            "attention_mask": {0: "n", 1: "tokens"},
            "embedding": {0: "n"},
        },
        opset_version=17,
        dynamo=False,
    )
    session = ort.InferenceSession(str(out / ONNX_FILE), providers=["CPUExecutionProvider"])
    diff = float(np.abs(session.run(None, sample)[0] - title_embeddings(SAMPLE_TITLES)).max())
    if not diff <= PARITY_TOLERANCE:
        raise RuntimeError(f"text encoder: onnxruntime and sentence-transformers differ by {diff:.2e}")
    return {"file": ONNX_FILE, "tokenizer": TOKENIZER_FILE, "parity_max_abs_diff": diff}
