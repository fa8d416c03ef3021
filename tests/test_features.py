"""Imputation, normalisation, lexical matching, and training/serving feature parity."""

import numpy as np
import pytest
from hypothesis import given, settings
from hypothesis import strategies as st

from model_export.data import Dataset
from model_export.splits import click_log, encode_split
from service.core.schemas import RankRequest
from service.model.context import build_request_context
from service.model.features import History, ServingFeatures
from tests.helpers import spec_for
from unirank.core.context import build_context
from unirank.core.features import _RECENCY, HISTORY_INPUTS, INPUT_NAMES, FeatureEncoder, history_vector
from unirank.core.history import HISTORY_LENGTH
from unirank.core.lexical import TextIndex, lexical_evidence, match_features, match_features_many
from unirank.core.recency import RECENCY_FEATURES
from unirank.core.tables import FeatureTables, RuntimeEntity
from unirank.core.text import normalize, normalize_unicode

TITLES = {"e1": "Stranger Things", "e2": "The Crown"}


def test_normalisation():
    assert normalize("  Pokémon   GO! ") == "pokemon go"
    assert normalize("ＳＴＲＡＮＧＥＲ") == "stranger"  # full-width letters (NFKC)
    assert normalize("Amélie\u00a0&\tCo.") == "amelie co"
    assert normalize(None) == ""


def test_search_nulls_the_source():
    c = build_context("search", "us", "u1", "Strang", "e1", TITLES.get)
    assert (c.query, c.source_entity_id, c.country, c.query_imputed) == ("strang", None, "US", False)


def test_more_like_this_imputes_the_query_from_the_source_title():
    c = build_context("more_like_this", "US", "u1", None, "e1", TITLES.get)
    assert (c.query, c.source_entity_id, c.query_imputed) == ("stranger things", "e1", True)
    no_impute = build_context("more_like_this", "US", "u1", None, "e1", TITLES.get, impute=False)
    assert no_impute.query == "" and not no_impute.query_imputed
    unknown = build_context("more_like_this", "US", "u1", None, "nope", TITLES.get)
    assert unknown.query == "" and unknown.source_entity_id == "nope"


def test_prequery_has_neither_query_nor_source():
    c = build_context("prequery", "US", "u1", "ignored", "e1", TITLES.get)
    assert (c.query, c.source_entity_id) == ("", None)


def test_title_index_prefixes_and_typos():
    index = TextIndex(["", "stranger things", "strange days", "the crown"])
    assert set(index.lookup("str")) == {1, 2}
    assert set(index.lookup("stranger th")) == {1}
    assert set(index.lookup("strsnger")) == {1}  # substituted letter
    assert set(index.lookup("crwn")) == {3}  # dropped letter
    assert index.lookup("zzzz").size == 0


_TOKENS = st.text(alphabet="abst", min_size=1, max_size=5)
_TEXTS = st.lists(st.lists(_TOKENS, max_size=4).map(" ".join), min_size=1, max_size=8)


def _reference_lexical(query: str, titles: list[str], facets: list[str], cand: list[int]) -> np.ndarray:
    """LEXICAL_FEATURES by their definitions, on token lists (typo_match is left to the examples)."""
    toks = query.split()
    docs = [t.split() for t in titles[1:] if t]
    n, avg = len(docs), (sum(map(len, docs)) / len(docs) if docs else 1.0)
    out = np.zeros((len(cand), 4))
    for row, e in enumerate(cand):
        words, tags = titles[e].split(), facets[e].split()
        first = next((j for j, w in enumerate(words) if toks and w.startswith(toks[0])), None)
        out[row, 0] = 0.0 if first is None else 1 / (1 + first)
        for q in toks:
            df = sum(any(w.startswith(q) for w in d) for d in docs)
            if df and any(w.startswith(q) for w in words):
                idf = np.log(1 + (n - df + 0.5) / (df + 0.5))
                out[row, 1] += idf * 2.2 / (1 + 1.2 * (0.25 + 0.75 * len(words) / avg))
            out[row, 3] += any(w.startswith(q) for w in tags) / len(toks)
    return out


