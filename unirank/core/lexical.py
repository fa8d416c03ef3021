"""Instant-search text indexes: token-prefix look-ups with one-edit typo tolerance, and the lexical
evidence the features read from them.

"str" finds every text with a token starting with "str"; "strsnger" (a typo) still finds "stranger"
through single-deletion variants (SymSpell-style). Entity indices are 1-based; 0 means unknown.
One `TextIndex` holds the titles, another the facets (genre names and catalogue tags). Used by the
synthetic generator (lexical impressions), by the features (match signals) and by the service
(candidate retrieval), so all three agree on what a prefix matches.
"""

from __future__ import annotations

import math
from collections import defaultdict

import numpy as np

from unirank.core.text import tokens

MAX_PREFIX = 16
MIN_FUZZY = 3
BM25_K1, BM25_B = 1.2, 0.75  # Robertson's defaults, as bm25s uses them
# the dense features `lexical_evidence` computes, in its column order
LEXICAL_FEATURES = ("match_position", "title_bm25", "typo_match", "facet_match")


def _deletions(word: str) -> set[str]:
    return {word[:i] + word[i + 1 :] for i in range(len(word))}


def _prefix_positions(normalized_text: str) -> dict[str, int]:
    """Every token prefix of the text (up to MAX_PREFIX characters) -> the first token it starts."""
    out: dict[str, int] = {}
    for pos, tok in enumerate(tokens(normalized_text)):
        for n in range(1, min(len(tok), MAX_PREFIX) + 1):
            out.setdefault(tok[:n], pos)
    return out


class TextIndex:
    def __init__(self, normalized_texts: list[str]):
        """normalized_texts[i] is the text of entity i (index 0 is unused)."""
        buckets: dict[str, list[tuple[int, int]]] = defaultdict(list)
        lengths = np.zeros(len(normalized_texts), np.int32)
        for idx, text in enumerate(normalized_texts):
            if idx == 0 or not text:
                continue
            lengths[idx] = len(tokens(text))
            for key, pos in _prefix_positions(text).items():
                buckets[key].append((idx, pos))
        # per prefix: the entities whose text has a token starting with it (sorted), and the position of
        # the first such token in each, aligned with them
        self.prefixes: dict[str, np.ndarray] = {}
        self.positions: dict[str, np.ndarray] = {}
        for key, pairs in buckets.items():
            both = np.asarray(pairs, np.int64)  # entities come in order, each once per key
            self.prefixes[key] = both[:, 0]
            self.positions[key] = both[:, 1].astype(np.int16)
        fuzzy: dict[str, set[str]] = defaultdict(set)
        for key in self.prefixes:
            if len(key) >= MIN_FUZZY:
                for variant in _deletions(key):
                    fuzzy[variant].add(key)
        self.fuzzy = dict(fuzzy)
        self.lengths = lengths  # tokens per text, for BM25's length normalisation
        self.n_docs = int((lengths > 0).sum())
        self.avg_length = float(lengths[lengths > 0].mean()) if self.n_docs else 1.0  # of the texts built with
        self._empty = np.zeros(0, dtype=np.int64)

    def add(self, idx: int, normalized_text: str) -> None:
        """Indexes one more text (an entity added at run time)."""
        if idx >= len(self.lengths):
            self.lengths = np.concatenate([self.lengths, np.zeros(idx + 1 - len(self.lengths), np.int32)])
        if not normalized_text:
            return
        self.lengths[idx] = len(tokens(normalized_text))
        self.n_docs += 1
        for key, pos in _prefix_positions(normalized_text).items():
            known = self.prefixes.get(key)
            if known is None:
                self.prefixes[key] = np.array([idx], np.int64)
                self.positions[key] = np.array([pos], np.int16)
                if len(key) >= MIN_FUZZY:
                    for variant in _deletions(key):
                        self.fuzzy.setdefault(variant, set()).add(key)
                continue
            at = int(np.searchsorted(known, idx))
            if at < len(known) and known[at] == idx:
                self.positions[key][at] = pos
            else:
                self.prefixes[key] = np.insert(known, at, idx)
                self.positions[key] = np.insert(self.positions[key], at, pos)

    def remove(self, idx: int, normalized_text: str) -> None:
        """Forgets an entity's old text (it changed); emptied keys stay, matching nothing."""
        if not normalized_text:
            return
        self.lengths[idx] = 0
        self.n_docs -= 1
        for key in _prefix_positions(normalized_text):
            if (known := self.prefixes.get(key)) is not None:
                keep = known != idx
                self.prefixes[key], self.positions[key] = known[keep], self.positions[key][keep]

    def _token_matches(self, tok: str, typos: bool = True) -> np.ndarray:
        exact = self.prefixes.get(tok[:MAX_PREFIX])
        if exact is not None:
            return exact
        return self._typo_matches(tok[:MAX_PREFIX]) if typos else self._empty

    def _typo_matches(self, tok: str) -> np.ndarray:
        """Entities with a token prefix one edit away from `tok` (which is no prefix itself)."""
        if len(tok) < MIN_FUZZY:
            return self._empty
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

    def lookup(self, normalized_query: str, typos: bool = True) -> np.ndarray:
        """Entities matching every query token as a prefix (one-edit typos tolerated unless `typos` is
        False); if none match all, any."""
        toks = tokens(normalized_query)
        if not toks:
            return self._empty
        sets = [self._token_matches(t, typos) for t in toks]
        result = sets[0]
        for s in sets[1:]:
            result = np.intersect1d(result, s, assume_unique=True)
        if result.size or len(sets) == 1:
            return result
        return np.unique(np.concatenate(sets))

    def idf(self, df: int) -> float:
        """BM25's inverse document frequency of a prefix found in `df` of the indexed texts."""
        return math.log(1.0 + (self.n_docs - df + 0.5) / (df + 0.5))


