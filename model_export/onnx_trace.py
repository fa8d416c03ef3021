"""Tracing a torch module to ONNX the one way every exported graph here is written.

Contract: `trace_to_onnx(module, feed, input_names, output_names, path, dynamic_axes)` writes `module`
(in eval mode) at `path`, traced on `feed[name]` for each input name, at opset OPSET with the
TorchScript exporter; `dynamic_axes` entries for names the graph does not have are left out.
"""

from __future__ import annotations

from pathlib import Path

import numpy as np
import torch

OPSET = 17


def trace_to_onnx(
    module: torch.nn.Module,
    feed: dict[str, np.ndarray],
    input_names,
    output_names,
    path: Path,
    dynamic_axes: dict,
) -> None:
    module.eval()
    names = list(input_names)
    torch.onnx.export(
        module,
        tuple(torch.from_numpy(feed[k]) for k in names),
        str(path),
        input_names=names,
        output_names=list(output_names),
        dynamic_axes={k: v for k, v in dynamic_axes.items() if k in names or k in output_names},
        opset_version=OPSET,
        dynamo=False,
    )
