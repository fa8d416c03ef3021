"""Does the pre-query row adapt to what the user just did? Pre-query NDCG@10 on the requests that follow a
click, with and without the user's live history (`--live`), or with and without the session candidates of
`full` (UNIRANK_SESSION_CANDIDATES), through the service's own ranker.

Contract: `measure(bundle, data_dir, session_candidates)` replays the test window of the dataset the
bundle was trained on. For each pre-query request whose user's previous request had a click, the user's
live history is what /events would hold by then (their clicks and plays since the bundle's snapshot
ended, most recent first), the snapshot being the one a bundle built at the end of the feature window
would hold (a bundle's own snapshot holds each user's last clicks up to the end of its log, test window
included: replayed beside the live events, it would show the model the clicks it is asked to predict);
the service's `full` path ranks (stage one at cluster level, then the related
titles of that live history when on, re-scored with the history) and the top 10 is scored against the
request's clicks (a click outside the list counts as missed: tie-aware `model_export.metrics`). "No live
history" ranks the same requests as if no event had reached /events since the snapshot (the bundle's
snapshot of the user's history alone; the session candidates then have nothing to add). The same requests
go through every setting; each difference from the first setting comes with a paired bootstrap 95 %
interval. Writes JSON, a markdown table and a PNG.

    python -m loadtest.session_adaptation --bundle artifacts/demo --data artifacts/demo-data --live --after-search
"""

from __future__ import annotations

import argparse
import asyncio
import json
from pathlib import Path

import numpy as np
from tqdm import tqdm

from loadtest.report import figure
from model_export.data import SPLIT_BOUNDS, Dataset, Requests
from model_export.metrics import ranking_metrics
from model_export.splits import click_log
from model_export.table_builder import history_snapshot
from service.core.schemas import RankRequest
from service.core.settings import Settings
from service.model.bundle import LoadedBundle
from service.model.context import build_request_context
from service.ranking.ranker import Ranker, Timings
from unirank.core.history import HISTORY_LENGTH, event_kind
from unirank.core.markdown import markdown_table
from unirank.core.vocab import Task

K = 10


def _requests_after_a_click(
    requests: Requests, first_live_ms: int, search_only: bool = False
) -> list[tuple[int, list[bytes]]]:
    """(request position, live history entries) of each pre-query request in the test window whose
    user's previous request had a click (a search's, with `search_only`); history: the user's clicks
    since `first_live_ms`."""
    clicked_rows = requests.clicked.astype(bool)
    clicked = np.bincount(requests.row_request[clicked_rows], minlength=len(requests.request_id)) > 0
    played_rows = requests.played.astype(bool)
    order = np.lexsort((requests.request_id, requests.timestamp))
    live: dict[str, list[bytes]] = {}
    previous_clicked: dict[str, bool] = {}
    rows_of = np.split(np.argsort(requests.row_request, kind="stable"), np.cumsum(np.bincount(requests.row_request)))
    out = []
    test_from = np.quantile(requests.timestamp, SPLIT_BOUNDS["test"][0])
    for r in order.tolist():
        user = requests.user_id[r]
        if requests.task[r] == Task.PREQUERY and requests.timestamp[r] >= test_from and previous_clicked.get(user):
            out.append((r, list(live.get(user, []))))
        previous_clicked[user] = bool(clicked[r]) and (requests.task[r] == Task.SEARCH or not search_only)
        if requests.timestamp[r] >= first_live_ms:
            for row in rows_of[r].tolist():
                if clicked_rows[row]:
                    entry = f"{requests.target_entity_id[row]}|{event_kind(requests.task[r], played_rows[row])}"
                    live.setdefault(user, []).insert(0, entry.encode())
            live[user] = live.get(user, [])[:HISTORY_LENGTH]
    return out


async def _rank(ranker: Ranker, request: RankRequest, live: list[bytes], logged: np.ndarray | None = None) -> list[int]:
    """The entity indices the service ranks for `request` with `live` history, best first: its own candidates
    (stage one, then the session's related titles), or the `logged` impressions (as a frontend passing
    `candidates` to /rank)."""
    bundle = ranker.bundle
    ctx = build_request_context(request, bundle.tables, bundle.level, bundle.impute)
    timings = Timings()
    history = bundle.features.history(live, ctx.user)
    if logged is not None:
        candidates = logged
    else:
        candidates = ranker.with_session(ctx, await ranker.cluster_candidates(ctx, timings), history)
    scores = await ranker._blended(ctx, candidates, history, timings, float("inf"), None)
    return candidates[np.argsort(-scores, kind="stable")].tolist()


def settings_for(session_candidates: list[int], live: bool) -> dict[str, tuple[int, bool]]:
    """{setting name: (session candidates, live history on)}: the first is the baseline. With `live`: no live
    history, then the live history with each number of session candidates; else the live history with each."""
    related = {
        (f"live history, {n} related" if live else f"{n} related"): (n, True) for n in sorted(session_candidates)
    }
    return ({"no live history": (0, False)} if live else {}) | related


