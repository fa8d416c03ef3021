"""Which model answers a /rank request: the default, an A/B experiment's variant, or two variants
interleaved (the routing document itself: `service.core.rollout`).

Contract: `assign(routing, user_id, request_id)` is a pure function of its arguments: the same user always
gets the same A/B variant of an experiment, on every worker and replica (a stable hash of the experiment's
name and the unit, never Python's `hash`); anonymous requests are assigned by request. `team_draft`
merges two rankings by team-draft interleaving (Radlinski et al., 2008) with coin flips drawn from the
request id.
"""

from __future__ import annotations

import functools
import hashlib
import struct
from dataclasses import dataclass

from service.core.rollout import INTERLEAVED, Routing


@dataclass(frozen=True, slots=True)
class Assignment:
    model: str  # the model that ranks (for interleaving: the first variant)
    experiment: str | None = None
    variant: str | None = None  # the A/B variant's model, "interleaved", or None outside an experiment
    partner: str | None = None  # interleaving: the second variant's model


def unit_hash(*parts: str) -> float:
    """A uniform number in [0, 1) from the parts; the same on every process, machine and version."""
    digest = hashlib.blake2b("\x1f".join(parts).encode(), digest_size=8).digest()
    return struct.unpack(">Q", digest)[0] / 2**64


@functools.lru_cache(maxsize=64)
def _outside_experiments(model: str) -> Assignment:
    return Assignment(model)


def assign(routing: Routing, user_id: str | None, request_id: str) -> Assignment:
    e = routing.experiment
    if e is None:
        return _outside_experiments(routing.default)
    if e.mode == "interleave":
        first, second = e.variants
        return Assignment(first.model, e.name, INTERLEAVED, second.model)
    unit = user_id if e.unit == "user" and user_id else f"request:{request_id}"
    x, total = unit_hash(e.name, unit), 0.0
    for v in e.variants:
        total += v.share
        if x < total:
            return Assignment(v.model, e.name, v.model)
    return Assignment(e.variants[-1].model, e.name, e.variants[-1].model)


def team_draft(first: list[str], second: list[str], k: int, seed: str) -> list[tuple[str, int]]:
    """Up to k ids, each with the team (0: first, 1: second) that contributed it. The team with fewer
    picks picks next, a tie goes to a coin flip; each team picks its best id not yet taken."""
    teams = (first, second)
    taken: set[str] = set()
    position, picks, out = [0, 0], [0, 0], []
    round_ = 0
    while len(out) < k:
        for t in (0, 1):
            while position[t] < len(teams[t]) and teams[t][position[t]] in taken:
                position[t] += 1
        left = [position[t] < len(teams[t]) for t in (0, 1)]
        if not any(left):
            break
        if picks[0] != picks[1]:
            team = 0 if picks[0] < picks[1] else 1
        else:
            team = 0 if unit_hash(seed, str(round_)) < 0.5 else 1
            round_ += 1
        if not left[team]:
            team = 1 - team
        entity = teams[team][position[team]]
        taken.add(entity)
        picks[team] += 1
        out.append((entity, team))
    return out
