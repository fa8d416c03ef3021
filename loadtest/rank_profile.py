"""Where one rank_200 request's CPU time goes, measured in process, part by part (no HTTP, no Redis).

Contract: loads the bundle as the service does and times, on the bench's own rank_200 bodies, each part
of the /rank path (the fastest of `--repeats` runs of `--n` calls): body parsing, the unified context, id ->
index, the history, the model inputs (the service's single-context encoder next to the batch encoder it
equals), the onnxruntime call (alone; with its buffers bound once, what IO binding would save on the
CPU; and per request when 1-8 requests are scored in one call, which is what micro-batching buys on
this CPU), and top-k with the JSON. Prints a table; `--out` also
writes JSON. The HTTP stack's share is the bench's `ceiling`.

    python -m loadtest.rank_profile --bundle artifacts/demo
"""

from __future__ import annotations

import argparse
import json
import time
from pathlib import Path

import numpy as np

from loadtest.scenarios import Scenarios
from service.api.payloads import parse_rank
from service.core.schemas import RankRequest
from service.core.settings import Settings
from service.model.batching import concatenate
from service.model.bundle import LoadedBundle
from service.model.context import build_request_context
from service.ranking.ranker import top_k
from unirank.core.markdown import markdown_table


def _time(fn, n: int, repeats: int) -> float:
    """Microseconds per call in the fastest of `repeats` runs of `n` calls: what the code costs when
    nothing else takes the core (timeit's advice; on a shared machine the median moves by ±30 %
    between runs, the minimum by a few %)."""
    fn()
    runs = []
    for _ in range(repeats):
        started = time.perf_counter()
        for _ in range(n):
            fn()
        runs.append((time.perf_counter() - started) / n * 1e6)
    return float(np.min(runs))


def _bound_call(scorer, inputs: dict[str, np.ndarray]):
    """The same call with its input and output buffers allocated and bound once (what IO binding would
    save on the CPU: the per-call wrapping of the inputs and allocation of the output), inputs copied in;
    the call returns the scores."""
    import onnxruntime as ort

    session = scorer.session
    binding = session.io_binding()
    values = {name: ort.OrtValue.ortvalue_from_numpy(inputs[name].copy()) for name in scorer.input_names}
    for name, value in values.items():
        binding.bind_ortvalue_input(name, value)
    binding.bind_ortvalue_output(
        scorer.output, ort.OrtValue.ortvalue_from_shape_and_type([len(inputs["cand_ctx"])], np.float32)
    )

    def call():
        for name, value in values.items():
            value.update_inplace(inputs[name])
        session.run_with_iobinding(binding)
        return binding.get_outputs()[0].numpy()

    return call


def profile(bundle_dir: Path, n: int = 300, repeats: int = 5) -> dict:
    bundle = LoadedBundle.load(bundle_dir, Settings(bundle=str(bundle_dir)))
    scenarios = Scenarios(bundle_dir)
    body = scenarios.rank_200()
    request = RankRequest.model_validate_json(body)
    ctx = build_request_context(request, bundle.tables, bundle.level, bundle.impute)
    features = bundle.features
    ids = list(dict.fromkeys(request.candidates))
    cand = features.encoder.entity_indices(ids)
    live = [f"{e}|1".encode() for e in ids[:5]]
    history = features.history(live, ctx.user)
    encoded = features.encoder.encode_contexts([ctx.unified], history.vector[None, :], level=ctx.level)
    inputs = features.inputs(ctx, cand, history)
    scores = bundle.scorer.score(inputs)
    parts = {
        "parse (200 ids)": lambda: parse_rank(body),
        "context": lambda: build_request_context(request, bundle.tables, bundle.level, bundle.impute),
        "id -> index": lambda: features.encoder.entity_indices(ids),
        "history (5 live events)": lambda: features.history(live, ctx.user),
        "inputs (service path)": lambda: features.inputs(ctx, cand, history),
        "  encode_one": lambda: features.encoder.encode_one(encoded, cand),
        "  encode_candidates (batch path)": lambda: features.encoder.encode_candidates(
            encoded, cand, np.zeros(len(cand), np.int64)
        ),
        "onnxruntime": lambda: bundle.scorer.score(inputs),
        "onnxruntime, IO binding": _bound_call(bundle.scorer, inputs),
        "top-k + JSON": lambda: top_k(scores, ids, 20),
    }
    result = {"us": {name: _time(fn, n, repeats) for name, fn in parts.items()}}
    others = []
    for _ in range(7):
        r = RankRequest.model_validate_json(scenarios.rank_200())
        c = build_request_context(r, bundle.tables, bundle.level, bundle.impute)
        others.append(features.inputs(c, features.encoder.entity_indices(r.candidates), features.history([], c.user)))
    batched = {}
    for k in (1, 2, 4, 8):
        merged, _ = concatenate(([inputs] + others)[:k])
        batched[k] = _time(lambda m=merged: bundle.scorer.score(m), max(n // (4 * k), 10), repeats) / k
    result["onnxruntime_us_per_request_when_batched"] = batched
    result["candidates"] = len(cand)
    return result


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--bundle", type=Path, default=Path("artifacts/demo"))
    parser.add_argument("--n", type=int, default=300)
    parser.add_argument("--repeats", type=int, default=25)
    parser.add_argument("--out", type=Path)
    args = parser.parse_args()
    result = profile(args.bundle, args.n, args.repeats)
    parts = [(name, f"{us:.1f}") for name, us in result["us"].items()]
    print(markdown_table(("part of one rank_200 request", "µs (fastest run)"), parts))
    batched = [(k, f"{us:.1f}") for k, us in result["onnxruntime_us_per_request_when_batched"].items()]
    print("\n" + markdown_table(("requests per onnxruntime call", "µs per request"), batched))
    if args.out:
        args.out.parent.mkdir(parents=True, exist_ok=True)
        args.out.write_text(json.dumps(result, indent=2))


if __name__ == "__main__":
    main()
