"""What a practitioner runs today, scored on the same test impressions as the model: popularity per
country, BM25 over titles (bm25s) for search, implicit ALS for prequery and more_like_this, and
LightGBM LambdaMART on the same hand-made features the model sees (the lexical evidence included)."""

from __future__ import annotations

import numpy as np

from model_export.splits import Encoded
from unirank.core.features import DENSE_FEATURES
from unirank.core.tables import FeatureTables
from unirank.core.text import normalize
from unirank.core.vocab import Task


def bm25_scores(tables: FeatureTables, enc: Encoded) -> np.ndarray:
    """BM25 of each candidate's title for the request's query (search rows; 0 elsewhere)."""
    import bm25s

    retriever = bm25s.BM25()
    corpus = [title.split() or [""] for title in tables.norm_titles]
    retriever.index(bm25s.tokenization.Tokenized(*_vocab_ids(corpus)), show_progress=False)
    vocab = retriever.vocab_dict
    out = np.zeros(len(enc), np.float32)
    queries = enc.requests.query
    rows_of: dict[str, list[int]] = {}
    for row, req in enumerate(enc.inputs["cand_ctx"].tolist()):
        if enc.row_task[row] == Task.SEARCH.value and queries[req]:
            rows_of.setdefault(normalize(queries[req]), []).append(row)
    cand = enc.inputs["cand_ids"][:, 0]
    for query, rows in rows_of.items():
        tokens = [vocab[w] for w in query.split() if w in vocab]
        if tokens:
            out[rows] = retriever.get_scores(tokens)[cand[rows]]
    return out


def _vocab_ids(corpus: list[list[str]]) -> tuple[list[list[int]], dict[str, int]]:
    vocab: dict[str, int] = {}
    ids = [[vocab.setdefault(w, len(vocab)) for w in doc] for doc in corpus]
    return ids, vocab


def als_scores(tables: FeatureTables, enc: Encoded) -> np.ndarray:
    """implicit ALS factors of the feature window: user . item for prequery, source . item for
    more_like_this (0 for search and for users or items ALS has not seen)."""
    x = enc.inputs
    ctx = x["ctx_ids"][x["cand_ctx"]]
    items = tables.item_factors[x["cand_ids"][:, 0]]
    user = np.einsum("nf,nf->n", tables.user_factors[ctx[:, 4]], items)
    source = np.einsum("nf,nf->n", tables.item_factors[ctx[:, 3]], items)
    return np.select(
        [enc.row_task == Task.PREQUERY.value, enc.row_task == Task.MORE_LIKE_THIS.value], [user, source], 0.0
    ).astype(np.float32)


def _lgbm_features(enc: Encoded) -> np.ndarray:
    x = enc.inputs
    ctx = x["ctx_ids"][x["cand_ctx"]]
    return np.column_stack([x["cand_dense"], ctx[:, :3], x["cand_ids"][:, 1], x["cand_genres"][:, 0]]).astype(
        np.float32
    )


def _groups(enc: Encoded) -> np.ndarray:
    sizes = np.bincount(enc.inputs["cand_ctx"])
    return sizes[sizes > 0]


def lambdamart_booster(fit: Encoded, val: Encoded, seed: int):
    """LightGBM lambdarank on the dense features plus task, country, cluster, kind and first genre
    (categorical); rows are grouped by request (they are stored request by request)."""
    import lightgbm as lgb

    categorical = list(range(len(DENSE_FEATURES), len(DENSE_FEATURES) + 5))  # after the dense columns
    train = lgb.Dataset(_lgbm_features(fit), fit.labels, group=_groups(fit), categorical_feature=categorical)
    valid = lgb.Dataset(_lgbm_features(val), val.labels, group=_groups(val), categorical_feature=categorical)
    params = {
        "objective": "lambdarank",
        "metric": "ndcg",
        "ndcg_eval_at": [10],
        "learning_rate": 0.05,
        "num_leaves": 31,
        "min_data_in_leaf": 50,
        "seed": seed,
        "verbose": -1,
        "num_threads": 2,
    }
    return lgb.train(params, train, 400, valid_sets=[valid], callbacks=[lgb.early_stopping(30, verbose=False)])


def lambdamart_scores(fit: Encoded, val: Encoded, test: Encoded, seed: int) -> np.ndarray:
    """The test rows' scores by `lambdamart_booster` at its best iteration."""
    booster = lambdamart_booster(fit, val, seed)
    return booster.predict(_lgbm_features(test), num_iteration=booster.best_iteration).astype(np.float32)
