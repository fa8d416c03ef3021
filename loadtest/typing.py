"""How many of a typing session's keystroke requests a browser cache answers, given the service's
`Cache-Control: max-age` on GET /search.

Contract: `visits(tables, n, seed)` draws `n` visits of the search box from a bundle's catalogue: a visit
is Geometric(0.5) searches (at least one), each for a title drawn by popularity in the country (with the simulated
users' keyword rate: one word of it; and their typo rate: one letter wrong), typed key by key at
KEY_INTERVAL_S, giving up after 1 + Geometric(0.22) + 2 keys as the simulated users do
(`unirank.loop.simulate`); between searches the box is cleared and THINK_S pass. A request is a
keystroke's URL; a browser cache answers it when the same URL was fetched in the same visit less than
max-age seconds before. `browser_cache_share(visits, max_age_s)` counts them, and what a shared cache
(a CDN keyed by URL) would answer when visits arrive at a given rate.
"""

from __future__ import annotations

from urllib.parse import urlencode

import numpy as np

from model_export.synth import SynthParams
from unirank.core.tables import FeatureTables

KEY_INTERVAL_S = 0.15
THINK_S = 8.0
LETTERS = "abcdefghijklmnopqrstuvwxyz"


def search_url(query: str, country: str = "US", k: int = 20) -> str:
    return "/search?" + urlencode({"q": query, "country": country, "k": k})


def visits(tables: FeatureTables, n: int, seed: int = 0, country: str = "US") -> list[list[tuple[float, str]]]:
    rng = np.random.default_rng(seed)
    params = SynthParams()
    c = tables.country_index.get(country, 0)
    pop = tables.pop[:, c].astype(np.float64)
    pop[0] = 0.0
    pop = pop / pop.sum()
    out = []
    for _ in range(n):
        t, requests = 0.0, []
        for _ in range(int(rng.geometric(0.5))):  # at least one
            text = tables.norm_titles[int(rng.choice(len(pop), p=pop))]
            if rng.random() < params.keyword_rate:
                words = text.split()
                text = words[int(rng.integers(len(words)))]
            if rng.random() < params.typo_rate and len(text) > 3:
                i = int(rng.integers(1, len(text)))
                text = text[:i] + LETTERS[rng.integers(26)] + text[i + 1 :]
            keys = min(len(text), 1 + int(rng.geometric(0.22)) + 2)
            typed = None
            for i in range(1, keys + 1):
                query = text[:i].strip()
                t += KEY_INTERVAL_S
                if query and query != typed:
                    requests.append((t, search_url(query, country)))
                    typed = query
            t += THINK_S
        out.append(requests)
    return out


def _answered(timeline: list[tuple[float, str]], max_age_s: float) -> int:
    """Requests a cache holding each answer for max_age_s answers (time order)."""
    fetched: dict[str, float] = {}
    answered = 0
    for t, url in sorted(timeline):
        if url in fetched and t - fetched[url] < max_age_s:
            answered += 1
        else:
            fetched[url] = t
    return answered


def browser_cache_share(
    all_visits: list[list[tuple[float, str]]], max_age_s: float, visits_per_s: float = 2.0, seed: int = 0
) -> dict:
    """Per browser (each visit its own cache), and for a shared cache (a CDN) in front of visits that start
    at `visits_per_s` on average (Poisson)."""
    total = sum(len(v) for v in all_visits)
    answered = sum(_answered(v, max_age_s) for v in all_visits)
    starts = np.cumsum(np.random.default_rng(seed).exponential(1.0 / visits_per_s, len(all_visits)))
    shared = _answered(
        [(start + t, url) for start, v in zip(starts, all_visits, strict=True) for t, url in v], max_age_s
    )
    return {
        "visits": len(all_visits),
        "requests": total,
        "answered_by_browser_cache": answered,
        "share": answered / max(total, 1),
        "shared_cache_share": shared / max(total, 1),
        "shared_cache_visits_per_s": visits_per_s,
        "max_age_s": max_age_s,
        "model": f"{__name__}: keys every {KEY_INTERVAL_S}s, {THINK_S}s between searches, the simulated users' "
        "keyword and typo rates",
    }
