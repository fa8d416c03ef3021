"""Search retrieval on the test bundle's catalogue: title words first, then genre names and tags (the facet
index), then the query's semantic neighbours when words find nothing; only what is available in the country."""

from __future__ import annotations

import numpy as np
import pytest

from service.model.retrieval import SEMANTIC_NEIGHBOURS, Retriever
from unirank.core.tables import FeatureTables


@pytest.fixture
def tables(bundle_dir) -> FeatureTables:
    return FeatureTables.load(bundle_dir / "tables")


def test_a_genre_name_finds_the_genre_beyond_title_words(tables):
    retriever = Retriever(tables, limit=200)
    genre = max(range(1, len(tables.genres)), key=lambda g: tables.genre_hot[:, g].sum())
    query = tables.genres[genre].lower()
    found = retriever.search(query, 0)
    in_genre = tables.genre_hot[found, genre]
    by_title = set(tables.title_index.lookup(query).tolist())
    assert in_genre.sum() >= min(50, tables.genre_hot[:, genre].sum())  # a quarter of the limit at least
    assert not set(found[in_genre].tolist()) <= by_title  # not only titles holding the word
    assert len(found) == len(set(found.tolist())) <= 200


def test_title_matches_come_first_and_keep_three_quarters_of_the_limit(tables):
    retriever = Retriever(tables, limit=40)
    query = max(tables.genres[1:], key=lambda g: (len(tables.title_index.lookup(g[:3])), g))[:3]
    found = retriever.search(query, 0)  # prefixes titles and a genre name
    titles = set(tables.title_index.lookup(query).tolist())
    facets = set(tables.facet_index.lookup(query).tolist()) - titles
    assert titles and facets
    first = [e in titles for e in found.tolist()]
    n_facets = min(len(facets), max(40 - len(titles), 10))
    assert sum(first) == min(len(titles), 40 - n_facets) and first == sorted(first, reverse=True)
    assert len(found) == min(40, len(titles) + len(facets))
    short = retriever.search("se", 0)  # two letters prefix every genre: title words alone
    assert set(short.tolist()) <= set(tables.title_index.lookup("se").tolist())


def test_semantic_neighbours_answer_when_words_find_nothing(tables):
    rng = np.random.default_rng(3)
    tables.text_vec = rng.normal(size=tables.text_vec.shape).astype(np.float32)
    target = 7
    asked: list[str] = []

    def embed(query: str) -> np.ndarray:
        asked.append(query)
        return tables.text_vec[target]

    retriever = Retriever(tables, limit=200, embed_query=embed)
    found = retriever.search("qqqzzzx", 0)  # no title, genre or tag holds it
    scores = tables.text_vec[1:] @ tables.text_vec[target]
    nearest = 1 + np.argsort(-scores)[:SEMANTIC_NEIGHBOURS]
    assert found.tolist() == nearest.tolist() and found[0] == target
    assert retriever.search("qqqzzzx", 0).tolist() == found.tolist() and asked == ["qqqzzzx"]  # cached
    assert retriever.search("qqq", 0).size == 0 and asked == ["qqqzzzx"]  # too short to embed
    assert retriever.search(tables.norm_titles[3], 0)[0] == 3 and asked == ["qqqzzzx"]  # words found it
    country = 1
    tables.avail[target, country] = False
    assert target not in retriever.search("qqqzzzx", country).tolist()  # not available there
