"""The experiment report: which variant won, from the impression log and the feedback joined to it.

Contract: `experiment_requests(log, name)` gives one row per request of the experiment (user, variant,
clicks, plays, reciprocal rank of the first click, and for interleaving the clicks credited to each
team). `report(requests)`:
- A/B: per variant requests, users, CTR (share of requests with a click), clicks and plays per request,
  MRR of clicks, each with a 95 % interval from a bootstrap over users (the unit of assignment); each
  variant against the first by the difference in clicks per request: bootstrap interval and a
  two-sided p-value from Welch's test on per-user click rates;
- interleaving: per request the team with more credited clicks wins (equal: a tie); wins, losses and
  ties per variant, and a two-sided exact binomial test of wins against losses;
- `power(requests, sizes)`: the share of random user subsets of each size on which the test finds the
  difference at p < 0.05 (how many users each method needs).
Everything is seeded; no scipy (an operator's image has numpy).
"""

from __future__ import annotations

import math
from dataclasses import dataclass

import numpy as np

from unirank.loop.logs import Log, credit

INTERLEAVED = "interleaved"


@dataclass
class Requests:
    """One entry per request of an experiment (arrays aligned)."""

    name: str
    mode: str  # "ab" | "interleave"
    user: np.ndarray  # object
    variant: np.ndarray  # object; for interleaving: "interleaved"
    clicks: np.ndarray
    plays: np.ndarray
    reciprocal_rank: np.ndarray  # of the first click, 0 without one
    team_clicks: dict[str, np.ndarray]  # interleaving: variant -> clicks its team's items got

    def __len__(self) -> int:
        return len(self.user)


def experiments(log: Log) -> list[str]:
    """The experiments in the log, the most recent last."""
    seen: dict[str, int] = {}
    for _, imp in log.impressions:
        if imp.experiment:
            seen[imp.experiment] = imp.ts
    return sorted(seen, key=seen.get)


def experiment_requests(log: Log, name: str) -> Requests:
    credits = credit(log.feedback)
    users, variants, clicks, plays, rr = [], [], [], [], []
    teams: dict[str, list[int]] = {}
    rows = [imp for _, imp in log.impressions if imp.experiment == name]
    mode = "interleave" if any(imp.variant == INTERLEAVED for imp in rows) else "ab"
    team_names = (
        sorted({i.get("variant") for imp in rows for i in imp.items if i.get("variant")})
        if mode == "interleave"
        else []
    )
    for name_ in team_names:
        teams[name_] = []
    for imp in rows:
        got = [credits.get((imp.rid, i["entity_id"]), (False, False)) for i in imp.items]
        n_clicks = sum(c for c, _ in got)
        first = next((p for p, (c, _) in enumerate(got) if c), None)
        users.append(imp.user or f"request:{imp.rid}")  # anonymous requests are their own unit
        variants.append(imp.variant)
        clicks.append(n_clicks)
        plays.append(sum(p for _, p in got))
        rr.append(0.0 if first is None else 1.0 / (first + 1))
        for team in team_names:
            teams[team].append(sum(c for (c, _), i in zip(got, imp.items, strict=True) if i.get("variant") == team))
    return Requests(
        name,
        mode,
        np.array(users, object),
        np.array(variants, object),
        np.array(clicks, float),
        np.array(plays, float),
        np.array(rr, float),
        {t: np.array(v, float) for t, v in teams.items()},
    )


# ---- statistics ---------------------------------------------------------------------------------------


def _normal_two_sided(z: float) -> float:
    return math.erfc(abs(z) / math.sqrt(2.0))


def welch_p(a: np.ndarray, b: np.ndarray) -> float:
    """Two-sided p-value of Welch's test (normal approximation to t: the samples here are users, many)."""
    if len(a) < 2 or len(b) < 2:
        return float("nan")
    se = math.sqrt(a.var(ddof=1) / len(a) + b.var(ddof=1) / len(b))
    if se == 0:
        return 1.0 if a.mean() == b.mean() else 0.0
    return _normal_two_sided((a.mean() - b.mean()) / se)


def binomial_p(wins: int, losses: int) -> float:
    """Two-sided exact binomial test of wins against losses under p = 1/2."""
    n = wins + losses
    if n == 0:
        return 1.0
    k = min(wins, losses)
    log_terms = [
        math.lgamma(n + 1) - math.lgamma(i + 1) - math.lgamma(n - i + 1) - n * math.log(2) for i in range(k + 1)
    ]
    tail = sum(math.exp(t) for t in log_terms)
    return min(1.0, 2.0 * tail)


