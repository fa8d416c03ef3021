"""One /rank request through the fleet: the routing picks the model (or two, interleaved), the model's
ranker answers, the shadow gets a copy.

Contract: `serve_rank(fleet, shadow, impressions, request, timings, budget_s, raw)` never fails for the model's
sake: when the budget runs out before the model scored, or the model call fails, the answer is the
ranker's fallback (`"degraded": true`, counted in `unirank_degraded_total{reason}`). It records the answer
in the impression log (when on) and returns it (a `RankAnswer` with `request_id`, `experiment` and
`variant`); `timings` holds the stages. The request id is the client's when it sent one, else a new
random one. Interleaved answers hold each id once, each item with the `variant` (model) whose team
contributed it; both variants rank the same candidates (the union of what each retrieves, or the
request's own).

Given the request's raw bytes (`raw`), a cached answer is kept in the fleet's memo of repeated requests
(`service.ranking.repeats`); `repeated(fleet, raw)` finds it again and `serve_repeat` serves it as
`serve_rank` would have (a new request id, the impression record, the shadow's copy, the metrics),
without parsing, context or cache look-up.
"""

from __future__ import annotations

import os
import random
import time

import orjson

from service.core.answer import RankAnswer
from service.core.errors import DeadlineExceeded, ModelFailure
from service.core.schemas import RankRequest
from service.ops.metrics import DEGRADED
from service.ranking.fleet import Fleet
from service.ranking.ranker import Timings
from service.ranking.repeats import Repeat
from service.ranking.routing import assign, team_draft
from service.ranking.served_model import ServedModel
from service.ranking.shadow import ShadowScorer
from service.store.impressions import ImpressionLog

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
    raw: bytes | None = None,
) -> RankAnswer:
    """`timings`: the request's, started when it arrived (the budget counts from then); `raw`: the bytes
    the request was parsed from, to answer them again from memory while the ranking is cached."""
    deadline = timings.started + budget_s
    request_id = request.request_id or new_request_id()
    routing = fleet.routing
    assignment = assign(routing, request.user_id, request_id)
    model = fleet.serving(assignment.model)
    try:
        if assignment.partner is not None:
            partner = fleet.serving(assignment.partner)
            answer = await _interleave(model, partner, request, request_id, timings, deadline)
        else:
            model.requests += 1
            answer = await model.ranker.rank(request, timings, deadline=deadline)
    except (DeadlineExceeded, ModelFailure) as exc:
        answer = _degraded(model, request, timings, exc)
    if assignment.partner is None and routing.shadow and routing.shadow != model.name:
        shadow.offer(routing.shadow, request, answer.items)
    answer.request_id = request_id
    answer.experiment = assignment.experiment
    answer.variant = assignment.variant
    if impressions is not None:
        impressions.record(request, answer)
    if raw is not None:  # kept only when cached in memory, outside experiments (`RepeatedRequests.remember`)
        fleet.repeats.remember(raw, request, answer, model, routing)
    return answer


def repeated(fleet: Fleet, raw: bytes) -> Repeat | None:
    """The answer remembered for these bytes, while it is still the one `serve_rank` would give."""
    return fleet.repeats.lookup(raw, fleet.routing, fleet.models)


def serve_repeat(shadow: ShadowScorer, impressions: ImpressionLog | None, repeat: Repeat, timings: Timings) -> bytes:
    """A repeated request's response body: the remembered answer under a new request id, recorded and
    counted as `serve_rank` records and counts a cache hit (outside experiments: `Repeat` holds none)."""
    model = repeat.model
    model.requests += 1
    model.ranker.count_cache("hit")
    model.ranker.cache.count_local_hit()
    request_id = new_request_id()
    shadow_model = repeat.routing.shadow
    if shadow_model and shadow_model != model.name:
        shadow.offer(shadow_model, repeat.request, repeat.answer.items)
    if impressions is not None:
        impressions.record_row(repeat.impression(request_id))
    timings.add("cache", timings.started)
    timings.finish(model.ranker.observe)
    return repeat.body(request_id)


def _degraded(model: ServedModel, request: RankRequest, timings: Timings, exc: Exception) -> RankAnswer:
    """The model's fallback ranking, when its deadline passed or the model failed."""
    reason = "deadline" if isinstance(exc, DeadlineExceeded) else "model_error"
    DEGRADED.labels(reason=reason).inc()
    return model.ranker.fallback(request, reason, timings)


async def _interleave(
    first: ServedModel,
    second: ServedModel,
    request: RankRequest,
    seed: str,
    timings: Timings,
    deadline: float = float("inf"),
) -> RankAnswer:
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
    answer = RankAnswer(
        items=orjson.dumps(items),  # what the impression log records: without display fields
        task=request.task,
        cache="bypass",
        model=None,
        model_version=f"{first.version}+{second.version}",
        level=ctx.level,
        shown=orjson.dumps(first.bundle.entities.decorate_items(items)) if request.display else None,
        returned=len(items),
        available=len(pool),
        warnings=first.ranker.warnings(request, ctx),
        context=ctx.explain() if request.explain else None,
    )
    timings.finish()
    return answer
