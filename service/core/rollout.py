"""The routing document: which model answers by default, the running experiment (A/B or interleaved),
the shadow model. Plain data that the control store keeps and the ranking reads.

Contract: `Routing` is what `PUT /admin/routing` takes and `GET /admin/routing` shows; `problems()`
lists what is wrong with it given the loaded models (name -> the tasks each serves). Imports nothing of
the service.
"""

from __future__ import annotations

import math
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
