"""Instant-search title index: token-prefix look-ups with one-edit typo tolerance.

"str" finds every title with a token starting with "str"; "strsnger" (a typo) still finds "stranger"
through single-deletion variants (SymSpell-style). Entity indices are 1-based; 0 means unknown.
Used by the synthetic generator (lexical impressions), by the features (match signals) and by the
service (candidate retrieval), so all three agree on what a prefix matches.
"""

from __future__ import annotations

from collections import defaultdict

import numpy as np

from unirank.core.text import tokens

MAX_PREFIX = 16
MIN_FUZZY = 3


def _deletions(word: str) -> set[str]:
    return {word[:i] + word[i + 1 :] for i in range(len(word))}


class TitleIndex:
    def __init__(self, normalized_titles: list[str]):
        """normalized_titles[i] is the title of entity i (index 0 is unused)."""
        buckets: dict[str, list[int]] = defaultdict(list)
        for idx, title in enumerate(normalized_titles):
            if idx == 0:
                continue
            for tok in set(tokens(title)):
                for n in range(1, min(len(tok), MAX_PREFIX) + 1):
                    buckets[tok[:n]].append(idx)
        self.prefixes: dict[str, np.ndarray] = {k: np.unique(np.asarray(v, dtype=np.int64)) for k, v in buckets.items()}
        fuzzy: dict[str, set[str]] = defaultdict(set)
        for key in self.prefixes:
            if len(key) >= MIN_FUZZY:
                for variant in _deletions(key):
                    fuzzy[variant].add(key)
        self.fuzzy = dict(fuzzy)
        self._empty = np.zeros(0, dtype=np.int64)

    @staticmethod
    def _prefixes(normalized_title: str) -> set[str]:
        return {tok[:n] for tok in set(tokens(normalized_title)) for n in range(1, min(len(tok), MAX_PREFIX) + 1)}

    def add(self, idx: int, normalized_title: str) -> None:
        """Indexes one more title (an entity added at run time)."""
        for key in self._prefixes(normalized_title):
            known = self.prefixes.get(key)
            self.prefixes[key] = np.union1d(known, [idx]) if known is not None else np.array([idx], np.int64)
            if known is None and len(key) >= MIN_FUZZY:
                for variant in _deletions(key):
                    self.fuzzy.setdefault(variant, set()).add(key)

    def remove(self, idx: int, normalized_title: str) -> None:
        """Forgets an entity's old title (its title changed); emptied keys stay, matching nothing."""
        for key in self._prefixes(normalized_title):
            if (known := self.prefixes.get(key)) is not None:
                self.prefixes[key] = known[known != idx]

    def _token_matches(self, tok: str) -> np.ndarray:
        exact = self.prefixes.get(tok[:MAX_PREFIX])
        if exact is not None:
            return exact
        if len(tok) < MIN_FUZZY:
            return self._empty
        tok = tok[:MAX_PREFIX]
        variants = _deletions(tok) | {tok}
        keys: set[str] = set()
        for v in variants:
            keys |= self.fuzzy.get(v, set())
            if v != tok and v in self.prefixes:  # the typo inserted one character
                keys.add(v)
        keys = {k for k in keys if abs(len(k) - len(tok)) <= 1}
        if not keys:
            return self._empty
        return np.unique(np.concatenate([self.prefixes[k] for k in keys]))

    def lookup(self, normalized_query: str) -> np.ndarray:
        """Entities matching every query token as a prefix (typo-tolerant); if none match all, any."""
        toks = tokens(normalized_query)
        if not toks:
            return self._empty
        sets = [self._token_matches(t) for t in toks]
        result = sets[0]
        for s in sets[1:]:
            result = np.intersect1d(result, s, assume_unique=True)
        if result.size or len(sets) == 1:
            return result
        return np.unique(np.concatenate(sets))


def match_features(query: str, title: str) -> tuple[float, float]:
    """(title starts with the query, share of query tokens that prefix a title token), for a normalised
    query and title (`unirank.core.text.normalize`: tokens of letters and digits, one space apart)."""
    return match_features_many(query, [title])[0]


def match_features_many(query: str, titles: list[str]) -> list[tuple[float, float]]:
    """`match_features(query, title)` for each title, the query split once. A query token prefixes a title
    token exactly when " token" occurs in " title": the token holds no space, and every space in " title"
    starts a token."""
    if not query:
        return [(0.0, 0.0)] * len(titles)
    qt = [" " + q for q in tokens(query)]
    if len(qt) == 1:  # most keystrokes: one token, so the share is 0 or 1
        (q,) = qt
        return [(float(title.startswith(query)), float(q in " " + title)) for title in titles]
    n = len(qt)
    out = []
    for title in titles:
        spaced = " " + title
        out.append((float(title.startswith(query)), sum(1 for q in qt if q in spaced) / n))
    return out
