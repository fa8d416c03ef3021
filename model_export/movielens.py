"""MovieLens ratings (GroupLens' `ratings.csv`, `movies.csv`, `tags.csv`) as an engagement log in the event
schema: a real dataset to train, evaluate and study on.

Contract: `import_movielens(src, out, params)` writes `events.parquet`, `entities.parquet`, the dataset's
own README.txt (its license: no commercial use, redistribution under the same terms, cite the paper) and
`import.json` (parameters and counts) to `out`; the same input and seed give the same bytes.

The mapping (docs/study.md, "Real data: MovieLens"):
- A rating is a title the user chose: `clicked`. A rating >= `play_rating` (4.0) is one they also liked:
  `played` (the stronger label, the one `rank_by=play` ranks by).
- Each rating is one request at its time, of one task. A movie the user tagged is found by search with
  the tag as the query (their own words for it). Otherwise search with probability `search_share`, the
  query being what one types of the title: from its first word (or its second, when the first is an
  article), 3 to 12 characters, lower case; or more-like-this with probability `mlt_share` from the movie
  the user rated just before (the first rating of a user cannot be); else prequery (a home page).
- The other `impressions - 1` rows are what the page would plausibly have shown: search, the titles
  unirank's own index matches for the query, plus titles carrying the tag (other users' tags), then popular
  titles; more-like-this, titles sharing a genre with the source; prequery, popular titles. Draws are
  weighted by popularity^0.75 (the number of ratings), released by the request's year, never the source
  and never a title the user rates at that time or later (they chose it then: not a rejection now);
  titles they rated before may appear (home pages show watched titles; few are picked again).
- Rows are shuffled inside every request: the positive's position carries nothing.
- The entities' `tags` are every tag a user gave the movie (normalised): search finds a movie by them. A
  tag query is the tag its user gave, so its movie carries it: on this data the tag queries are found by
  construction, and the genre names are the fairer test of search beyond title words.
- MovieLens has no country: every event and title is "US". Ids: users `u<userId>`, titles `m<movieId>`.
"""

from __future__ import annotations

import csv
import json
import re
import shutil
from collections import defaultdict
from dataclasses import asdict, dataclass, field
from pathlib import Path
from typing import NamedTuple

import numpy as np
import pyarrow as pa
import pyarrow.compute as pc
import pyarrow.parquet as pq

from unirank.core.lexical import TextIndex
from unirank.core.schema import ENTITY_FULL_SCHEMA, EVENT_SCHEMA
from unirank.core.text import normalize, tokens
from unirank.core.vocab import Task

COUNTRY = "US"
ARTICLES = {"the", "a", "an", "le", "la", "les", "el", "il", "der", "die", "das"}
_YEAR = re.compile(r"\s*\((\d{4})(?:[-–]\d{0,4})?\)\s*$")
_NO_GENRES = "(no genres listed)"


@dataclass(frozen=True)
class MovieLensParams:
    impressions: int = 10
    play_rating: float = 4.0
    search_share: float = 0.35
    mlt_share: float = 0.3
    seed: int = 0

    def problems(self) -> list[str]:
        out = []
        if self.impressions < 2:
            out.append("impressions: at least 2 (the chosen title and one it was chosen over)")
        if not 0 <= self.search_share <= 1 or not 0 <= self.mlt_share <= 1 or self.search_share + self.mlt_share > 1:
            out.append("search_share and mlt_share: shares in [0, 1] that sum to at most 1")
        return out


def _title_and_year(raw: str) -> tuple[str, int | None]:
    match = _YEAR.search(raw)
    if not match:
        return raw.strip(), None
    title = raw[: match.start()].strip()
    # "Matrix, The" -> "The Matrix": the title as people type it
    head, sep, article = title.rpartition(", ")
    if sep and article.lower() in ARTICLES:
        title = f"{article} {head}"
    return title, int(match.group(1))


def _read_csv(path: Path) -> list[dict]:
    with path.open(newline="", encoding="utf-8") as f:
        return list(csv.DictReader(f))


class _Sampler:
    """Popularity-weighted draws (inverse CDF) from the whole catalogue or a pool of it."""

    def __init__(self, weights: np.ndarray, rng: np.random.Generator):
        self.weights, self.rng = weights, rng
        self.cum = np.cumsum(weights)

    def draw(self, n: int, pool: np.ndarray | None = None) -> np.ndarray:
        if pool is None:
            return np.searchsorted(self.cum, self.rng.random(n) * self.cum[-1], side="right")
        if len(pool) == 0:
            return pool
        cum = np.cumsum(self.weights[pool])
        return pool[np.searchsorted(cum, self.rng.random(n) * cum[-1], side="right")]


@dataclass
class _Page:
    """Which titles one request's page may show beside the chosen one."""

    rated: dict[int, int]  # the user's titles -> when first rated
    ts: int
    source: int | None
    year: np.ndarray
    request_year: int

    def allowed(self, candidates: np.ndarray, chosen: list[int]) -> list[int]:
        keep: list[int] = []
        for c in candidates.tolist():
            if self.rated.get(c, -1) >= self.ts or c == self.source or self.year[c] > self.request_year:
                continue
            if c not in chosen and c not in keep:
                keep.append(c)
        return keep


