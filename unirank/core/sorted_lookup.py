"""Exact look-ups in sorted int64 key tables (the click statistics: `query * (E+1) + entity`,
`source * (E+1) + entity`), as float32 values, 0 where a key is absent.

Contract: `lookup(keys, values, query)` and `lookup_in_range(keys, columns, prefix, e1, query)` give the same
value for the same key; the second finds one prefix's slice first (the service's one-context path).
"""

from __future__ import annotations

import numpy as np


def lookup(keys: np.ndarray, values: np.ndarray, query: np.ndarray) -> np.ndarray:
    if keys.size == 0 or query.size == 0:
        return np.zeros(query.shape, np.float32)
    if np.searchsorted(keys, query.min()) == np.searchsorted(keys, query.max(), side="right"):
        return np.zeros(query.shape, np.float32)  # no key in [min, max] (prequery: no query id)
    pos = np.minimum(np.searchsorted(keys, query), keys.size - 1)
    return np.where(keys[pos] == query, values[pos], 0.0).astype(np.float32)


def lookup_in_range(
    keys: np.ndarray, columns: tuple[np.ndarray, ...], prefix: int, e1: int, query: np.ndarray
) -> list[np.ndarray]:
    """`lookup` of several value columns sharing sorted `keys` (`prefix * e1 + entity`), for one prefix:
    the prefix's slice is found once, each entity's position in it once."""
    lo, hi = np.searchsorted(keys, (prefix * e1, (prefix + 1) * e1))
    if hi == lo:
        return [np.zeros(query.shape, np.float32) for _ in columns]
    wanted = query + prefix * e1
    pos = np.minimum(np.searchsorted(keys[lo:hi], wanted), hi - lo - 1) + lo
    found = keys[pos] == wanted
    return [np.where(found, values[pos], 0.0).astype(np.float32) for values in columns]
