"""onnxruntime scoring: one session per worker, CUDA execution provider when available, else the CPU."""

from __future__ import annotations

import logging
from pathlib import Path

import numpy as np
import onnxruntime as ort

from model_export.features import INPUT_NAMES

log = logging.getLogger("unirank.scoring")


def choose_providers(setting: str) -> list[str]:
    available = ort.get_available_providers()
    if setting in ("auto", "cuda") and "CUDAExecutionProvider" in available:
        return ["CUDAExecutionProvider", "CPUExecutionProvider"]
    if setting == "cuda":
        log.warning("CUDA execution provider requested but not available (%s); using the CPU", available)
    return ["CPUExecutionProvider"]


class Scorer:
    """Scores candidates in ONE onnxruntime call per batch of contexts."""

    def __init__(self, model_path: Path | str, provider_setting: str = "auto", intra_op_threads: int = 1):
        options = ort.SessionOptions()
        options.graph_optimization_level = ort.GraphOptimizationLevel.ORT_ENABLE_ALL
        options.intra_op_num_threads = intra_op_threads
        options.inter_op_num_threads = 1
        options.execution_mode = ort.ExecutionMode.ORT_SEQUENTIAL
        options.add_session_config_entry("session.intra_op.allow_spinning", "0")
        providers = choose_providers(provider_setting)
        try:
            self.session = ort.InferenceSession(str(model_path), options, providers=providers)
        except Exception:  # a broken CUDA install fails here: fall back rather than refuse to start
            if providers[0] == "CPUExecutionProvider":
                raise
            log.exception("CUDA execution provider failed to initialise; falling back to the CPU")
            self.session = ort.InferenceSession(str(model_path), options, providers=["CPUExecutionProvider"])
        self.provider = self.session.get_providers()[0]
        self.device = "cuda" if self.provider == "CUDAExecutionProvider" else "cpu"
        log.info("onnxruntime %s using %s", ort.__version__, self.provider)

    def score(self, inputs: dict[str, np.ndarray]) -> np.ndarray:
        return self.session.run(None, {k: inputs[k] for k in INPUT_NAMES})[0]
