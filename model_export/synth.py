"""Deterministic synthetic engagement logs for a streaming catalog, in the documented schema.

Structure a model can learn, with every part of the unified context mattering:
- Zipf popularity, a home country per entity (boosted there) and per-country availability;
- users with a country and a taste over genres drawn from a few latent taste clusters;
- titles from a word vocabulary where franchises and sequels share words;
- optionally (`themes` > 0) a hidden theme per entity that users have a taste for and that only the
  title's words reveal (they come mostly from the theme's vocabulary), as real titles carry what a
  title is about beyond its genre tags: the case title text features are for;
- optionally (`continuation` > 0) a search-to-recommendation transition: on a home-page visit after a
  search click on a franchise title, the row shows more of that franchise and the user takes it up
  far more often — what the user did last, and where, matters beyond their average taste;
- optionally (`session_intent` > 0) sessions with a short-term intent: for that share of search
  sessions, a genre drawn around the user's long-term taste pulls the session's taste toward it
  (`INTENT_WEIGHT`); the search looks for a title of it, a home-page visit before the search
  (recommendation -> search) and after it (search -> recommendation), and the title page of what was
  found (more like this) are clicked and played by the same pulled taste: what the user did in the last
  minutes says what they want next, beyond their average taste;
- search: the user types a title (or a keyword of it) keystroke by keystroke, sometimes with a typo;
  impressions are lexical candidates for each prefix; clicks depend on relevance and taste;
- prequery: impressions from popularity and taste; clicks by taste;
- more_like_this: clicks favour shared genres and franchise, and taste.
Everything is vectorised per task; Python loops run over sessions and unique prefixes, never events.
"""

from __future__ import annotations

import json
import shutil
from dataclasses import asdict, dataclass
from pathlib import Path

import numpy as np
import pyarrow as pa
import pyarrow.compute as pc
import pyarrow.parquet as pq
from tqdm import tqdm

from unirank.core.lexical import TextIndex
from unirank.core.schema import ENTITY_SCHEMA, EVENT_SCHEMA
from unirank.core.text import normalize
from unirank.core.vocab import Task

COUNTRIES = ("US", "GB", "CA", "DE", "FR", "ES", "IT", "BR", "MX", "IN", "JP", "KR")
COUNTRY_WEIGHTS = (0.34, 0.1, 0.06, 0.08, 0.07, 0.05, 0.04, 0.08, 0.05, 0.07, 0.04, 0.02)
GENRES = (
    "action",
    "comedy",
    "drama",
    "thriller",
    "horror",
    "romance",
    "scifi",
    "fantasy",
    "documentary",
    "animation",
    "crime",
    "family",
    "mystery",
    "adventure",
    "reality",
    "anime",
)
WORDS = """
stranger things dark crown house night star river city lost king queen shadow fire ice moon sun ocean
storm wild secret last first black white red blue golden silent broken hidden dream heart blood iron
glass paper ghost witch dragon empire legend kingdom mountain island road street garden winter summer
spring autumn rain snow wind thunder light dawn dusk midnight morning echo mirror window door bridge
tower castle forest desert valley canyon harbor station train ship plane rocket planet galaxy orbit
signal code cipher puzzle game hunter runner rider driver pilot doctor lawyer detective agent spy
soldier captain chef baker artist singer dancer writer teacher student family brothers sisters
daughter son mother father friends strangers lovers rivals heroes villains monsters robots aliens
zombies vampires wolves tigers lions eagles sharks horses cats dogs bears foxes ravens crows
diamond silver copper steel stone crystal velvet silk cotton honey sugar salt pepper coffee tea
wine whiskey money power glory honor justice freedom chaos order truth lies love hate fear hope
revenge escape return rise fall awakening origins reckoning journey quest voyage mission chase
heist trial verdict game show party wedding funeral holiday vacation summer camp school college
office hospital prison palace village farm ranch jungle arctic pacific atlantic northern southern
eastern western central royal grand little big tiny giant ancient modern future past eternal
""".split()  # noqa: SIM905 (a word list reads better as text)
WORDS = tuple(dict.fromkeys(WORDS))
THEME_WORDS = (
    "galaxy planet rocket orbit astronaut alien starship comet nebula cosmos",
    "ocean sea ship harbor pirate island sailor tide reef lighthouse",
    "heist detective murder verdict trial police witness suspect alibi case",
    "wedding lovers heart kiss romance bride darling valentine passion sweetheart",
    "ghost vampire zombie haunted curse demon nightmare blood grave possession",
    "chef kitchen baker recipe feast dinner bakery bistro dessert menu",
    "champion football boxing coach stadium race marathon league goal tournament",
    "soldier battle army general siege war regiment trenches frontline sniper",
    "witch wizard dragon spell sorcerer enchanted potion wand realm elf",
    "teacher student college campus exam classroom graduation dorm semester professor",
    "singer band song concert guitar melody rhythm stage opera jazz",
    "forest mountain wolves bears wilderness river canyon jungle safari glacier",
    "money bank fortune gold diamond billionaire stock market casino jackpot",
    "robot code hacker machine android algorithm cyber network virus circuit",
    "emperor king queen palace dynasty throne crown empire prince duchess",
    "farm ranch village harvest barn tractor orchard meadow cattle countryside",
)
TASK_EVENT_SHARE = {"search": 0.4, "prequery": 0.35, "more_like_this": 0.25}
SEARCH_IMPRESSIONS, PREQUERY_IMPRESSIONS, MLT_IMPRESSIONS = 10, 20, 15
DAYS = 28