def import_movielens(src: Path, out: Path, params: MovieLensParams = MovieLensParams(), progress: bool = True) -> dict:
    src, out = Path(src), Path(out)
    if problems := params.problems():
        raise ValueError("; ".join(problems))
    rng = np.random.default_rng(params.seed)
    catalogue = _Catalogue.of(_read_csv(src / "movies.csv"))
    ratings = [r for r in _read_csv(src / "ratings.csv") if r["movieId"] in catalogue.index_of]
    ratings.sort(key=lambda r: (int(r["userId"]), int(r["timestamp"]), int(r["movieId"])))
    tags = _read_csv(src / "tags.csv") if (src / "tags.csv").exists() else []
    catalogue.tag_with(tags)
    pages = _Pages(catalogue, ratings, tags, params, rng)
    events, tasks = pages.events(ratings, progress)
    out.mkdir(parents=True, exist_ok=True)
    pq.write_table(events, out / "events.parquet")
    pq.write_table(catalogue.table(), out / "entities.parquet")
    if (src / "README.txt").exists():
        shutil.copyfile(src / "README.txt", out / "README.txt")  # the license travels with what derives from it
    summary = {
        "source": str(src),
        "params": asdict(params),
        "ratings": len(ratings),
        "requests": len(ratings),
        "events": events.num_rows,
        "users": len(pages.rated_from),
        "entities": len(catalogue.ids),
        "tasks": tasks,
        "played": int(pc.sum(events.column("played")).as_py() or 0),
        "license": "MovieLens: see README.txt (GroupLens; no commercial use; cite Harper & Konstan 2015)",
    }
    (out / "import.json").write_text(json.dumps(summary, indent=2))
    return summary


@dataclass
class _Catalogue:
    """The movies as entities: ids `m<movieId>`, titles as people type them, genres, release years (the
    median year where the title has none)."""

    ids: list[str]
    index_of: dict[str, int]  # movieId -> row
    titles: list[str]
    genres: list[list[str]]
    year: np.ndarray
    tags: list[list[str]] = field(default_factory=list)  # per movie: every tag users gave it, normalised

    @classmethod
    def of(cls, movies: list[dict]) -> _Catalogue:
        titles, years, genres = [], [], []
        for m in movies:
            title, year = _title_and_year(m["title"])
            titles.append(title)
            years.append(year)
            genres.append([] if m["genres"] == _NO_GENRES else m["genres"].split("|"))
        known_years = [y for y in years if y is not None]
        median_year = int(np.median(known_years)) if known_years else 2000
        year = np.array([y if y is not None else median_year for y in years])
        index_of = {m["movieId"]: i for i, m in enumerate(movies)}
        return cls([f"m{m['movieId']}" for m in movies], index_of, titles, genres, year)

    def tag_with(self, tags: list[dict]) -> None:
        """The catalogue's tags: every tag (normalised, 2+ characters) any user gave the movie, sorted."""
        given: dict[int, set[str]] = defaultdict(set)
        for t in tags:
            tag = normalize(t["tag"])
            if len(tag) >= 2 and t["movieId"] in self.index_of:
                given[self.index_of[t["movieId"]]].add(tag)
        self.tags = [sorted(given.get(i, ())) for i in range(len(self.ids))]

    def table(self) -> pa.Table:
        columns = {
            "entity_id": self.ids,
            "title": self.titles,
            "kind": ["video"] * len(self.ids),
            "genres": self.genres,
            "release_year": pa.array(self.year, pa.int32()),
            "countries": [[COUNTRY]] * len(self.ids),
            "tags": self.tags or [[]] * len(self.ids),
        }
        return pa.table(columns, schema=ENTITY_FULL_SCHEMA)


class _Request(NamedTuple):
    """One rating's request: its task, query or source, and the pool its page draws from first."""

    task: Task
    query: str | None
    source: int | None
    pool: np.ndarray | None