@settings(max_examples=300, deadline=None)
@given(_TEXTS, _TEXTS, st.lists(_TOKENS, min_size=1, max_size=3).map(" ".join))
def test_lexical_evidence_equals_its_definition(titles, facets, query):
    titles, facets = [""] + titles, [""] + (facets * len(titles))[: len(titles)]
    cand = list(range(len(titles)))
    got = lexical_evidence(query, np.array(cand), TextIndex(titles), TextIndex(facets))
    want = _reference_lexical(query, titles, facets, cand)
    assert np.allclose(got[:, [0, 1, 3]], want[:, [0, 1, 3]], rtol=1e-5, atol=1e-6)


def test_typo_match_counts_the_query_tokens_only_one_edit_finds():
    titles = TextIndex(["", "stranger things", "strange days", "the crown"])
    facets = TextIndex(["", "drama", "", "drama history"])
    got = lexical_evidence("strsnger crwn", np.array([1, 2, 3]), titles, facets)
    assert got[:, 2].tolist() == [0.5, 0.0, 0.5]  # "strsnger" -> stranger (1 only), "crwn" -> crown (3)
    assert got[:, 0].tolist() == [0.0, 0.0, 0.0]  # no exact prefix: no position
    exact = lexical_evidence("drama cr", np.array([1, 2, 3]), titles, facets)
    assert exact[:, 2].tolist() == [0.0, 0.0, 0.0] and exact[:, 3].tolist() == [0.5, 0.0, 0.5]
    assert exact[:, 0].tolist() == [0.0, 0.0, 0.0] and exact[2, 1] > 0  # "drama" is no title word; "cr" is


@settings(max_examples=200, deadline=None)
@given(_TEXTS, _TEXTS, st.integers(0, 7))
def test_an_index_grown_and_changed_equals_one_built_whole(first, more, changed):
    """add() and remove() (entities added and retitled at run time) keep the index a fresh build gives."""
    texts = [""] + first + more
    grown = TextIndex([""] + first)
    for i, text in enumerate(more, len(first) + 1):
        grown.add(i, text)
    changed = 1 + changed % (len(texts) - 1)
    grown.remove(changed, texts[changed])
    texts[changed] = "tsab " + texts[changed]
    grown.add(changed, texts[changed])
    whole = TextIndex(texts)
    live = {k: (v, grown.positions[k]) for k, v in grown.prefixes.items() if v.size}
    assert set(live) == set(whole.prefixes)
    for key, (entities, positions) in live.items():
        assert entities.tolist() == whole.prefixes[key].tolist()
        assert positions.tolist() == whole.positions[key].tolist()
    assert grown.lengths.tolist() == whole.lengths.tolist() and grown.n_docs == whole.n_docs


@pytest.fixture(scope="module")
def tables(bundle_dir) -> FeatureTables:
    return FeatureTables.load(bundle_dir / "tables")


@settings(max_examples=500, deadline=None)
@given(st.text(alphabet=st.characters(max_codepoint=127), max_size=40))
def test_normalising_ascii_takes_a_shortcut_to_the_same_text(text):
    assert normalize.__wrapped__(text) == normalize_unicode(text)


def _reference_match(query: str, title: str) -> tuple[float, float]:
    """The match features by their definition: token lists and startswith."""
    if not query:
        return 0.0, 0.0
    qt, tt = query.split(), title.split()
    hits = sum(1 for q in qt if any(t.startswith(q) for t in tt))
    return float(title.startswith(query)), hits / len(qt)


_WORDS = st.text(alphabet="abcst12 -'É", max_size=14)  # spaces, punctuation and an accent for normalize to fold


@settings(max_examples=400, deadline=None)
@given(_WORDS, st.lists(_WORDS, max_size=6))
def test_match_features_equal_their_definition_on_normalised_text(raw_query, raw_titles):
    query = normalize(raw_query)
    titles = [normalize(t) for t in raw_titles] + ["", query, query + "x", "x" + query]
    want = [_reference_match(query, t) for t in titles]
    assert [match_features(query, t) for t in titles] == want
    assert match_features_many(query, titles) == want


