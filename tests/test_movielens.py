"""`unirank data import movielens` on the committed sample (tests/data/ml-sample, MovieLens' license next
to it): the event schema, the documented mapping, no label in the row order, determinism."""

from __future__ import annotations

import csv
from collections import Counter, defaultdict
from pathlib import Path

import numpy as np
import pyarrow.compute as pc
import pytest

from model_export.movielens import MovieLensParams, _title_and_year, import_movielens
from unirank.core.schema import read_entities, read_events
from unirank.core.text import normalize

SAMPLE = Path(__file__).parent / "data" / "ml-sample"


@pytest.fixture(scope="module")
def imported(tmp_path_factory) -> Path:
    out = tmp_path_factory.mktemp("ml")
    import_movielens(SAMPLE, out, MovieLensParams(impressions=12, seed=3), progress=False)
    return out


def _ratings() -> dict[tuple[str, str], dict]:
    with (SAMPLE / "ratings.csv").open() as f:
        return {(f"u{r['userId']}", f"m{r['movieId']}"): r for r in csv.DictReader(f)}


def test_titles_and_years_as_people_type_them():
    assert _title_and_year("Matrix, The (1999)") == ("The Matrix", 1999)
    assert _title_and_year("Babylon 5") == ("Babylon 5", None)
    assert _title_and_year("Cosmos (1980)") == ("Cosmos", 1980)


def _rows(path: Path) -> list[dict]:
    return read_events(path / "events.parquet").to_pylist()


def _requests(rows: list[dict]) -> dict[int, list[dict]]:
    out: dict[int, list[dict]] = defaultdict(list)
    for row in rows:  # stored order kept
        out[row["request_id"]].append(row)
    return out


def test_every_rating_is_one_request_with_its_page(imported):
    rows = _rows(imported)
    entities = {e["entity_id"] for e in read_entities(imported / "entities.parquet").to_pylist()}
    ratings = _ratings()
    assert (imported / "README.txt").read_text() == (SAMPLE / "README.txt").read_text()  # the license travels
    requests = _requests(rows)
    assert len(requests) == len(ratings)
    assert all(sum(r["clicked"] for r in page) == 1 for page in requests.values())
    sizes = [len(page) for page in requests.values()]
    assert max(sizes) == 12 and min(sizes) >= 2
    clicked = [r for r in rows if r["clicked"]]
    assert {(r["user_id"], r["target_entity_id"]) for r in clicked} == set(ratings)
    for r in clicked:  # played: rated 4 or more
        assert r["played"] == (float(ratings[r["user_id"], r["target_entity_id"]]["rating"]) >= 4.0)
    assert not any(r["played"] for r in rows if not r["clicked"])
    assert {r["task"] for r in rows} == {"search", "prequery", "more_like_this"}
    assert {r["country"] for r in rows} == {"US"} and {r["target_entity_id"] for r in rows} <= entities


def test_the_positive_is_never_at_a_fixed_place(imported):
    places = Counter(
        next(i for i, r in enumerate(page) if r["clicked"]) for page in _requests(_rows(imported)).values()
    )
    assert len(places) >= 10 and max(places.values()) / sum(places.values()) < 0.25, places


def test_queries_sources_and_negatives_follow_the_mapping(imported):
    rows = _rows(imported)
    entities = {e["entity_id"]: e for e in read_entities(imported / "entities.parquet").to_pylist()}
    with (SAMPLE / "tags.csv").open() as f:
        tags = {(f"u{t['userId']}", f"m{t['movieId']}", normalize(t["tag"])) for t in csv.DictReader(f)}
    first_rated = {key: int(r["timestamp"]) for key, r in _ratings().items()}
    chosen = sorted(
        (r for r in rows if r["clicked"]), key=lambda r: (r["user_id"], r["timestamp"], int(r["target_entity_id"][1:]))
    )
    previous = {}
    for before, row in zip([None, *chosen[:-1]], chosen, strict=True):
        same_user = before is not None and before["user_id"] == row["user_id"]
        previous[row["request_id"]] = before["target_entity_id"] if same_user else None
    typed = tagged = 0
    for row in chosen:
        if row["task"] == "search":
            title = normalize(entities[row["target_entity_id"]]["title"])
            words = title.split()
            without_article = " ".join(words[1:]) if len(words) > 1 else title
            if (row["user_id"], row["target_entity_id"], row["query"]) in tags:
                tagged += 1
            else:
                query = row["query"]
                assert len(query) <= 12 and (title.startswith(query) or without_article.startswith(query))
                typed += 1
        elif row["task"] == "more_like_this":
            assert row["source_entity_id"] == previous[row["request_id"]] is not None
        else:
            assert row["query"] is None and row["source_entity_id"] is None
    assert typed and tagged
    for row in rows:
        if row["clicked"]:
            continue
        assert entities[row["target_entity_id"]]["release_year"] <= row["timestamp"].year
        assert row["target_entity_id"] != row["source_entity_id"]
        rated_at = first_rated.get((row["user_id"], row["target_entity_id"]), -1)
        assert rated_at < row["timestamp"].timestamp(), "a title the user rated then or later shown as rejected"


def test_the_same_seed_gives_the_same_log(imported, tmp_path):
    import_movielens(SAMPLE, tmp_path / "again", MovieLensParams(impressions=12, seed=3), progress=False)
    import_movielens(SAMPLE, tmp_path / "other", MovieLensParams(impressions=12, seed=4), progress=False)
    first = read_events(imported / "events.parquet")
    assert read_events(tmp_path / "again" / "events.parquet").equals(first)
    other = read_events(tmp_path / "other" / "events.parquet")
    assert not other.equals(first)
    assert pc.sum(other.column("clicked")).as_py() == pc.sum(first.column("clicked")).as_py()


def test_bad_shares_are_refused():
    assert MovieLensParams(search_share=0.8, mlt_share=0.5).problems()
    with pytest.raises(ValueError, match="impressions"):
        import_movielens(SAMPLE, Path("/nonexistent"), MovieLensParams(impressions=1), progress=False)


def test_the_pipeline_trains_on_it(imported, tmp_path):
    from model_export.train import TrainConfig, train_bundle

    manifest = train_bundle(imported, tmp_path / "bundle", TrainConfig(epochs=1, seed=0), log=lambda *_: None)
    tasks = manifest["metrics"]["tasks"]
    assert set(tasks) == {"search", "prequery", "more_like_this"}
    assert all(np.isfinite(rows["model"]["ndcg@10"]) for rows in tasks.values())
