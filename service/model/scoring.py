"""onnxruntime scoring: one session per worker, CUDA execution provider when available, else the CPU.

On CUDA the inputs are already compact (integer ids and a few floats; the embedding gathers run inside
the model, on the device). With `io_binding`, each call copies its inputs into device buffers allocated
once per size bucket (candidates and contexts rounded up to a power of two, padding rows pointing at
context 0 and dropped from the result) and the scores come back from a bound device buffer, so no call
allocates device memory.
"""

from __future__ import annotations

import logging
from pathlib import Path

import numpy as np
import onnxruntime as ort

from unirank.core.features import ENTITY_SIDE_TABLE

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

    def __init__(
        self,
        model_path: Path | str,
        provider_setting: str = "auto",
        intra_op_threads: int = 1,
        io_binding: bool = False,
        output: str = "score",
        quiet: bool = False,
    ):
        """quiet: onnxruntime's warnings off (a graph whose entity-side table is overridable by design
        warns that it is at every load)."""
        options = ort.SessionOptions()
        if quiet:
            options.log_severity_level = 3
        options.graph_optimization_level = ort.GraphOptimizationLevel.ORT_ENABLE_ALL
        options.intra_op_num_threads = intra_op_threads
        options.inter_op_num_threads = 1
        options.execution_mode = ort.ExecutionMode.ORT_SEQUENTIAL
        options.add_session_config_entry("session.intra_op.allow_spinning", "0")
        providers = choose_providers(provider_setting)
        if providers[0] == "CUDAExecutionProvider" and hasattr(ort, "preload_dlls"):
            try:  # CUDA and cuDNN from the nvidia-* wheels (e.g. PyTorch's) when the system has none
                ort.preload_dlls()
            except Exception:
                log.warning("onnxruntime.preload_dlls() failed; relying on the system's CUDA libraries", exc_info=True)
        try:
            self.session = ort.InferenceSession(str(model_path), options, providers=providers)
        except Exception:  # a broken CUDA install fails here: fall back rather than refuse to start
            if providers[0] == "CPUExecutionProvider":
                raise
            log.exception("CUDA execution provider failed to initialise; falling back to the CPU")
            self.session = ort.InferenceSession(str(model_path), options, providers=["CPUExecutionProvider"])
        self.provider = self.session.get_providers()[0]
        self.device = "cuda" if self.provider == "CUDAExecutionProvider" else "cpu"
        outputs = [o.name for o in self.session.get_outputs()]
        if output not in outputs:
            raise ValueError(
                f"the model has no output '{output}' (it has {outputs}); was it trained with the play head?"
            )
        self.output = output
        self.input_names = [i.name for i in self.session.get_inputs()]  # not the overridable entity-side table
        self.io_binding = io_binding and self.device == "cuda"
        self._buckets: dict[tuple[int, int], tuple] = {}
        log.info(
            "onnxruntime %s using %s (%s%s)",
            ort.__version__,
            self.provider,
            self.device,
            ", IO binding" if self.io_binding else "",
        )

    def score(self, inputs: dict[str, np.ndarray]) -> np.ndarray:
        """The inputs the graph takes, plus, when present, the table that overrides its entity-side
        initializer (`service.model.entity_side`)."""
        if self.io_binding:
            return self._score_bound(inputs)
        feed = {k: inputs[k] for k in self.input_names}
        if ENTITY_SIDE_TABLE in inputs:
            feed[ENTITY_SIDE_TABLE] = inputs[ENTITY_SIDE_TABLE]
        return self.session.run([self.output], feed)[0]

    def _score_bound(self, inputs: dict[str, np.ndarray]) -> np.ndarray:
        n, b = len(inputs["cand_ctx"]), len(inputs["ctx_ids"])
        key = (_bucket(n), _bucket(b))
        if key not in self._buckets:
            self._buckets[key] = self._allocate(inputs, *key)
        binding, values, output = self._buckets[key]
        for name, value in values.items():
            rows = b if name.startswith("ctx") else n
            padded = np.zeros((value.shape()[0], *inputs[name].shape[1:]), inputs[name].dtype)
            padded[:rows] = inputs[name]
            value.update_inplace(padded)
        if ENTITY_SIDE_TABLE in inputs:  # entities added at run time: the longer table, copied each call
            binding.bind_cpu_input(ENTITY_SIDE_TABLE, inputs[ENTITY_SIDE_TABLE])
        self.session.run_with_iobinding(binding)
        return binding.copy_outputs_to_cpu()[0][:n]

    def _allocate(self, inputs: dict[str, np.ndarray], n: int, b: int) -> tuple:
        binding = self.session.io_binding()
        values = {}
        for name in self.input_names:
            rows = b if name.startswith("ctx") else n
            zeros = np.zeros((rows, *inputs[name].shape[1:]), inputs[name].dtype)
            values[name] = ort.OrtValue.ortvalue_from_numpy(zeros, "cuda", 0)
            binding.bind_ortvalue_input(name, values[name])
        output = ort.OrtValue.ortvalue_from_shape_and_type([n], np.float32, "cuda", 0)
        binding.bind_ortvalue_output(self.output, output)
        return binding, values, output


def _bucket(size: int) -> int:
    return 1 << max(4, (size - 1).bit_length())
