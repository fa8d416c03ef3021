"""A user's engagement history: how long it is kept, and the kind of each event.

Contract: the history is the user's last `HISTORY_LENGTH` clicks or plays, most recent first, each
with its `event_kind`; the service keeps it in Redis, the bundle holds a snapshot of it, and training
rebuilds it from the log, all with these definitions.
"""

from __future__ import annotations

import numpy as np

HISTORY_LENGTH = 50
HISTORY_KINDS = 5  # 0 unknown, then (search | recommendation) x (click | play)


def event_kind(task: str, played: bool) -> int:
    """Kind of a history event: where it came from (a search, or a recommendation surface) and how far
    it went (click, or play): 1 search-click, 2 search-play, 3 rec-click, 4 rec-play."""
    return (1 if task == "search" else 3) + bool(played)


def event_kinds(tasks, played) -> np.ndarray:
    """`event_kind` of each event of a log."""
    return np.fromiter(map(event_kind, tasks, played), np.int64, count=len(tasks))