@dataclass(frozen=True)
class SynthParams:
    users: int = 20_000
    entities: int = 5_000
    events: int = 1_000_000
    seed: int = 0
    taste_clusters: int = 8
    zipf_exponent: float = 1.0
    franchise_share: float = 0.3
    typo_rate: float = 0.1
    keyword_rate: float = 0.3
    themes: int = 0  # hidden title themes users have a taste for (0: off; at most len(THEME_WORDS))
    theme_weight: float = 1.0  # how much theme taste weighs against genre taste
    continuation: float = 0.0  # share of home-page visits that continue the franchise of the last search click
    session_intent: float = 0.0  # share of search sessions with a short-term intent (0: off)


INTENT_WEIGHT = 0.7  # an intent session's taste: this much the intent genre, the rest the user's own taste
INTENT_BEFORE, INTENT_MLT = 0.5, 0.5  # how often an intent session has a home visit before / a title page after
INTENT_GAP_S = (10.0, 300.0)  # seconds between an intent session's search and its home visits / title page


def _sigmoid(x: np.ndarray) -> np.ndarray:
    return 1.0 / (1.0 + np.exp(-x))


def _gumbel_topk(logits: np.ndarray, k: int, rng: np.random.Generator) -> np.ndarray:
    """Row-wise sample without replacement of k columns by Gumbel-top-k; -inf columns never win."""
    noisy = logits + rng.gumbel(size=logits.shape)
    k = min(k, logits.shape[1])
    top = np.argpartition(-noisy, k - 1, axis=1)[:, :k]
    order = np.argsort(-np.take_along_axis(noisy, top, axis=1), axis=1)
    top = np.take_along_axis(top, order, axis=1)
    valid = np.isfinite(np.take_along_axis(logits, top, axis=1))
    return np.where(valid, top, -1)