class _Pages:
    """What each rating's page draws from: the title index, other users' tags, genres, popularity, and
    when each user rated what; `events()` turns the ratings into requests of impressions."""

    def __init__(
        self, catalogue: _Catalogue, ratings: list[dict], tags: list[dict], params: MovieLensParams, rng
    ) -> None:
        self.catalogue, self.params, self.rng = catalogue, params, rng
        index_of = catalogue.index_of
        counts = np.bincount([index_of[r["movieId"]] for r in ratings], minlength=len(catalogue.ids)).astype(float)
        self.sampler = _Sampler((counts + 1.0) ** 0.75, rng)
        by_genre: dict[str, list[int]] = defaultdict(list)
        for i, gs in enumerate(catalogue.genres):
            for g in gs:
                by_genre[g].append(i)
        self.genre_pool = {g: np.asarray(v) for g, v in by_genre.items()}
        self.index = TextIndex([""] + [normalize(t) for t in catalogue.titles])  # counts from 1 (0: unknown)
        self.user_tags: dict[tuple[str, str], list[str]] = defaultdict(list)
        tagged: dict[str, set[int]] = defaultdict(set)
        for t in tags:
            tag = normalize(t["tag"])
            if len(tag) >= 2 and t["movieId"] in index_of:
                self.user_tags[t["userId"], t["movieId"]].append(tag)
                tagged[tag].add(index_of[t["movieId"]])
        self.tag_pool = {tag: np.asarray(sorted(v)) for tag, v in tagged.items()}
        self.rated_from: dict[str, dict[int, int]] = defaultdict(dict)  # user -> movie -> first time rated
        for r in ratings:
            self.rated_from[r["userId"]].setdefault(index_of[r["movieId"]], int(r["timestamp"]))

    def events(self, ratings: list[dict], progress: bool) -> tuple[pa.Table, dict[str, int]]:
        from tqdm import tqdm

        columns: dict[str, list] = {name: [] for name in EVENT_SCHEMA.names}
        tasks = {"search": 0, "prequery": 0, "more_like_this": 0}
        previous: dict[str, int] = {}  # user -> the movie they rated last
        for request_id, r in enumerate(tqdm(ratings, desc="movielens", unit="rating", disable=not progress)):
            user, movie, ts = r["userId"], self.catalogue.index_of[r["movieId"]], int(r["timestamp"])
            task, query, source, pool = self._request(r, previous.get(user))
            previous[user] = movie
            tasks[task] += 1
            rows = [
                movie,
                *self._negatives(
                    task, pool, _Page(self.rated_from[user], ts, source, self.catalogue.year, _year_of(ts))
                ),
            ]
            self._append(columns, request_id, r, task, query, source, rows, movie)
        return pa.table(columns, schema=EVENT_SCHEMA), tasks

    def _request(self, r: dict, previous: int | None) -> _Request:
        """The task of the rating's request, its query or source, and the pool its page draws from first."""
        params, rng = self.params, self.rng
        own_tags = self.user_tags.get((r["userId"], r["movieId"]))
        draw = rng.random()
        if own_tags:
            query = own_tags[int(rng.integers(len(own_tags)))]
            matches = self.index.lookup(query) - 1
            tagged = self.tag_pool.get(query, np.zeros(0, int))
            return _Request(Task.SEARCH, query, None, np.union1d(matches[matches >= 0], tagged))
        if draw < params.search_share:
            query = _typed_query(self.catalogue.titles[self.catalogue.index_of[r["movieId"]]], rng)
            matches = self.index.lookup(query) - 1
            return _Request(Task.SEARCH, query, None, matches[matches >= 0])
        if draw < params.search_share + params.mlt_share and previous is not None:
            shared = [self.genre_pool[g] for g in self.catalogue.genres[previous] if g in self.genre_pool]
            return _Request(Task.MORE_LIKE_THIS, None, previous, np.unique(np.concatenate(shared)) if shared else None)
        return _Request(Task.PREQUERY, None, None, None)

    def _negatives(self, task: str, pool: np.ndarray | None, page: _Page) -> list[int]:
        """The other `impressions - 1` titles of the page: from the pool first, then popular titles."""
        negatives: list[int] = []
        want = self.params.impressions - 1
        if pool is not None and len(pool):
            share = want if task == Task.MORE_LIKE_THIS else max(1, int(round(want * 0.7)))
            negatives += page.allowed(self.sampler.draw(4 * share, pool), negatives)[:share]
        for _ in range(20):  # popular titles fill the page
            if len(negatives) >= want:
                break
            negatives += page.allowed(self.sampler.draw(4 * want), negatives)[: want - len(negatives)]
        return negatives

    def _append(self, columns, request_id, r, task, query, source, rows, movie) -> None:
        """The request's impressions, shuffled (the chosen title's position carries nothing)."""
        ids, ts = self.catalogue.ids, int(r["timestamp"])
        liked = float(r["rating"]) >= self.params.play_rating
        for i in self.rng.permutation(len(rows)):
            target = rows[i]
            columns["request_id"].append(request_id)
            columns["user_id"].append(f"u{r['userId']}")
            columns["country"].append(COUNTRY)
            columns["task"].append(str(task))
            columns["query"].append(query)
            columns["source_entity_id"].append(ids[source] if source is not None else None)
            columns["target_entity_id"].append(ids[target])
            columns["clicked"].append(target == movie)
            columns["played"].append(target == movie and liked)
            columns["timestamp"].append(ts * 1000)


def _year_of(ts: int) -> int:
    return int(np.datetime64(ts, "s").astype("datetime64[Y]").astype(int)) + 1970


def _typed_query(title: str, rng: np.random.Generator) -> str:
    """What one types of a title in an instant-search box: from its first word (its second when the first
    is an article), 3 to 12 characters."""
    words = tokens(normalize(title))
    if not words:
        return normalize(title)[:12] or "a"
    start = 1 if len(words) > 1 and words[0] in ARTICLES else 0
    text = " ".join(words[start:])
    return text[: int(rng.integers(3, 13))].strip()
