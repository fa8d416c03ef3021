"""The unified context of UniCoRn: (user_id, query, country, source_entity_id, task), with imputation.

- search: the source entity is null;
- prequery: neither query nor source;
- more_like_this: a missing query is imputed from the tokens of the source entity's title.
Training and the service both build contexts here, so imputation is identical on both paths.
"""

from __future__ import annotations

from collections.abc import Callable
from dataclasses import dataclass

import numpy as np

from unirank.core.text import normalize
from unirank.core.vocab import PERSONALIZATION_LEVELS, TASKS, Task

TASK_INDEX = {task: i for i, task in enumerate(TASKS, start=1)}  # 0: unknown
N_TASKS = len(TASK_INDEX) + 1


@dataclass(frozen=True, slots=True)
class UnifiedContext:
    task: str
    country: str | None
    user_id: str | None
    query: str  # normalised; "" when none
    source_entity_id: str | None
    query_imputed: bool = False


def build_context(
    task: str,
    country: str | None,
    user_id: str | None,
    query: str | None,
    source_entity_id: str | None,
    source_title: Callable[[str], str | None],
    impute: bool = True,
) -> UnifiedContext:
    """Apply the imputation rules. source_title(entity_id) returns a title or None when unknown."""
    country = country.upper() if country else None
    if task == Task.SEARCH:
        return UnifiedContext(task, country, user_id, normalize(query), None)
    if task == Task.PREQUERY:
        return UnifiedContext(task, country, user_id, "", None)
    normalized = normalize(query)
    if not normalized and impute and source_entity_id is not None:
        normalized = normalize(source_title(source_entity_id))
        return UnifiedContext(task, country, user_id, normalized, source_entity_id, bool(normalized))
    return UnifiedContext(task, country, user_id, normalized, source_entity_id)


def personalization_rank(level: str) -> int:
    return PERSONALIZATION_LEVELS.index(level)


def blend_personalization(full: np.ndarray, cluster: np.ndarray, weight: float) -> np.ndarray:
    """Scores between the cluster-level (weight 0) and the fully personalized (weight 1) ones of the same
    candidates: interpolated in log-odds, so the result is still a probability and the order at the ends
    is exactly that of either score."""
    if weight >= 1.0:
        return full
    eps = np.float32(1e-7)
    f = np.clip(full, eps, 1 - eps).astype(np.float32)
    c = np.clip(cluster, eps, 1 - eps).astype(np.float32)
    logit = weight * np.log(f / (1 - f)) + (1 - weight) * np.log(c / (1 - c))
    return (1.0 / (1.0 + np.exp(-logit))).astype(np.float32)