class _Catalog:
    """Entities (1-based indices), users and the latent structure that drives engagement."""

    def __init__(self, p: SynthParams, rng: np.random.Generator):
        E, U, G, C = p.entities, p.users, len(GENRES), len(COUNTRIES)
        self.p = p
        ranks = rng.permutation(E)
        self.pop = np.zeros(E + 1)
        self.pop[1:] = 1.0 / (ranks + 10.0) ** p.zipf_exponent
        self.quality = np.zeros(E + 1)
        self.quality[1:] = rng.normal(0, 0.5, E)
        self.home = np.zeros(E + 1, dtype=np.int64)
        self.home[1:] = rng.choice(C, E, p=COUNTRY_WEIGHTS)
        self.avail = rng.random((E + 1, C)) < 0.6
        self.avail[np.arange(E + 1), self.home] = True
        self.avail[0] = False
        self.kind = np.where(rng.random(E + 1) < 0.1, 1, 0)
        genre_pop = rng.dirichlet(np.ones(G) * 2)
        self.genres = np.zeros((E + 1, G), dtype=bool)
        n_genres = rng.integers(1, 4, E + 1)
        for k in range(3):
            g = rng.choice(G, E + 1, p=genre_pop)
            self.genres[np.arange(E + 1), g] |= k < n_genres
        self.year = rng.integers(1970, 2027, E + 1)
        self._titles(rng)
        # Users: country, activity and taste from latent clusters.
        self.user_country = rng.choice(C, U, p=COUNTRY_WEIGHTS)
        self.user_activity = rng.pareto(1.5, U) + 1.0
        self.user_activity /= self.user_activity.sum()
        self.user_cluster = rng.integers(0, p.taste_clusters, U)
        cluster_logits = rng.normal(0, 2.0, (p.taste_clusters, G))
        logits = cluster_logits[self.user_cluster] + rng.normal(0, 0.7, (U, G))
        self.taste = np.exp(logits - logits.max(1, keepdims=True))
        self.taste /= self.taste.sum(1, keepdims=True)
        genre_share = self.genres / np.maximum(self.genres.sum(1, keepdims=True), 1)
        self.genre_share = genre_share * G  # taste 1.0 means indifferent
        pop_c = self.pop[:, None] * np.where(self.home[:, None] == np.arange(C), 3.0, 1.0)
        self.pop_country = np.where(self.avail, pop_c, 0.0)  # (E+1, C)
        self.theme = np.zeros(E + 1, dtype=np.int64)
        if p.themes:  # its own generator: without themes the data is what it always was
            self._theme_titles(np.random.default_rng([p.seed, 1]))

    def _titles(self, rng: np.random.Generator) -> None:
        E = self.p.entities
        word_p = 1.0 / (np.arange(len(WORDS)) + 5.0)
        word_p /= word_p.sum()
        self.franchise = np.zeros(E + 1, dtype=np.int64)
        titles = [""] * (E + 1)
        idx = rng.permutation(np.arange(1, E + 1))
        n_fr = int(E * self.p.franchise_share)
        members = idx[:n_fr]
        fid, pos = 0, 0
        while pos < len(members):
            size = int(rng.integers(2, 6))
            group = members[pos : pos + size]
            fid += 1
            base = " ".join(rng.choice(WORDS, int(rng.integers(1, 3)), p=word_p))
            first = group[0]
            for j, e in enumerate(group):
                self.franchise[e] = fid
                self.genres[e] = self.genres[first] | self.genres[e] & (rng.random() < 0.3)
                if j == 0:
                    titles[e] = base
                elif rng.random() < 0.5:
                    titles[e] = f"{base} {j + 1}"
                else:
                    titles[e] = f"{base}: {rng.choice(WORDS, p=word_p)}"
            pos += size
        for e in idx[n_fr:]:
            words = rng.choice(WORDS, int(rng.integers(1, 4)), p=word_p)
            titles[e] = ("The " if rng.random() < 0.15 else "") + " ".join(words)
        self.titles = [t.title() if t else t for t in titles]
        self.norm_titles = [normalize(t) for t in self.titles]

    def _theme_titles(self, rng: np.random.Generator) -> None:
        """Themes, users' taste for them, and titles whose words come mostly from their theme."""
        E, U, T = self.p.entities, self.p.users, min(self.p.themes, len(THEME_WORDS))
        vocab = [w.split() for w in THEME_WORDS[:T]]
        fr_theme = rng.integers(0, T, self.franchise.max() + 1)  # a franchise keeps its theme
        self.theme[1:] = np.where(self.franchise[1:] > 0, fr_theme[self.franchise[1:]], rng.integers(0, T, E))
        logits = rng.normal(0, 2.0, (self.p.taste_clusters, T))[self.user_cluster] + rng.normal(0, 0.7, (U, T))
        self.theme_taste = np.exp(logits - logits.max(1, keepdims=True))
        self.theme_taste /= self.theme_taste.sum(1, keepdims=True)

        def words(theme: int, n: int) -> list[str]:
            return [str(rng.choice(vocab[theme])) if rng.random() < 0.8 else str(rng.choice(WORDS)) for _ in range(n)]

        bases: dict[int, list] = {}  # franchise -> [base title, members so far]
        for e in range(1, E + 1):
            f, n_words = self.franchise[e], int(rng.integers(1, 4))
            if not f:
                title = " ".join(words(self.theme[e], n_words))
            elif f not in bases:
                title = " ".join(words(self.theme[e], n_words))
                bases[f] = [title, 1]
            else:
                bases[f][1] += 1
                title = (
                    f"{bases[f][0]} {bases[f][1]}"
                    if rng.random() < 0.5
                    else f"{bases[f][0]}: {words(self.theme[e], 1)[0]}"
                )
            self.titles[e] = title.title()
        self.norm_titles = [normalize(t) for t in self.titles]

    def session_taste(self, users: np.ndarray, intent: np.ndarray | None = None) -> np.ndarray:
        """Genre taste of users[i] in a session with intent genre intent[i] (-1: none, the user's own)."""
        taste = self.taste[users]
        if intent is None or not (on := intent >= 0).any():
            return taste
        taste = taste.copy()
        taste[on] *= 1.0 - INTENT_WEIGHT
        taste[np.flatnonzero(on), intent[on]] += INTENT_WEIGHT
        return taste

    def draw_intent(self, users: np.ndarray, rng: np.random.Generator) -> np.ndarray:
        """A session's intent genre, around the user's long-term taste: half their taste, half uniform."""
        p = 0.5 * self.taste[users] + 0.5 / self.taste.shape[1]
        return (p.cumsum(1) > rng.random((len(users), 1))).argmax(1)

    def log_taste(self, users: np.ndarray, ents: np.ndarray, intent: np.ndarray | None = None) -> np.ndarray:
        """log taste of users[i] for ents[i, j] (genres, and themes when on) in a session with intent
        genre intent[i] (None or -1: none); ents may hold -1 pads (entity 0)."""
        safe = np.maximum(ents, 0)
        share = self.genre_share[safe]  # (R, K, G)
        t = np.log(np.maximum(np.einsum("rkg,rg->rk", share, self.session_taste(users, intent)), 1e-3))
        if self.p.themes:
            theme = self.theme_taste[users[:, None], self.theme[safe]] * self.theme_taste.shape[1]  # 1.0: indifferent
            t = t + self.p.theme_weight * np.log(np.maximum(theme, 1e-3))
        return t


