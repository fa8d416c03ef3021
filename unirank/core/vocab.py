"""The tasks and personalization levels, defined once: every package imports them from here.

Contract: `Task` and `Level` are `str` enums, so a member equals its plain string (`Task.SEARCH ==
"search"`), encodes as it in JSON and in Parquet, and request bodies may carry either. `TaskName` and
`LevelName` are the same sets as `Literal` types, for pydantic models and the OpenAPI document;
`TASKS` and `PERSONALIZATION_LEVELS` are their values in order (the order is part of the model: a task's
index is its embedding row, a level's index its rank).
"""

from __future__ import annotations

from enum import Enum
from typing import Literal, get_args


class _Name(str, Enum):
    """A name that is its own string (`enum.StrEnum` before Python 3.11)."""

    def __str__(self) -> str:
        return self.value


class Task(_Name):
    SEARCH = "search"
    PREQUERY = "prequery"
    MORE_LIKE_THIS = "more_like_this"


class Level(_Name):
    """How much of the user the context carries: none, their cluster, or the user (features and history)."""

    NONE = "none"
    CLUSTER = "cluster"
    FULL = "full"


TaskName = Literal["search", "prequery", "more_like_this"]
LevelName = Literal["none", "cluster", "full"]

TASKS: tuple[str, ...] = tuple(t.value for t in Task)
PERSONALIZATION_LEVELS: tuple[str, ...] = tuple(level.value for level in Level)

# the Literal types must list exactly the enums' values, in order
assert get_args(TaskName) == TASKS, (get_args(TaskName), TASKS)
assert get_args(LevelName) == PERSONALIZATION_LEVELS, (get_args(LevelName), PERSONALIZATION_LEVELS)