@settings(max_examples=300, deadline=None)
@given(st.data())
def test_unique_candidates_are_the_first_occurrences_without_the_source(tables, data):
    """`unique_entity_indices` against its definition (dict.fromkeys, then the source dropped): known and
    unknown ids, repeats of either, the source known, unknown, absent or none."""
    known = tables.entity_ids[1:40]
    pool = st.sampled_from(known + ["nobody-1", "nobody-2"])
    ids = data.draw(st.lists(pool, max_size=30) | st.lists(st.sampled_from(known), unique=True, max_size=30))
    exclude = data.draw(st.none() | pool)
    encoder = FeatureEncoder(tables, "full")
    want = [i for i in dict.fromkeys(ids) if i != exclude]
    got, indices = encoder.unique_entity_indices(ids, exclude)
    assert got == want
    assert indices.tolist() == [tables.entity_index.get(i, 0) for i in want]


def test_training_and_serving_build_identical_tensors(tables, data_dir):
    encoder = FeatureEncoder(tables, "full")
    dataset = Dataset.load(data_dir)
    clicks = click_log(encoder, dataset)
    enc = encode_split(encoder, dataset, "test", clicks=clicks)
    serving = ServingFeatures(tables, spec_for(tables, history_encoder=True, text_features=True))
    req = enc.requests
    rng = np.random.default_rng(0)
    checked, recency_seen = set(), np.zeros(len(RECENCY_FEATURES), bool)
    for r in rng.choice(len(req), 60, replace=False):
        rows = np.flatnonzero(enc.inputs["cand_ctx"] == r)
        request = RankRequest(
            task=req.task[r],
            country=req.country[r],
            user_id=req.user_id[r],
            query=req.query[r],
            source_entity_id=req.source_entity_id[r],
            candidates=list(req.target_entity_id[rows]),
        )
        rc = build_request_context(request, tables, "full")
        # The serving path's history: this user's clicks strictly before the request, newest first.
        user = tables.user_index.get(req.user_id[r], 0)
        before = (clicks[0] == user) & (clicks[1] < req.timestamp[r])
        newest_first = np.argsort(clicks[1][before], kind="stable")[::-1]
        recent = clicks[2][before][newest_first][:HISTORY_LENGTH]
        kinds = clicks[3][before][newest_first][:HISTORY_LENGTH]
        history = History(recent, kinds, history_vector(tables, recent))
        got = serving.inputs(rc, serving.encoder.entity_indices(request.candidates), history)
        for name in INPUT_NAMES + HISTORY_INPUTS:
            want = enc.inputs[name][rows] if name.startswith("cand") else enc.inputs[name][[r]]
            if name == "cand_ctx":
                want = want - r
            np.testing.assert_allclose(got[name], want, rtol=1e-5, atol=1e-5, err_msg=name)
        checked.add(req.task[r])
        recency_seen |= (got["cand_dense"][:, _RECENCY] != 0).any(0)
    assert checked == {"search", "prequery", "more_like_this"}
    assert recency_seen.all(), "every recency column was compared on non-zero values"


def test_cold_start_candidates_get_zero_features(tables):
    serving = ServingFeatures(tables, spec_for(tables))
    rc = build_request_context(RankRequest(task="search", country="US", query="the"), tables, "full")
    x = serving.inputs(rc, np.array([0, 1]), None)
    assert x["cand_ids"][0].tolist() == [0, 0] and x["cand_genres"][0].tolist() == [0, 0, 0]
    assert np.all(x["cand_dense"][0, :5] == 0)


