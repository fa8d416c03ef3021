"""The suite: every case in order, each bounded in time, a case that cannot run reported as failed;
the JSON and markdown of a run."""

from __future__ import annotations

import shutil
import tempfile
import time
from pathlib import Path

from loadtest.chaos.api_cases import hostile_case, schemathesis_case
from loadtest.chaos.load_cases import events_under_overload_case, overload_case
from loadtest.chaos.process_cases import bundle_case, sigterm_case, worker_kill_case
from loadtest.chaos.redis_cases import redis_hang_case, redis_kill_case
from loadtest.processes import RedisServer
from loadtest.report import save_results
from unirank.core.markdown import markdown_table

CASES = [
    schemathesis_case,
    hostile_case,
    redis_kill_case,
    redis_hang_case,
    overload_case,
    events_under_overload_case,
    sigterm_case,
    worker_kill_case,
    bundle_case,
]


def run_chaos(
    bundle: Path, quick: bool = False, out_dir: Path = Path("results"), only: list[str] | None = None, log=print
) -> dict:
    from loadtest.bench import machine

    work = Path(tempfile.mkdtemp(prefix="unirank-chaos-"))
    shared = RedisServer()
    rows = []
    try:
        for case in CASES:
            if only and case.__name__.removesuffix("_case") not in only:
                continue
            log(f"chaos: {case.__name__.removesuffix('_case')}")
            started = time.perf_counter()
            try:
                row = case(bundle, shared.url, quick, work)
            except Exception as exc:  # a case that cannot run is a failed case, reported as such
                row = {"case": case.__name__, "held": False, "result": f"could not run: {type(exc).__name__}: {exc}"}
            row["seconds"] = round(time.perf_counter() - started, 1)
            rows.append(row)
            log(f"  {'held' if row['held'] else 'FAILED'}: {row['result']}")
    finally:
        shared.stop()
        shutil.rmtree(work, ignore_errors=True)
    result = {
        "machine": machine(),
        "mode": "quick" if quick else "full",
        "cases": rows,
        "held": all(r["held"] for r in rows),
    }
    return save_results(result, out_dir, "chaos", format_table(result))


def format_table(result: dict) -> str:
    lines = [
        f"Fault suite ({result['mode']}), {result['machine']['cpu']}",
        "",
        markdown_table(
            ("#", "what we tested", "what held", "result"),
            [
                (i, row["case"], "yes" if row["held"] else "**no**", row["result"])
                for i, row in enumerate(result["cases"], 1)
            ],
        ),
    ]
    return "\n".join(lines) + "\n"
