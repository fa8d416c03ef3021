"""One /rank request through the fleet: the routing picks the model (or two, interleaved), the model's
ranker answers, the shadow gets a copy.

Contract: `serve_rank(fleet, shadow, impressions, request, timings, budget_s)` never fails for the model's
sake: when the budget runs out before the model scored, or the model call fails, the answer is the
ranker's fallback (`"degraded": true`, counted in `unirank_degraded_total{reason}`). It records the answer
in the impression log (when on) and returns the response body (the ranker's, plus
`request_id`, `experiment` and `variant`), the name of the model that answered (for metrics) and the
stage timings. The request id is the client's when it sent one, else a new random one. Interleaved
responses hold each id once, each item with the `variant` (model) whose team contributed it; both
variants rank the same candidates (the union of what each retrieves, or the request's own).
"""

from __future__ import annotations

import os
import random
import time

import orjson

from service.core.errors import DeadlineExceeded, ModelFailure
from service.core.schemas import RankRequest
from service.ops.metrics import DEGRADED
from service.ranking.fleet import Fleet
from service.ranking.ranker import Timings
from service.ranking.routing import INTERLEAVED, assign, team_draft
from service.ranking.served_model import ServedModel
from service.ranking.shadow import ShadowScorer
from service.store.impressions import ImpressionLog

_NO_EXPERIMENT = b',"experiment":null,"variant":null'

# Request ids need to be unique, not unguessable: 64 bits from a generator seeded from os.urandom once per
# process (again in a forked child), not a system call per request as secrets.token_hex makes.
_request_ids = random.Random()
os.register_at_fork(after_in_child=_request_ids.seed)


def new_request_id() -> str:
    return f"{_request_ids.getrandbits(64):016x}"


async def serve_rank(
    fleet: Fleet,
    shadow: ShadowScorer,
    impressions: ImpressionLog | None,
    request: RankRequest,
    timings: Timings,
    budget_s: float = float("inf"),
) -> tuple[bytes, str, Timings]:
    """`timings`: the request's, started when it arrived (the budget counts from then)."""
    deadline = timings.started + budget_s
    request_id = request.request_id or new_request_id()
    routing = fleet.routing
    assignment = assign(routing, request.user_id, request_id)
    if assignment.experiment is None:
        tail = b',"request_id":' + orjson.dumps(request_id) + _NO_EXPERIMENT
    else:
        tail = b"".join(
            (
                b',"request_id":',
                orjson.dumps(request_id),
                b',"experiment":',
                orjson.dumps(assignment.experiment),
                b',"variant":',
                orjson.dumps(assignment.variant),
            )
        )
    model = fleet.serving(assignment.model)
    if assignment.partner is not None:
        partner = fleet.serving(assignment.partner)
        try:
            body, items, level, timings = await _interleave(
                model, partner, request, request_id, timings, tail, deadline
            )
        except (DeadlineExceeded, ModelFailure) as exc:
            reason = "deadline" if isinstance(exc, DeadlineExceeded) else "model_error"
            DEGRADED.labels(reason=reason).inc()
            result = model.ranker.fallback(request, reason, timings, tail)
            body, items, level, timings = result.body, result.items, result.level, result.timings
        name, version = INTERLEAVED, f"{model.version}+{partner.version}"
    else:
        model.requests += 1
        try:
            result = await model.ranker.rank(request, timings, tail, deadline=deadline)
        except (DeadlineExceeded, ModelFailure) as exc:
            reason = "deadline" if isinstance(exc, DeadlineExceeded) else "model_error"
            DEGRADED.labels(reason=reason).inc()
            result = model.ranker.fallback(request, reason, timings, tail)
        if routing.shadow and routing.shadow != model.name:
            shadow.offer(routing.shadow, request, result.body)
        body, items, level, timings = result.body, result.items, result.level, result.timings
        name, version = model.name, model.version
    if impressions is not None:
        impressions.record(
            request_id,
            None if assignment.partner else name,
            version,
            assignment.experiment,
            assignment.variant,
            request.task,
            request.country.upper(),
            request.user_id,
            request.query,
            request.source_entity_id,
            level,
            items,
        )
    return body, name, timings


async def _interleave(
    first: ServedModel,
    second: ServedModel,
    request: RankRequest,
    seed: str,
    timings: Timings,
    tail: bytes,
    deadline: float = float("inf"),
) -> tuple[bytes, bytes, str, Timings]:
    started = time.perf_counter()
    first.requests += 1
    second.requests += 1
    pool = await first.ranker.candidate_ids(request)
    if request.candidates is None:
        pool = list(dict.fromkeys(pool + await second.ranker.candidate_ids(request)))
    at = timings.add("retrieval", started)
    rankings = [await m.ranker.rank_pool(request, pool, timings, deadline) for m in (first, second)]
    timings.add("interleave", at)
    scores = [dict(r) for r in rankings]
    names = (first.name, second.name)
    merged = team_draft([e for e, _ in rankings[0]], [e for e, _ in rankings[1]], request.k, seed)
    items = [{"entity_id": e, "score": scores[team][e], "variant": names[team]} for e, team in merged]
    ctx = first.ranker.context(request)
    encoded = orjson.dumps(items)  # what the impression log records: without display fields
    body = {
        "items": first.bundle.entities.decorate_items(items) if request.display else items,
        "model": None,
        "model_version": f"{first.version}+{second.version}",
        "task": request.task,
        "cache": "bypass",
        "returned": len(items),
        "available": len(pool),
        "warnings": first.ranker.warnings(request, ctx),
    }
    if request.explain:
        body["context"] = ctx.explain()
    timings.finish()
    return orjson.dumps(body)[:-1] + tail + b"}", encoded, ctx.level, timings
