"""Request bodies for each load scenario, drawn from a bundle's own catalogue (deterministic by seed)."""

from __future__ import annotations

from pathlib import Path

import numpy as np
import orjson

from loadtest.typing import search_url
from unirank.core.tables import FeatureTables


class Scenarios:
    def __init__(self, bundle: Path | str, seed: int = 0):
        self.tables = FeatureTables.load(Path(bundle) / "tables")
        self.rng = np.random.default_rng(seed)
        us = self.tables.country_index.get("US", 0)
        self.available = (
            np.flatnonzero(self.tables.avail[:, us])[1:] if us else np.arange(1, self.tables.n_entities + 1)
        )
        titles = [self.tables.norm_titles[i] for i in self.available]
        self.prefixes = sorted({t[:n] for t in titles for n in range(1, len(t) + 1) if t[:n].strip() == t[:n]})
        self.users = self.tables.user_ids[1:]

    def keystroke_hit(self) -> bytes:
        """The same few keystrokes over and over: a warm cache."""
        return orjson.dumps(
            {
                "task": "search",
                "country": "US",
                "query": self.prefixes[int(self.rng.integers(20))],
                "k": 20,
                "personalization": "cluster",
            }
        )

    def keystroke_get(self) -> bytes:
        """keystroke_hit's requests as the cacheable GET /search (the same prefixes: a warm cache)."""
        return search_url(self.prefixes[int(self.rng.integers(20))]).encode()

    def keystroke_miss(self, i: int) -> bytes:
        """Every request a key no earlier request used (prefix and k vary together)."""
        q = self.prefixes[i % len(self.prefixes)]
        return orjson.dumps(
            {
                "task": "search",
                "country": "US",
                "query": q,
                "k": 1 + (i // len(self.prefixes)) % 500,
                "personalization": "cluster",
                "user_id": self.users[i % len(self.users)],
            }
        )

    def rank_200(self) -> bytes:
        cand = self.rng.choice(self.available, min(200, len(self.available)), replace=False)
        return orjson.dumps(
            {
                "task": "prequery",
                "country": "US",
                "user_id": self.users[int(self.rng.integers(len(self.users)))],
                "candidates": [self.tables.entity_ids[i] for i in cand],
                "k": 20,
            }
        )

    def events_100(self) -> bytes:
        users = self.rng.choice(len(self.users), 100)
        ents = self.rng.choice(self.available, 100)
        actions = self.rng.choice(["impression", "impression", "click", "play"], 100)
        return orjson.dumps(
            [
                {"user_id": self.users[u], "task": "search", "entity_id": self.tables.entity_ids[e], "action": a}
                for u, e, a in zip(users, ents, actions, strict=True)
            ]
        )