def test_the_service_encoder_equals_the_batch_encoder(bundle_dir):
    """`encode_one` (the service's single-request path) gives encode_candidates' values exactly, for every
    task, with and without a query, a known, unknown or run-time-added source, and candidates that are
    trained, unknown (0) or added at run time."""
    tables = FeatureTables.load(bundle_dir / "tables")  # its own copy: entities are added to it below
    added = tables.upsert_runtime_entities(
        [RuntimeEntity("rt-a", "Zorblat Rising", genres=(tables.genres[1],)), RuntimeEntity("rt-b", "Other Thing")]
    )
    rng = np.random.default_rng(1)
    us = tables.country_index["US"]
    popular_query = next(q for q in tables.queries[1:] if q)
    checked, looked_up = 0, np.zeros(2, bool)  # query statistics and co-engagement found at least once
    for text in (False, True):
        encoder = FeatureEncoder(tables, "full", text=text)
        for task, query, source in [
            ("prequery", None, None),
            ("search", popular_query, None),
            ("search", "zzzz unknown words", None),
            ("more_like_this", None, tables.entity_ids[int(np.argmax(tables.pop[:, us]))]),
            ("more_like_this", None, "rt-a"),
            ("more_like_this", None, "nobody-knows"),
        ]:
            for user in (tables.user_ids[1], None):
                unified = build_context(task, "US", user, query, source, tables.title_of)
                hist = rng.normal(size=(1, tables.item_factors.shape[1])).astype(np.float32)
                hist_text = rng.normal(size=(1, tables.text_vec.shape[1])).astype(np.float32)
                # the last events: trained titles, an added one, padding; after a search or a recommendation
                recent = np.array([[rng.integers(1, tables.n_model_entities + 1), added[0], 3, 0, 0]])
                kinds = np.array([[int(rng.integers(1, 5)), 1, 3, 0, 0]])
                ctx = encoder.encode_contexts([unified], hist, hist_text=hist_text, recent=(recent, kinds))
                trained = rng.integers(1, tables.n_model_entities + 1, 150)
                for cand in (np.concatenate([trained, [0, 0], added]), trained):  # and the all-trained shortcut
                    batch = encoder.encode_candidates(ctx, cand, np.zeros(len(cand), np.int64))
                    one = encoder.encode_one(ctx, cand)
                    assert one.keys() == batch.keys()
                    for name, value in batch.items():
                        np.testing.assert_array_equal(one[name], value, err_msg=f"{task} {query} {source}: {name}")
                        assert one[name].dtype == value.dtype, name
                    looked_up |= (batch["cand_dense"][:, [3, 7]] > 0).any(0)
                    checked += 1
    assert checked == 48 and looked_up.all()


def test_recency_columns_follow_their_definition(tables):
    """Two recent events (a search click, then before it a recommendation click): weights 1 and 0.5; a
    candidate sharing a genre with the older one only matches 0.5 / 1.5; the last event was a search."""
    from unirank.core.recency import recency_columns
    from unirank.core.sorted_lookup import lookup

    genre_sets = [set(np.flatnonzero(tables.genre_hot[e])) for e in range(len(tables.genre_hot))]
    e1 = tables.n_model_entities + 1
    pairs = ((a, b) for a in range(1, e1) for b in range(1, e1) if genre_sets[a] and genre_sets[b])
    a, b = next((a, b) for a, b in pairs if not genre_sets[a] & genre_sets[b])
    cand = np.array([b, a])  # b shares the older event's genres (its own), a the last one's
    recent = np.array([[a, b, 0, 0, 0]])
    kinds = np.array([[1, 3, 0, 0, 0]])
    got = recency_columns(tables, recent, kinds, cand, np.zeros(2, np.int64), cand, e1)
    mean = (tables.item_factors[a] + 0.5 * tables.item_factors[b]) / 1.5
    np.testing.assert_allclose(got[:, 0], tables.item_factors[cand] @ mean, rtol=1e-5)
    np.testing.assert_allclose(got[:, 1], [0.5 / 1.5, 1.0 / 1.5], rtol=1e-6)
    co = lookup(tables.co_keys, tables.co_clicks, a * e1 + cand)
    np.testing.assert_allclose(got[:, 2], np.log1p(co), rtol=1e-6)
    assert got[:, 3].tolist() == [1.0, 1.0]
    # after a recommendation click: not a search; no history: every column 0
    assert recency_columns(tables, recent, np.array([[3, 1, 0, 0, 0]]), cand, np.zeros(2, np.int64), cand, e1)[
        :, 3
    ].tolist() == [0.0, 0.0]
    empty = np.zeros((1, 5), np.int64)
    assert not recency_columns(tables, empty, empty, cand, np.zeros(2, np.int64), cand, e1).any()