Catalog = _Catalog


def world(p: SynthParams) -> Catalog:
    """The hidden state `generate(p, ...)` draws from — tastes, quality, franchises, themes — rebuilt from
    the parameters (the same seed gives the same world): the ground truth simulated users act on."""
    return _Catalog(p, np.random.default_rng(p.seed))


def _pick_users(cat: _Catalog, n: int, rng: np.random.Generator) -> np.ndarray:
    return rng.choice(cat.p.users, n, p=cat.user_activity)


def _sample_by_country(cat, countries, k, rng, weights_fn=None):
    """For each row, k entities drawn from its country's availability-weighted popularity."""
    out = np.zeros((len(countries), k), dtype=np.int64)
    for c in np.unique(countries):
        rows = np.flatnonzero(countries == c)
        w = cat.pop_country[:, c] if weights_fn is None else weights_fn(c)
        out[rows] = rng.choice(len(w), (len(rows), k), p=w / w.sum())
    return out


@dataclass
class _Drawn:
    """One task's requests (R) and impressions (R, K): who, where, what was shown, its click logit; `session`
    (search: each request's session), `intent` (each request's intent genre, -1 none), `ts` (seconds, when
    drawn by the caller), `sessions` (search: each session's user, target and intent)."""

    users: np.ndarray
    country: np.ndarray
    query: np.ndarray | None
    source: np.ndarray | None
    ents: np.ndarray
    logit: np.ndarray
    intent: np.ndarray
    session: np.ndarray | None = None
    ts: np.ndarray | None = None
    sessions: dict | None = None


def _concat(a: _Drawn, b: _Drawn) -> _Drawn:
    """Two draws of one task (no query, no sessions) as one, a's requests first; times are the caller's."""
    fields = ("users", "country", "query", "source", "ents", "logit", "intent")
    return _Drawn(*(None if getattr(a, f) is None else np.concatenate([getattr(a, f), getattr(b, f)]) for f in fields))


def _search(cat: _Catalog, n_events: int, rng: np.random.Generator, intent_rng: np.random.Generator | None = None):
    p = cat.p
    n_sessions = max(1, int(n_events / (SEARCH_IMPRESSIONS * 0.75) / 4.5))
    users = _pick_users(cat, n_sessions, rng)
    country = cat.user_country[users]
    pool = _sample_by_country(cat, country, 30, rng)
    intent = np.full(n_sessions, -1)
    if intent_rng is not None:
        on = intent_rng.random(n_sessions) < p.session_intent
        intent[on] = cat.draw_intent(users[on], intent_rng)
    taste = cat.log_taste(users, pool, intent)
    target = pool[np.arange(n_sessions), np.argmax(taste + rng.gumbel(size=pool.shape), 1)]
    # What the user types: the title or one keyword of it, stopping after a few keystrokes.
    stop = 1 + rng.geometric(0.22, n_sessions)
    keyword = rng.random(n_sessions) < p.keyword_rate
    typo = rng.random(n_sessions) < p.typo_rate
    letters = np.array(list("abcdefghijklmnopqrstuvwxyz"))
    req_session, req_query = [], []
    for s in range(n_sessions):
        text = cat.norm_titles[target[s]]
        if keyword[s]:
            words = text.split()
            text = words[rng.integers(len(words))]
        if typo[s] and len(text) > 3:
            i = int(rng.integers(1, len(text)))
            text = text[:i] + letters[rng.integers(26)] + text[i + 1 :]
        last = None
        for n in range(1, min(len(text), stop[s]) + 1):
            prefix = text[:n].strip()
            if prefix and prefix != last:
                req_session.append(s)
                req_query.append(prefix)
                last = prefix
    req_session = np.asarray(req_session)
    index = TextIndex(cat.norm_titles)
    # Candidates per unique (prefix, country): the 30 most popular lexical matches.
    keys = [(q, int(country[s])) for q, s in zip(req_query, req_session, strict=True)]
    uniq = {k: i for i, k in enumerate(dict.fromkeys(keys))}
    pools = np.full((len(uniq), 30), -1, dtype=np.int64)
    for (q, c), i in uniq.items():
        m = index.lookup(q)
        m = m[cat.avail[m, c]]
        if m.size:
            m = m[np.argsort(-cat.pop_country[m, c])[:30]]
            pools[i, : m.size] = m
    req_pool = pools[[uniq[k] for k in keys]]
    rc = country[req_session]
    logits = np.where(req_pool > 0, np.log(cat.pop_country[np.maximum(req_pool, 0), rc[:, None]] + 1e-12), -np.inf)
    shown = _gumbel_topk(logits, SEARCH_IMPRESSIONS, rng)
    ents = np.where(shown >= 0, np.take_along_axis(req_pool, np.maximum(shown, 0), 1), -1)
    ru = users[req_session]
    is_target = ents == target[req_session][:, None]
    prefix_match = np.array(
        [
            [cat.norm_titles[e].startswith(q) if e > 0 else False for e in row]
            for q, row in zip(req_query, ents, strict=True)
        ]
    )
    ri = intent[req_session]
    logit = search_logit(cat, ru, ents, is_target, prefix_match, ri)
    query = np.asarray(req_query, dtype=object)
    sessions = {"users": users, "target": target, "intent": intent}
    return _Drawn(ru, rc, query, None, ents, logit, ri, session=req_session, sessions=sessions)