def _members(keys: np.ndarray, cand: np.ndarray) -> tuple[np.ndarray, np.ndarray]:
    """(whether each candidate is in the sorted `keys`, where it is there, clipped)."""
    at = np.minimum(np.searchsorted(keys, cand), len(keys) - 1)
    return keys[at] == cand, at


def lexical_evidence(query: str, cand: np.ndarray, titles: TextIndex, facets: TextIndex) -> np.ndarray:
    """(n, 4) float32, the LEXICAL_FEATURES of each candidate entity for a normalised query:

    - match_position: 1 / (1 + the index of the first title token the query's first token prefixes), 0 if none;
    - title_bm25: BM25 of the query against the title, each query token a prefix (at the keystroke the last
      word is unfinished) with the document frequency of that prefix, term frequency 1;
    - typo_match: share of query tokens that prefix no title in the catalogue but match this title within
      one edit (the typo the retrieval tolerated);
    - facet_match: share of query tokens that prefix one of the candidate's genre names or tags.
    """
    cand = np.asarray(cand, np.int64)
    out = np.zeros((len(cand), len(LEXICAL_FEATURES)), np.float32)
    toks = [t[:MAX_PREFIX] for t in tokens(query)]
    if not toks or not len(cand):
        return out
    lengths = titles.lengths[np.minimum(cand, len(titles.lengths) - 1)]
    saturation = (BM25_K1 + 1) / (1 + BM25_K1 * (1 - BM25_B + BM25_B * lengths / titles.avg_length))
    for j, tok in enumerate(toks):
        keys = titles.prefixes.get(tok)
        if keys is not None and keys.size:
            hit, at = _members(keys, cand)
            if j == 0:
                out[:, 0] = np.where(hit, 1.0 / (1.0 + titles.positions[tok][at]), 0.0)
            out[:, 1] += np.where(hit, titles.idf(keys.size) * saturation, 0.0)
        elif keys is None and (typo := titles._typo_matches(tok)).size:
            out[:, 2] += _members(typo, cand)[0]
        facet = facets.prefixes.get(tok)
        if facet is not None and facet.size:
            out[:, 3] += _members(facet, cand)[0]
    out[:, 2:] /= len(toks)
    return out


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