def snapshot_at(bundle: LoadedBundle, dataset: Dataset, end_ms: int) -> None:
    """Replaces the bundle's history snapshot with each user's last clicks strictly before `end_ms`."""
    t = bundle.tables
    users, ts, ents, kinds = click_log(bundle.features.encoder, dataset)
    before = ts < end_ms
    U1 = len(t.history_ptr) - 1
    t.history_ptr, t.history_items, t.history_kinds = history_snapshot(
        users[before], ts[before], ents[before], kinds[before], U1
    )


def measure(
    bundle_dir: Path,
    data_dir: Path,
    session_candidates: list[int],
    limit: int = 3000,
    search_only: bool = False,
    live: bool = False,
    logged: bool = False,
) -> dict:
    """`logged`: rank each request's logged impressions (what the user was shown, so every click can be
    ranked) instead of the service's own candidates, whose titles the log never showed count as not clicked."""
    settings = Settings(bundle=str(bundle_dir))
    bundle = LoadedBundle.load(bundle_dir, settings)
    dataset = Dataset.load(data_dir)
    requests = Requests.from_events(dataset.events)
    snapshot_end = int(np.quantile(requests.timestamp, SPLIT_BOUNDS["feature"][1]))
    snapshot_at(bundle, dataset, snapshot_end)
    chosen = _requests_after_a_click(requests, snapshot_end, search_only)[:limit]
    positives = [set() for _ in range(len(requests.request_id))]
    for row in np.flatnonzero(requests.clicked.astype(bool)).tolist():
        positives[requests.row_request[row]].add(requests.target_entity_id[row])
    shown: dict[int, np.ndarray] = {}
    if logged:
        wanted = {r for r, _ in chosen}
        for row in np.flatnonzero(np.isin(requests.row_request, list(wanted))).tolist():
            shown.setdefault(int(requests.row_request[row]), []).append(requests.target_entity_id[row])
        shown = {r: bundle.features.encoder.entity_indices(sorted(ids)) for r, ids in shown.items()}
    per_setting = {}
    for name, (n, with_live) in settings_for(session_candidates, live).items():
        ranker = Ranker(bundle, None, None, settings.model_copy(update={"session_candidates": n}))
        groups, scores, labels = [], [], []
        for i, (r, events) in enumerate(tqdm(chosen, desc=name, unit="request")):
            request = RankRequest(
                task="prequery", country=requests.country[r], user_id=requests.user_id[r], personalization="full"
            )
            ranked = asyncio.run(_rank(ranker, request, events if with_live else [], shown.get(r)))[:K]
            ids = [bundle.tables.entity_ids[c] for c in ranked]
            missed = [e for e in positives[r] if e not in ids]
            groups += [i] * (len(ids) + len(missed))
            scores += [float(len(ids) - j) for j in range(len(ids))] + [-1.0] * len(missed)
            labels += [int(e in positives[r]) for e in ids] + [1] * len(missed)
        per_setting[name] = ranking_metrics(np.array(groups), np.array(scores), np.array(labels), K)[f"ndcg@{K}"]
    return _report(per_setting, len(chosen)) | {
        "after": "a search click" if search_only else "a click",
        "candidates": "the logged impressions" if logged else "the service's own",
    }


def _report(per_setting: dict[str, np.ndarray], n_requests: int) -> dict:
    """Each setting's mean NDCG@10 and its difference from the first (absolute, relative, paired bootstrap
    95 % interval of the absolute one)."""
    baseline = next(iter(per_setting))
    base = per_setting[baseline]
    rng = np.random.default_rng(0)
    rows = {}
    for name, ndcg in per_setting.items():
        diff = ndcg - base
        boot = diff[rng.integers(0, len(diff), (2000, len(diff)))].mean(1) if len(diff) else np.zeros(1)
        rows[name] = {
            "ndcg_at_10": float(ndcg.mean()),
            "vs_baseline": float(diff.mean()),
            "vs_baseline_relative": float(diff.mean() / max(base.mean(), 1e-12)),
            "vs_baseline_ci95": [float(np.percentile(boot, 2.5)), float(np.percentile(boot, 97.5))],
        }
    return {"requests": n_requests, "k": K, "baseline": baseline, "settings": rows}


