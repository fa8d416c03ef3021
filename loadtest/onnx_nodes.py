"""Where one onnxruntime call's time goes, node by node, on the bench's rank_200 inputs.

Contract: loads the bundle as the service does, builds one rank_200 request's model inputs, repeats its
candidates to `--candidates` rows (so each node's fixed cost weighs little next to its per-row cost),
and runs the model `--runs` times in a session with the service's options plus onnxruntime's own
profiler. Prints the nodes' kernel time in ns per candidate, node by node (the `--top` largest) and per
operator type, and the sum; `--out` also writes JSON. The profiler adds a little to every node, so the
sum exceeds what `loadtest.rank_profile` times for the call.

    taskset -c 1 .venv/bin/python -m loadtest.onnx_nodes --bundle artifacts/demo
"""

from __future__ import annotations

import argparse
import json
import tempfile
from collections import defaultdict
from pathlib import Path

import numpy as np
import onnxruntime as ort

from loadtest.scenarios import Scenarios
from service.core.schemas import RankRequest
from service.core.settings import Settings
from service.model.bundle import LoadedBundle
from service.model.context import build_request_context
from unirank.core.markdown import markdown_table


def rank_200_inputs(bundle: LoadedBundle, bundle_dir: Path, candidates: int) -> dict[str, np.ndarray]:
    request = RankRequest.model_validate_json(Scenarios(bundle_dir).rank_200())
    ctx = build_request_context(request, bundle.tables, bundle.level, bundle.impute)
    features = bundle.features
    cand = features.encoder.entity_indices(list(dict.fromkeys(request.candidates)))
    inputs = features.inputs(ctx, cand, features.history([], ctx.user))
    rows = np.arange(candidates) % len(cand)
    return {k: v if k.startswith("ctx") else np.ascontiguousarray(v[rows]) for k, v in inputs.items()}


def profile(bundle_dir: Path, candidates: int = 800, runs: int = 300) -> dict:
    bundle = LoadedBundle.load(bundle_dir, Settings(bundle=str(bundle_dir)))
    inputs = rank_200_inputs(bundle, bundle_dir, candidates)
    options = ort.SessionOptions()
    options.graph_optimization_level = ort.GraphOptimizationLevel.ORT_ENABLE_ALL
    options.intra_op_num_threads = 1
    options.inter_op_num_threads = 1
    options.add_session_config_entry("session.intra_op.allow_spinning", "0")
    options.enable_profiling = True
    options.profile_file_prefix = str(Path(tempfile.mkdtemp(prefix="unirank-onnx-nodes-")) / "profile")
    session = ort.InferenceSession(str(bundle_dir / "model.onnx"), options, providers=["CPUExecutionProvider"])
    feed = {i.name: inputs[i.name] for i in session.get_inputs()}
    for _ in range(runs):
        session.run(None, feed)
    events = json.loads(Path(session.end_profiling()).read_text())
    per_node: dict[str, float] = defaultdict(float)
    op_of: dict[str, str] = {}
    for event in events:
        if event.get("cat") == "Node" and event["name"].endswith("_kernel_time"):
            node = event["name"].removesuffix("_kernel_time")
            per_node[node] += event["dur"]  # µs
            op_of[node] = event["args"]["op_name"]
    scale = 1000.0 / (runs * candidates)  # µs summed over the runs -> ns per candidate per call
    nodes = {node: us * scale for node, us in sorted(per_node.items(), key=lambda p: -p[1])}
    by_op: dict[str, float] = defaultdict(float)
    for node, ns in nodes.items():
        by_op[op_of[node]] += ns
    return {
        "candidates": candidates,
        "runs": runs,
        "ns_per_candidate": {"nodes": nodes, "ops": dict(sorted(by_op.items(), key=lambda p: -p[1]))},
        "ops_of_nodes": op_of,
        "total_ns_per_candidate": sum(nodes.values()),
    }


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--bundle", type=Path, default=Path("artifacts/demo"))
    parser.add_argument("--candidates", type=int, default=800)
    parser.add_argument("--runs", type=int, default=300)
    parser.add_argument("--top", type=int, default=15)
    parser.add_argument("--out", type=Path)
    args = parser.parse_args()
    result = profile(args.bundle, args.candidates, args.runs)
    ns = result["ns_per_candidate"]
    print(f"{result['candidates']} candidates per call, {result['runs']} calls\n")
    nodes = [(node, result["ops_of_nodes"][node], f"{v:.1f}") for node, v in list(ns["nodes"].items())[: args.top]]
    print(markdown_table(("node", "operator", "ns per candidate"), nodes))
    ops = [(op, f"{v:.1f}") for op, v in ns["ops"].items()] + [("all nodes", f"{result['total_ns_per_candidate']:.1f}")]
    print("\n" + markdown_table(("operator", "ns per candidate"), ops))
    if args.out:
        args.out.parent.mkdir(parents=True, exist_ok=True)
        args.out.write_text(json.dumps(result, indent=2))


if __name__ == "__main__":
    main()