def _per_user(r: Requests, mask: np.ndarray, values: np.ndarray) -> tuple[np.ndarray, np.ndarray]:
    """(sum of values, number of requests) per user among the masked requests."""
    users, inverse = np.unique(r.user[mask], return_inverse=True)
    return np.bincount(inverse, weights=values[mask], minlength=len(users)), np.bincount(inverse, minlength=len(users))


def _bootstrap_ratio(sums: np.ndarray, counts: np.ndarray, rng: np.random.Generator, n_boot: int) -> np.ndarray:
    """Bootstrap over users of sum(values) / sum(requests)."""
    if len(sums) == 0:
        return np.full(n_boot, np.nan)
    pick = rng.integers(0, len(sums), (n_boot, len(sums)))
    return sums[pick].sum(1) / np.maximum(counts[pick].sum(1), 1)


METRICS = {
    "ctr": lambda r: (r.clicks > 0).astype(float),
    "clicks_per_request": lambda r: r.clicks,
    "plays_per_request": lambda r: r.plays,
    "mrr": lambda r: r.reciprocal_rank,
}


def _variants(r: Requests, control: str | None) -> list[str]:
    """The variants, the control first: the one named, else `default` when there is one, else the first seen."""
    names = list(dict.fromkeys(r.variant.tolist()))
    first = control if control in names else ("default" if "default" in names else None)
    return ([first] + [n for n in names if n != first]) if first else names


def ab_report(r: Requests, n_boot: int = 2000, seed: int = 0, control: str | None = None) -> dict:
    rng = np.random.default_rng(seed)
    names = _variants(r, control)
    variants, boots = {}, {}
    for v in names:
        mask = r.variant == v
        row = {"requests": int(mask.sum()), "users": int(len(np.unique(r.user[mask])))}
        for metric, fn in METRICS.items():
            sums, counts = _per_user(r, mask, fn(r))
            boot = _bootstrap_ratio(sums, counts, rng, n_boot)
            row[metric] = float(sums.sum() / max(counts.sum(), 1))
            row[f"{metric}_ci95"] = [float(np.nanpercentile(boot, 2.5)), float(np.nanpercentile(boot, 97.5))]
            if metric == "clicks_per_request":
                boots[v] = boot
        variants[v] = row
    comparisons = []
    control = names[0] if names else None
    for v in names[1:]:
        a_sums, a_counts = _per_user(r, r.variant == v, r.clicks)
        b_sums, b_counts = _per_user(r, r.variant == control, r.clicks)
        diff = boots[v] - boots[control]
        comparisons.append(
            {
                "variant": v,
                "control": control,
                "metric": "clicks_per_request",
                "difference": variants[v]["clicks_per_request"] - variants[control]["clicks_per_request"],
                "relative": variants[v]["clicks_per_request"] / max(variants[control]["clicks_per_request"], 1e-12) - 1,
                "ci95": [float(np.nanpercentile(diff, 2.5)), float(np.nanpercentile(diff, 97.5))],
                "p_value": welch_p(a_sums / np.maximum(a_counts, 1), b_sums / np.maximum(b_counts, 1)),
            }
        )
    return {"experiment": r.name, "mode": "ab", "variants": variants, "comparisons": comparisons}


def interleave_report(r: Requests, control: str | None = None) -> dict:
    names = list(r.team_clicks)
    if control in names:
        names = [control] + [n for n in names if n != control]
    elif "default" in names:
        names = ["default"] + [n for n in names if n != "default"]
    if len(names) != 2:
        return {"experiment": r.name, "mode": "interleave", "variants": {}, "comparisons": [], "requests": len(r)}
    a, b = (r.team_clicks[n] for n in names)
    wins, losses, ties = int((a > b).sum()), int((a < b).sum()), int((a == b).sum())
    variants = {
        names[0]: {"wins": wins, "losses": losses, "ties": ties, "clicks": int(a.sum())},
        names[1]: {"wins": losses, "losses": wins, "ties": ties, "clicks": int(b.sum())},
    }
    decided = wins + losses
    comparison = {
        "variant": names[1],
        "control": names[0],
        "metric": "interleaving wins",
        "preference": (losses - wins) / decided if decided else 0.0,  # > 0: the variant wins more often
        "p_value": binomial_p(wins, losses),
        "requests": len(r),
        "requests_with_clicks": decided + int(((a == b) & (a > 0)).sum()),
    }
    return {"experiment": r.name, "mode": "interleave", "variants": variants, "comparisons": [comparison]}


def report(r: Requests, n_boot: int = 2000, seed: int = 0, control: str | None = None) -> dict:
    return interleave_report(r, control) if r.mode == "interleave" else ab_report(r, n_boot, seed, control)


def subset(r: Requests, users: set) -> Requests:
    mask = np.array([u in users for u in r.user], bool)
    return Requests(
        r.name,
        r.mode,
        r.user[mask],
        r.variant[mask],
        r.clicks[mask],
        r.plays[mask],
        r.reciprocal_rank[mask],
        {t: v[mask] for t, v in r.team_clicks.items()},
    )