def genre_probe(
    bundle_dir: Path, session_candidates: list[int], users: int = 40, events: int = 11, k: int = 20, seed: int = 0
) -> dict:
    """The issue's probe, per genre: a user clicks and plays `events` titles of one genre (the most popular
    ones available in the US); how many of the pre-query top k are of that genre before, and after with
    each setting. Averaged over `users` users of the bundle (drawn by seed) and every genre."""
    settings = Settings(bundle=str(bundle_dir))
    bundle = LoadedBundle.load(bundle_dir, settings)
    t = bundle.tables
    rng = np.random.default_rng(seed)
    us = t.country_index.get("US", 0)
    chosen = rng.choice(np.arange(1, len(t.user_ids)), min(users, len(t.user_ids) - 1), replace=False)
    rankers = {
        n: Ranker(bundle, None, None, settings.model_copy(update={"session_candidates": n})) for n in session_candidates
    }
    out: dict[str, dict] = {}
    for g in tqdm(range(1, len(t.genres)), desc="genres", unit="genre"):
        of_genre = np.flatnonzero(t.genre_hot[:, g] & t.avail[:, us])
        of_genre = of_genre[of_genre > 0]
        if len(of_genre) < events:
            continue
        engaged = of_genre[np.argsort(-t.pop[of_genre, us], kind="stable")[:events]]
        live = [f"{t.entity_ids[e]}|{event_kind('prequery', True)}".encode() for e in engaged[::-1]]
        counts = {"before": [], **{f"after_{n}": [] for n in session_candidates}}
        for u in chosen.tolist():
            request = RankRequest(task="prequery", country="US", user_id=t.user_ids[u], personalization="full")
            top = asyncio.run(_rank(rankers[min(session_candidates)], request, []))[:k]
            counts["before"].append(int(t.genre_hot[top, g].sum()))
            for n, ranker in rankers.items():
                top = asyncio.run(_rank(ranker, request, live))[:k]
                counts[f"after_{n}"].append(int(t.genre_hot[top, g].sum()))
        out[t.genres[g]] = {name: float(np.mean(v)) for name, v in counts.items()}
    mean = {name: float(np.mean([row[name] for row in out.values()])) for name in next(iter(out.values()))}
    return {"users": len(chosen), "events": events, "k": k, "per_genre": out, "mean": mean}


def write(result: dict, out: Path) -> None:
    out.mkdir(parents=True, exist_ok=True)
    (out / "session_adaptation.json").write_text(json.dumps(result, indent=2))
    lines = [
        f"Pre-query NDCG@10 on {result['requests']} requests that follow {result['after']} (personalization full; "
        f"candidates: {result['candidates']})",
        "",
        markdown_table(
            ("setting", "NDCG@10", f"vs {result['baseline']}", "relative", "95 % CI"),
            [
                (
                    name,
                    f"{row['ndcg_at_10']:.4f}",
                    f"{row['vs_baseline']:+.4f}",
                    f"{100 * row['vs_baseline_relative']:+.1f} %",
                    "[{:+.4f}, {:+.4f}]".format(*row["vs_baseline_ci95"]),
                )
                for name, row in result["settings"].items()
            ],
        ),
    ]
    (out / "session_adaptation.md").write_text("\n".join(lines) + "\n")
    names = list(result["settings"])
    values = [result["settings"][n]["ndcg_at_10"] for n in names]
    with figure(out / "session_adaptation.png", size=(5, 3.2), dpi=120) as (_, ax):
        ax.bar(names, values, color=(["#adb5bd"] + ["#3b5bdb"] * len(names))[: len(names)])
        ax.set_ylabel("pre-query NDCG@10")
        ax.set_title(f"after a click ({result['requests']} requests)")
    print("\n".join(lines))


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--bundle", type=Path, default=Path("artifacts/demo"))
    parser.add_argument("--data", type=Path, default=Path("artifacts/demo-data"))
    parser.add_argument("--out", type=Path, default=Path("results/session"))
    parser.add_argument("--session-candidates", type=int, nargs="+", default=[0, 50])
    parser.add_argument("--limit", type=int, default=3000, help="requests at most (the first in time)")
    parser.add_argument("--after-search", action="store_true", help="only requests whose previous was a search click")
    parser.add_argument(
        "--live", action="store_true", help="without the live history first, then with it and each --session-candidates"
    )
    parser.add_argument(
        "--logged", action="store_true", help="rank each request's logged impressions, not the service's candidates"
    )
    parser.add_argument("--genre-probe", action="store_true", help="the clicks-on-one-genre probe instead")
    args = parser.parse_args()
    if args.genre_probe:
        result = genre_probe(args.bundle, args.session_candidates)
        args.out.mkdir(parents=True, exist_ok=True)
        (args.out / "genre_probe.json").write_text(json.dumps(result, indent=2))
        headers = ("genre", "before", *(f"after, {n} session candidates" for n in args.session_candidates))
        rows = [
            (genre, *(f"{v:.1f}" for v in row.values()))
            for genre, row in {**result["per_genre"], "mean": result["mean"]}.items()
        ]
        lines = [markdown_table(headers, rows)]
        (args.out / "genre_probe.md").write_text("\n".join(lines) + "\n")
        print("\n".join(lines))
        return
    result = measure(
        args.bundle, args.data, args.session_candidates, args.limit, args.after_search, args.live, args.logged
    )
    write(result, args.out)


if __name__ == "__main__":
    main()
