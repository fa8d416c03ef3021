"""A user's engagement history: how long it is kept, and the kind of each event.

Contract: the history is the user's last `HISTORY_LENGTH` clicks or plays, most recent first, each
with its `event_kind`; the service keeps it in Redis (`history_key`), the bundle holds a snapshot of
it, and training rebuilds it from the log, all with these definitions.
"""

from __future__ import annotations

import numpy as np

from unirank.core.vocab import Task

HISTORY_LENGTH = 50
HISTORY_KINDS = 5  # 0 unknown, then (search | recommendation) x (click | play)


def history_key(user_id: str) -> str:
    """The Redis list of a user's history. "u:" and the id are the key's hash tag, so a user's history and
    counters share one Redis Cluster slot (an id holding braces too: both keys cut the same tag from it,
    never an empty one, which Redis would ignore)."""
    return f"ur:user:{{u:{user_id}}}:hist"


def counters_key(user_id: str) -> str:
    """The Redis hash of a user's action counters ("click", "search:click", ...)."""
    return f"ur:user:{{u:{user_id}}}:cnt"


# Before hash tags (unirank 0.x up to this change); `unirank redis migrate-keys` moves them.
LEGACY_HISTORY_PREFIX, LEGACY_COUNTERS_PREFIX = "ur:hist:", "ur:cnt:"


def event_kind(task: str, played: bool) -> int:
    """Kind of a history event: where it came from (a search, or a recommendation surface) and how far
    it went (click, or play): 1 search-click, 2 search-play, 3 rec-click, 4 rec-play."""
    return (1 if task == Task.SEARCH else 3) + bool(played)


def event_kinds(tasks, played) -> np.ndarray:
    """`event_kind` of each event of a log."""
    return np.fromiter(map(event_kind, tasks, played), np.int64, count=len(tasks))