def p_value(r: Requests) -> float:
    """The test's p-value alone (cheap: no bootstrap)."""
    if r.mode == "interleave":
        names = list(r.team_clicks)
        if len(names) != 2:
            return float("nan")
        a, b = (r.team_clicks[n] for n in names)
        return binomial_p(int((a > b).sum()), int((a < b).sum()))
    names = _variants(r, None)
    if len(names) < 2:
        return float("nan")
    rates = []
    for v in names[:2]:
        sums, counts = _per_user(r, r.variant == v, r.clicks)
        rates.append(sums / np.maximum(counts, 1))
    return welch_p(*rates)


def power(r: Requests, sizes: list[int], trials: int = 200, seed: int = 0) -> list[dict]:
    """For each number of users: the share of random subsets of that many users with p < 0.05."""
    rng = np.random.default_rng(seed)
    everyone = np.unique(r.user)
    out = []
    for n in sizes:
        if n > len(everyone):
            break
        hits = sum(p_value(subset(r, set(rng.choice(everyone, n, replace=False)))) < 0.05 for _ in range(trials))
        out.append({"users": n, "power": hits / trials, "trials": trials})
    return out


def format_report(result: dict) -> str:
    lines = [f"# Experiment {result['experiment']} ({result['mode']})", ""]
    if result["mode"] == "ab":
        lines += [
            "| variant | requests | users | CTR | clicks/request | plays/request | MRR |",
            "|---|---|---|---|---|---|---|",
        ]
        for v, row in result["variants"].items():
            cells = [f"{row[m]:.4f} [{row[m + '_ci95'][0]:.4f}, {row[m + '_ci95'][1]:.4f}]" for m in METRICS]
            lines.append(f"| {v} | {row['requests']} | {row['users']} | " + " | ".join(cells) + " |")
        for c in result["comparisons"]:
            lines.append(
                f"\n{c['variant']} vs {c['control']}: clicks/request {c['relative']:+.1%} "
                f"(difference {c['difference']:+.4f}, 95 % CI [{c['ci95'][0]:+.4f}, {c['ci95'][1]:+.4f}]), "
                f"Welch p = {c['p_value']:.3g}"
            )
    else:
        lines += ["| variant | wins | losses | ties | clicks |", "|---|---|---|---|---|"]
        for v, row in result["variants"].items():
            lines.append(f"| {v} | {row['wins']} | {row['losses']} | {row['ties']} | {row['clicks']} |")
        for c in result["comparisons"]:
            lines.append(
                f"\n{c['variant']} vs {c['control']}: preference {c['preference']:+.3f} over "
                f"{c['requests']} requests, binomial p = {c['p_value']:.3g}"
            )
    if result.get("power"):
        lines += ["", "| users | power (p < 0.05) |", "|---|---|"]
        lines += [f"| {p['users']} | {p['power']:.2f} |" for p in result["power"]]
    return "\n".join(lines) + "\n"


def plot(result: dict, path) -> None:
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    fig, axes = plt.subplots(1, 2 if result.get("power") else 1, figsize=(12 if result.get("power") else 6.5, 4.5))
    axes = np.atleast_1d(axes)
    ax = axes[0]
    names = list(result["variants"])
    if result["mode"] == "ab":
        values = [result["variants"][n]["clicks_per_request"] for n in names]
        cis = np.array([result["variants"][n]["clicks_per_request_ci95"] for n in names])
        ax.bar(names, values, yerr=[np.array(values) - cis[:, 0], cis[:, 1] - np.array(values)], capsize=6)
        ax.set_ylabel("clicks per request (95 % CI, users bootstrapped)")
    else:
        rows = [result["variants"][n] for n in names]
        ax.bar(names, [r["wins"] for r in rows], label="wins")
        ax.bar(names, [r["ties"] for r in rows], bottom=[r["wins"] for r in rows], label="ties", alpha=0.4)
        ax.set_ylabel("requests")
        ax.legend()
    p = result["comparisons"][0]["p_value"] if result["comparisons"] else float("nan")
    ax.set_title(f"{result['experiment']} ({result['mode']}), p = {p:.3g}")
    if result.get("power"):
        axes[1].plot([q["users"] for q in result["power"]], [q["power"] for q in result["power"]], "o-")
        axes[1].axhline(0.8, color="grey", linestyle="--")
        axes[1].set_xscale("log")
        axes[1].set_xlabel("users")
        axes[1].set_ylabel("power at p < 0.05")
        axes[1].set_title("users needed to detect the difference")
    fig.tight_layout()
    fig.savefig(path, dpi=110)
    plt.close(fig)
