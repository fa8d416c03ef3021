"""Recall@K of search retrieval: does the title the user chose come back among the candidates?

Contract: `python -m loadtest.retrieval_recall --bundle B --data D [--k 100]` reads the clicked search rows of
D's events (each one request: its query, country and chosen entity) and asks B's retrieval for the query's
candidates, K of them, as the service does for a search request that brings none. Three query sets:

- `typed`: the logged queries that are none of the chosen entity's tags (title words as typed);
- `tag`: the logged queries that are one of its tags (MovieLens: a user's own tag for the movie);
- `genre`: each chosen entity's first genre name as the query (what a user browsing by genre types).

Two retrievals: `title words` (the title index alone, most popular first: search retrieval before the facet
index) and `service` (`service.model.retrieval.Retriever.search`: titles, facets and, for bundles with the
text encoder, semantic neighbours when words find nothing); for such bundles also the semantic neighbours
alone, as if words had found nothing (what the query's meaning finds). Writes JSON + markdown + PNG under
--out; the ratio of the first two is what changed. Invariant to row order: each (query, country, entity) counts once.
"""

from __future__ import annotations

import argparse
from pathlib import Path

import numpy as np
import pyarrow.compute as pc
import pyarrow.parquet as pq

from loadtest.report import figure, save_results
from service.core.settings import Settings
from service.model.bundle import LoadedBundle
from unirank.core.markdown import markdown_table
from unirank.core.schema import events_path
from unirank.core.text import normalize


def _requests(bundle: LoadedBundle, data: Path) -> dict[str, set[tuple[str, int, int]]]:
    t = bundle.tables
    events = pq.read_table(events_path(data), columns=["task", "query", "country", "target_entity_id", "clicked"])
    clicked = events.filter(pc.and_(pc.equal(events["task"], "search"), events["clicked"]))
    sets: dict[str, set[tuple[str, int, int]]] = {"typed": set(), "tag": set(), "genre": set()}
    columns = (clicked[c].to_pylist() for c in ("query", "country", "target_entity_id"))
    for query, country, entity in zip(*columns, strict=True):
        e, c = t.entity_index.get(entity, 0), t.country_index.get(country, 0)
        if not e:
            continue
        q = normalize(query)
        tags = set(_tags_of(t, e))
        sets["tag" if q in tags else "typed"].add((q, c, e))
        if genres := t.genres_of(e):
            sets["genre"].add((normalize(genres[0]), c, e))
    return sets


def _tags_of(tables, e: int) -> list[str]:
    table = tables.entity_table
    if "tags" not in table.column_names or e > tables.n_model_entities:
        return []
    return [normalize(x) for x in table.column("tags")[e - 1].as_py() or []]


def title_words(bundle: LoadedBundle, query: str, country: int, k: int) -> np.ndarray:
    """Search retrieval before the facet index: title matches, most popular first."""
    t = bundle.tables
    found = t.title_index.lookup(query)
    found = found[t.avail[found, country]]
    return found[np.argsort(-t.pop[found, country], kind="stable")[:k]]


def recall(bundle: LoadedBundle, sets: dict, k: int) -> dict:
    bundle.retriever.limit = k
    out = {}
    for name, rows in sets.items():
        rows = sorted(rows)
        before = sum(e in title_words(bundle, q, c, k) for q, c, e in rows)
        after = sum(e in bundle.retriever.search(q, c) for q, c, e in rows)
        n = max(len(rows), 1)
        out[name] = {"requests": len(rows), "title_words": before / n, "service": after / n}
        if bundle.retriever.embed_query is not None:  # the semantic neighbours alone, as if words found nothing
            out[name]["semantic_alone"] = sum(e in bundle.retriever.semantic(q, c, k) for q, c, e in rows) / n
    return out


def _plot(result: dict, path: Path) -> None:
    names = list(result["recall"])
    with figure(path, size=(6.5, 4.0)) as (_, ax):
        x = np.arange(len(names))
        ax.bar(x - 0.2, [result["recall"][n]["title_words"] for n in names], 0.4, label="title words")
        ax.bar(x + 0.2, [result["recall"][n]["service"] for n in names], 0.4, label="service retrieval")
        ax.set_xticks(x, names)
        ax.set_ylabel(f"Recall@{result['k']}")
        ax.set_ylim(0, 1)
        ax.legend()


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--bundle", type=Path, default=Path("artifacts/demo"))
    parser.add_argument("--data", type=Path, required=True)
    parser.add_argument("--k", type=int, default=100)
    parser.add_argument("--out", type=Path, default=Path("results"))
    args = parser.parse_args()
    bundle = LoadedBundle.load(args.bundle, Settings(micro_batch=False))
    sets = _requests(bundle, args.data)
    result = {
        "bundle": str(args.bundle),
        "data": str(args.data),
        "k": args.k,
        "semantic": bundle.retriever.embed_query is not None,
        "recall": recall(bundle, sets, args.k),
    }
    semantic = result["semantic"]
    rows = [
        (n, r["requests"], f"{r['title_words']:.3f}", f"{r['service']:.3f}")
        + ((f"{r['semantic_alone']:.3f}",) if semantic else ())
        for n, r in result["recall"].items()
    ]
    headers = ["queries", "requests", f"title words R@{args.k}", f"service R@{args.k}"]
    table = markdown_table(headers + ([f"semantic alone R@{args.k}"] if semantic else []), rows)
    save_results(result, args.out, "retrieval-recall", table + "\n", _plot)
    print(table)
    print("files:", result["files"])


if __name__ == "__main__":
    main()
