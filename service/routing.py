"""Which model answers a /rank request: the default, an A/B experiment's variant, or two variants
interleaved; and which model scores a copy in the shadow.

Contract: `Routing` is what `PUT /admin/routing` takes and `GET /admin/routing` shows; `problems()`
lists what is wrong with it given the loaded models. `assign(routing, user_id, request_id)` is a pure
function of its arguments: the same user always gets the same A/B variant of an experiment, on every
worker and replica (a stable hash of the experiment's name and the unit, never Python's `hash`);
anonymous requests are assigned by request. `team_draft` merges two rankings by team-draft
interleaving (Radlinski et al., 2008) with coin flips drawn from the request id.
"""

from __future__ import annotations

import functools
import hashlib
import math
import struct
from dataclasses import dataclass
from typing import Annotated, Literal

from pydantic import BaseModel, ConfigDict, Field

INTERLEAVED = "interleaved"  # the variant of an interleaved answer (its items carry their own)

Name = Annotated[str, Field(pattern=r"^[A-Za-z0-9][A-Za-z0-9._-]{0,63}$", description="a model's name")]


class Variant(BaseModel):
    model_config = ConfigDict(extra="forbid", frozen=True)

    model: Name
    share: Annotated[float, Field(ge=0.0, le=1.0)]


class Experiment(BaseModel):
    model_config = ConfigDict(extra="forbid", frozen=True)

    name: Name
    mode: Literal["ab", "interleave"] = "ab"
    unit: Literal["user", "request"] = "user"
    variants: Annotated[list[Variant], Field(min_length=2, max_length=8)]


class Routing(BaseModel):
    model_config = ConfigDict(extra="forbid", frozen=True)

    default: Name = "default"
    experiment: Experiment | None = None
    shadow: Name | None = None

    def models(self) -> set[str]:
        """Every model this routing sends traffic (or shadow copies) to."""
        used = {self.default} | ({self.shadow} if self.shadow else set())
        return used | ({v.model for v in self.experiment.variants} if self.experiment else set())

    def problems(self, tasks_of: dict[str, list[str]]) -> list[dict]:
        """What is wrong given the loaded models (name -> the tasks each serves), as problems naming fields."""
        out = []

        def check(field: str, name: str) -> None:
            if name not in tasks_of:
                out.append({"field": field, "message": f"no model '{name}' is loaded", "type": "unknown_model"})
            elif self.default in tasks_of and (missing := set(tasks_of[self.default]) - set(tasks_of[name])):
                message = f"model '{name}' does not serve {', '.join(sorted(missing))}, which the default serves"
                out.append({"field": field, "message": message, "type": "tasks_not_covered"})

        if self.default not in tasks_of:
            out.append({"field": "default", "message": f"no model '{self.default}' is loaded", "type": "unknown_model"})
        if self.shadow:
            check("shadow", self.shadow)
        if self.experiment:
            e = self.experiment
            for i, v in enumerate(e.variants):
                check(f"experiment.variants[{i}].model", v.model)
            if not math.isclose(sum(v.share for v in e.variants), 1.0, abs_tol=1e-6):
                total = sum(v.share for v in e.variants)
                out.append(
                    {"field": "experiment.variants", "message": f"shares sum to {total:g}, not 1", "type": "shares"}
                )
            if len({v.model for v in e.variants}) < len(e.variants):
                out.append({"field": "experiment.variants", "message": "a model appears twice", "type": "duplicate"})
            if e.mode == "interleave" and len(e.variants) != 2:
                message = "interleaving compares exactly two variants"
                out.append({"field": "experiment.variants", "message": message, "type": "interleave"})
        return out


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