def _prequery(
    cat: _Catalog, n_events: int, rng: np.random.Generator, users: np.ndarray | None = None, intent=None
) -> _Drawn:
    """Home-page rows; `users` (and their sessions' `intent`) given: one row each, else n_events' worth."""
    if users is None:
        users = _pick_users(cat, max(1, n_events // PREQUERY_IMPRESSIONS), rng)
    n = len(users)
    intent = np.full(n, -1) if intent is None else intent
    country = cat.user_country[users]
    size = min(400, cat.p.entities)
    pool = np.zeros((n, size), dtype=np.int64)
    for c in np.unique(country):
        pool[country == c] = np.argsort(-cat.pop_country[:, c])[:size]
    taste = cat.log_taste(users, pool)
    pop = cat.pop_country[pool, country[:, None]]
    logits = np.where(pop > 0, np.log(pop + 1e-12) + 0.5 * taste, -np.inf)
    shown = _gumbel_topk(logits, PREQUERY_IMPRESSIONS, rng)
    ents = np.where(shown >= 0, np.take_along_axis(pool, np.maximum(shown, 0), 1), -1)
    return _Drawn(users, country, None, None, ents, _prequery_logit(cat, users, ents, intent), intent)


def search_logit(
    cat: Catalog,
    users: np.ndarray,
    ents: np.ndarray,
    is_target: np.ndarray,
    prefix_match: np.ndarray,
    intent: np.ndarray | None = None,
) -> np.ndarray:
    """Click logit of a search result: the title the user looks for, a title starting with what was
    typed, taste (the session's, with `intent`), quality, popularity."""
    return (
        -3.2
        + 3.5 * is_target
        + 0.8 * prefix_match
        + 1.2 * cat.log_taste(users, ents, intent)
        + cat.quality[np.maximum(ents, 0)]
        + 0.3 * np.log(cat.pop[np.maximum(ents, 0)] * len(cat.pop) + 1e-9) / 3
    )


def mlt_logit(
    cat: Catalog,
    users: np.ndarray,
    ents: np.ndarray,
    jaccard: np.ndarray,
    same_franchise: np.ndarray,
    intent: np.ndarray | None = None,
):
    """Click logit of a more-like-this result: genres shared with the source, its franchise, taste (the
    session's, with `intent`), quality."""
    return (
        -3.0
        + 2.0 * jaccard
        + 2.5 * same_franchise
        + 1.0 * cat.log_taste(users, ents, intent)
        + cat.quality[np.maximum(ents, 0)]
    )


def play_probability(cat: Catalog, users: np.ndarray, ents: np.ndarray, intent: np.ndarray | None = None) -> np.ndarray:
    """P(play | click), by the session's taste with `intent`."""
    return _sigmoid(0.5 + 0.8 * cat.log_taste(users, ents, intent) + cat.quality[np.maximum(ents, 0)])


def prequery_logit(cat: Catalog, users: np.ndarray, ents: np.ndarray, intent: np.ndarray | None = None) -> np.ndarray:
    """Click logit of a home-page recommendation: taste (the session's, with `intent`), quality, popularity."""
    return _prequery_logit(cat, users, ents, intent)


def _prequery_logit(cat: _Catalog, users: np.ndarray, ents: np.ndarray, intent: np.ndarray | None = None) -> np.ndarray:
    safe = np.maximum(ents, 0)
    return (
        -3.0
        + 1.8 * cat.log_taste(users, ents, intent)
        + cat.quality[safe]
        + 0.3 * np.log(cat.pop[safe] * len(cat.pop) + 1e-9) / 3
    )


CONTINUATION_SLOTS, CONTINUATION_BOOST = 3, 3.0


def _continue_franchises(cat: _Catalog, last_search: tuple, users, country, ts, ents, clicked, played, rng):
    """Home-page visits after a search click on a franchise title: with probability `continuation`, the
    row's last slots show more of that franchise and its titles are clicked far more often."""
    s_user, s_ts, s_ent = last_search
    order = np.lexsort((s_ts, s_user))
    s_user, s_ts, s_ent = s_user[order], s_ts[order], s_ent[order]
    span = float(max(s_ts.max(initial=0), ts.max(initial=0))) + 1.0
    pos = np.searchsorted(s_user * span + s_ts, users * span + ts, side="left") - 1
    ok = (pos >= 0) & (s_user[np.maximum(pos, 0)] == users)
    last = np.where(ok, s_ent[np.maximum(pos, 0)], 0)
    fr = cat.franchise[last]
    members: dict[int, np.ndarray] = {}
    for f in np.unique(fr[fr > 0]):
        members[f] = np.flatnonzero(cat.franchise == f)
    ents = ents.copy()
    for i in np.flatnonzero((fr > 0) & (rng.random(len(users)) < cat.p.continuation)):
        mates = [m for m in members[fr[i]] if m != last[i] and cat.avail[m, country[i]] and m not in ents[i]]
        for j, m in enumerate(mates[:CONTINUATION_SLOTS]):
            ents[i, -1 - j] = m
    boosted = (
        (cat.franchise[np.maximum(ents, 0)] == fr[:, None]) & (fr[:, None] > 0) & (ents != last[:, None]) & (ents > 0)
    )
    rows, cols = np.nonzero(boosted)
    logit = _prequery_logit(cat, users[rows], ents[rows, cols][:, None])[:, 0] + CONTINUATION_BOOST
    clicked, played = clicked.copy(), played.copy()
    clicked[rows, cols] = rng.random(rows.size) < _sigmoid(logit)
    play_p = _sigmoid(
        0.5 + 0.8 * cat.log_taste(users[rows], ents[rows, cols][:, None])[:, 0] + cat.quality[ents[rows, cols]]
    )
    played[rows, cols] = clicked[rows, cols] & (rng.random(rows.size) < play_p)
    return ents, clicked, played


def _more_like_this(
    cat: _Catalog, n_events: int, rng: np.random.Generator, users=None, source=None, intent=None
) -> _Drawn:
    """Title pages; `users`, their `source` titles and their sessions' `intent` given: one page each."""
    if users is None:
        users = _pick_users(cat, max(1, n_events // MLT_IMPRESSIONS), rng)
    n = len(users)
    intent = np.full(n, -1) if intent is None else intent
    country = cat.user_country[users]
    if source is None:
        source = _sample_by_country(cat, country, 1, rng)[:, 0]
    popular = _sample_by_country(cat, country, 30, rng)
    primary = np.argmax(cat.genres[source], 1)
    same_genre = np.zeros((n, 30), dtype=np.int64)
    for g in np.unique(primary):
        rows_g = primary == g
        sub = _sample_by_country(
            cat, country[rows_g], 30, rng, lambda c, g=g: cat.pop_country[:, c] * cat.genres[:, g] + 1e-12
        )
        same_genre[rows_g] = sub
    fr_members = {}
    for e in np.flatnonzero(cat.franchise):
        fr_members.setdefault(cat.franchise[e], []).append(e)
    franchise = np.zeros((n, 5), dtype=np.int64)
    for i, s in enumerate(source):
        if cat.franchise[s]:
            m = fr_members[cat.franchise[s]][:5]
            franchise[i, : len(m)] = m
    pool = np.concatenate([popular, same_genre, franchise], 1)
    srt = np.sort(pool, 1)
    dup = np.concatenate([np.zeros((n, 1), bool), srt[:, 1:] == srt[:, :-1]], 1)
    pool = srt
    g_src = cat.genres[source][:, None, :]
    g_pool = cat.genres[pool]
    jacc = (g_src & g_pool).sum(-1) / np.maximum((g_src | g_pool).sum(-1), 1)
    same_fr = (cat.franchise[pool] == cat.franchise[source][:, None]) & (cat.franchise[source][:, None] > 0)
    ok = ~dup & (pool > 0) & (pool != source[:, None]) & cat.avail[pool, country[:, None]]
    logits = np.where(ok, np.log(cat.pop_country[pool, country[:, None]] + 1e-12) + 2 * jacc + 3 * same_fr, -np.inf)
    shown = _gumbel_topk(logits, MLT_IMPRESSIONS, rng)
    ents = np.where(shown >= 0, np.take_along_axis(pool, np.maximum(shown, 0), 1), -1)
    j = np.take_along_axis(jacc, np.maximum(shown, 0), 1)
    f = np.take_along_axis(same_fr, np.maximum(shown, 0), 1)
    logit = mlt_logit(cat, users, ents, j, f, intent)
    return _Drawn(users, country, None, source, ents, logit, intent)


def _intent_followups(cat: _Catalog, search: _Drawn, start: np.ndarray, window, rng: np.random.Generator) -> dict:
    """The other requests of the search sessions with an intent, by the same pulled taste: a home visit
    before the search (for INTENT_BEFORE of them), one after it, and the title page of the title looked
    for (for INTENT_MLT of them), INTENT_GAP_S apart from the typing; times kept inside the window."""
    s = search.sessions
    on = np.flatnonzero(s["intent"] >= 0)
    typed_until = start + 0.3 * (np.bincount(search.session, minlength=len(start)) - 1)
    before = on[rng.random(len(on)) < INTENT_BEFORE]
    titled = on[rng.random(len(on)) < INTENT_MLT]

    def gap(n: int) -> np.ndarray:
        return rng.uniform(*INTENT_GAP_S, n)

    def clip(ts: np.ndarray) -> np.ndarray:
        return np.clip(ts, window[0], np.nextafter(window[1], window[0]))

    home = np.concatenate([before, on])
    prequery = _prequery(cat, 0, rng, users=s["users"][home], intent=s["intent"][home])
    prequery.ts = clip(np.concatenate([start[before] - gap(len(before)), typed_until[on] + gap(len(on))]))
    mlt = _more_like_this(cat, 0, rng, users=s["users"][titled], source=s["target"][titled], intent=s["intent"][titled])
    mlt.ts = clip(typed_until[titled] + gap(len(titled)))
    return {Task.PREQUERY: prequery, Task.MORE_LIKE_THIS: mlt}


def _events_part(
    cat: _Catalog,
    p: SynthParams,
    eids: np.ndarray,
    n_events: int,
    window: tuple[float, float],
    first_request: int,
    rng: np.random.Generator,
    continuation_seed: list[int],
    steps,
    intent_seed: list[int] | None = None,
) -> tuple[pa.Table, int]:
    """The events of one time window (seconds from the log's start), request ids from `first_request` in
    time order, rows sorted by request then entity; and how many requests it drew."""
    uids = np.array([f"u{i:07d}" for i in range(p.users)], dtype=object)
    countries = np.array(COUNTRIES, dtype=object)
    columns: dict[str, list] = {k: [] for k in EVENT_SCHEMA.names}
    next_request = 0
    last_search = None
    intent_rng = np.random.default_rng(intent_seed) if p.session_intent > 0 else None  # off: data unchanged
    follow: dict[str, _Drawn] = {}
    for task in (Task.SEARCH, Task.PREQUERY, Task.MORE_LIKE_THIS):
        n_task = int(n_events * TASK_EVENT_SHARE[task])
        extra = follow.get(task)  # an intent session's home visits and title pages take their task's budget
        taken = 0 if extra is None else len(extra.users)
        if task == Task.SEARCH:
            d = _search(cat, n_task, rng, intent_rng)
        elif task == Task.PREQUERY:
            d = _prequery(cat, n_task - taken * PREQUERY_IMPRESSIONS, rng)
        else:
            d = _more_like_this(cat, n_task - taken * MLT_IMPRESSIONS, rng)
        n_regular = len(d.users)
        if extra is not None:
            d = _concat(d, extra)
        users, country, query, source, ents, logit, session = (
            d.users,
            d.country,
            d.query,
            d.source,
            d.ents,
            d.logit,
            d.session,
        )
        R, K = ents.shape
        valid = ents > 0
        clicked = (rng.random(ents.shape) < _sigmoid(logit)) & valid
        play_p = play_probability(cat, users, ents, d.intent)
        played = clicked & (rng.random(ents.shape) < play_p)
        if session is None:
            ts = rng.uniform(window[0], window[1], n_regular)
            ts = ts if extra is None else np.concatenate([ts, extra.ts])
        else:  # keystrokes of one session are ~300 ms apart
            start = rng.uniform(window[0], window[1], session.max() + 1)
            first = np.searchsorted(session, session, side="left")
            ts = start[session] + 0.3 * (np.arange(R) - first)
            if intent_rng is not None:
                follow = _intent_followups(cat, d, start, window, intent_rng)
        if task == Task.SEARCH:
            rows_c, cols_c = np.nonzero(clicked)
            last_search = (users[rows_c], ts[rows_c], ents[rows_c, cols_c])
        elif task == Task.PREQUERY and p.continuation > 0:  # its own generator: without it the data is unchanged
            ents, clicked, played = _continue_franchises(
                cat, last_search, users, country, ts, ents, clicked, played, np.random.default_rng(continuation_seed)
            )
            valid = ents > 0
        rows, cols = np.nonzero(valid)
        columns["request_id"].append(rows + next_request)
        columns["user_id"].append(uids[users[rows]])
        columns["country"].append(countries[country[rows]])
        columns["task"].append(np.full(rows.size, task, dtype=object))
        columns["query"].append(query[rows] if query is not None else np.full(rows.size, None, dtype=object))
        columns["source_entity_id"].append(
            eids[source[rows]] if source is not None else np.full(rows.size, None, dtype=object)
        )
        columns["target_entity_id"].append(eids[ents[rows, cols]])
        columns["clicked"].append(clicked[rows, cols])
        columns["played"].append(played[rows, cols])
        columns["timestamp"].append((ts[rows] * 1000).astype("int64") + 1_767_225_600_000)
        next_request += R
        steps.update()
    data = {k: np.concatenate(v) for k, v in columns.items()}
    # Request ids follow time, so a time split never cuts a request.
    req_ts = np.zeros(next_request, dtype=np.int64)
    req_ts[data["request_id"]] = data["timestamp"]
    new_id = np.empty(next_request, dtype=np.int64)
    new_id[np.argsort(req_ts, kind="stable")] = np.arange(next_request)
    data["request_id"] = new_id[data["request_id"]] + first_request
    order = np.lexsort((data["target_entity_id"].astype(str), data["request_id"]))
    arrays = [
        pa.array(data[k][order], type=EVENT_SCHEMA.field(k).type)
        if k != "timestamp"
        else pa.array(data[k][order]).cast(pa.timestamp("ms"))
        for k in EVENT_SCHEMA.names
    ]
    return pa.Table.from_arrays(arrays, schema=EVENT_SCHEMA), next_request


PART_EVENTS = 1_000_000  # the most events one part of the log holds in memory while it is generated


def generate(p: SynthParams, out_dir: Path | str, part_events: int = PART_EVENTS) -> dict:
    """Write the events, entities.parquet and synth.json to out_dir; return a summary.

    Up to `part_events` events: one `events.parquet`, all generated at once. More: the DAYS are cut into
    as many consecutive windows as that takes, each generated with its own random stream and written as
    `events/part-NNNNN.parquet` before the next one starts, so memory holds one part (and the catalogue),
    whatever the size; request ids keep following time across parts. Sessions and franchise continuations
    stay within a window."""
    out = Path(out_dir)
    out.mkdir(parents=True, exist_ok=True)
    rng = np.random.default_rng(p.seed)
    parts = max(1, -(-p.events // max(part_events, 1)))
    steps = tqdm(total=2 + 3 * parts, desc="synth", unit="step")
    cat = _Catalog(p, rng)
    steps.update()
    eids = np.array([""] + [f"e{i:06d}" for i in range(1, p.entities + 1)], dtype=object)
    # what an earlier run left must not be read with this one (`events.parquet` wins over `events/`)
    shutil.rmtree(out / "events", ignore_errors=True)
    (out / "events.parquet").unlink(missing_ok=True)
    if parts > 1:
        (out / "events").mkdir()
    totals = {"events": 0, "requests": 0, "clicks": 0}
    for part in range(parts):
        window = (part * DAYS * 86400 / parts, (part + 1) * DAYS * 86400 / parts)
        # one part: the random stream of every earlier version of this generator, unchanged output
        part_rng = rng if parts == 1 else np.random.default_rng([p.seed, 1, part])
        continuation_seed = [p.seed, 2] if parts == 1 else [p.seed, 2, part]
        intent_seed = [p.seed, 3] if parts == 1 else [p.seed, 3, part]
        table, n_requests = _events_part(
            cat, p, eids, p.events // parts, window, totals["requests"], part_rng, continuation_seed, steps, intent_seed
        )
        totals["events"] += table.num_rows
        totals["requests"] += n_requests
        totals["clicks"] += int(pc.sum(pc.cast(table.column("clicked"), pa.int64())).as_py() or 0)
        pq.write_table(table, out / "events.parquet" if parts == 1 else out / "events" / f"part-{part:05d}.parquet")
        del table
    entities = pa.table(
        {
            "entity_id": eids[1:].tolist(),
            "title": cat.titles[1:],
            "kind": ["game" if k else "video" for k in cat.kind[1:]],
            "genres": [[GENRES[g] for g in np.flatnonzero(row)] for row in cat.genres[1:]],
            "release_year": cat.year[1:].astype("int32"),
            "countries": [[COUNTRIES[c] for c in np.flatnonzero(row)] for row in cat.avail[1:]],
        },
        schema=ENTITY_SCHEMA,
    )
    pq.write_table(entities, out / "entities.parquet")
    summary = {"params": asdict(p), "parts": parts, **totals}
    (out / "synth.json").write_text(json.dumps(summary, indent=2))
    steps.update()
    steps.close()
    return summary
