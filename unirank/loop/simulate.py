"""Simulated users for a running service: the synthetic generator's users, with their hidden tastes, type
queries keystroke by keystroke, open home pages and title pages, and click and play by a position-biased
click model, posting each click with its request id and position.

Contract: `simulate(url, data_dir, users, duration_s, seed, sessions)` rebuilds the generator's world
from `data_dir/synth.json` (the same seed gives the same tastes, so the ground truth is known), picks
`users` users by activity, and runs them, `concurrency` sessions at a time, until `duration_s` passes
or each has had `sessions` sessions. A user's choices come from its own random stream (seed, user), so a run is
reproducible for the same model and catalogue. Click model: P(click at position p) =
examination(p) x P(attractive), examination(p) = 1 / (1 + p)^EXAMINATION_DECAY, attractiveness the
generator's own click probability for that user, item and context; P(play | click) the generator's.
With a world generated with `session_intent`, that share of sessions carries an intent genre (drawn as
the generator draws it) and runs as the generator's intent sessions do: a home visit before the search (half
of them), the search for a title of that genre, a home visit after it, and the found title's page (half of
them), every choice by the session's pulled taste.
Returns counts per task and per variant as the responses reported them.
"""

from __future__ import annotations

import asyncio
import json
import time
from collections import Counter, defaultdict
from dataclasses import dataclass, field
from pathlib import Path

import httpx
import numpy as np

from model_export.synth import (
    COUNTRIES,
    INTENT_BEFORE,
    INTENT_MLT,
    Catalog,
    SynthParams,
    mlt_logit,
    play_probability,
    prequery_logit,
    search_logit,
    world,
)

EXAMINATION_DECAY = 0.8
SEARCH_K, HOME_K, TITLE_K = 10, 20, 15
SEARCH_SHARE = 0.45  # of sessions; the rest start on the home page
TITLE_PAGE_RATE = 0.5  # a click on the home page opens the title's page (more like this) this often
LETTERS = np.array(list("abcdefghijklmnopqrstuvwxyz"))


def examination(positions: np.ndarray) -> np.ndarray:
    return 1.0 / (1.0 + positions) ** EXAMINATION_DECAY


def _sigmoid(x):
    return 1.0 / (1.0 + np.exp(-x))


@dataclass
class Tally:
    requests: Counter = field(default_factory=Counter)  # per task
    clicks: Counter = field(default_factory=Counter)
    plays: Counter = field(default_factory=Counter)
    by_variant: dict = field(default_factory=lambda: defaultdict(Counter))  # variant -> requests, clicks
    errors: Counter = field(default_factory=Counter)  # what failed: HTTP status or exception name
    sessions: int = 0
    retries: int = 0

    def summary(self) -> dict:
        return {
            "sessions": self.sessions,
            "requests": dict(self.requests),
            "clicks": dict(self.clicks),
            "plays": dict(self.plays),
            "errors": sum(self.errors.values()),
            "error_kinds": dict(self.errors),
            "retries": self.retries,
            "by_variant": {v: dict(c) for v, c in self.by_variant.items()},
        }


class World:
    """The generator's ground truth, indexed the way the service names things."""

    def __init__(self, data_dir: Path):
        params = json.loads((data_dir / "synth.json").read_text())["params"]
        self.params = SynthParams(**params)
        self.cat: Catalog = world(self.params)
        self.n_entities = self.params.entities
        members: dict[int, list[int]] = defaultdict(list)
        for e in np.flatnonzero(self.cat.franchise):
            members[int(self.cat.franchise[e])].append(int(e))
        self.franchise_members = members

    @staticmethod
    def entity_id(index: int) -> str:
        return f"e{index:06d}"

    @staticmethod
    def user_id(index: int) -> str:
        return f"u{index:07d}"

    def index(self, entity_id: str) -> int:
        """The generator's index of a catalogue id (0 for anything else, e.g. entities added at run time)."""
        if len(entity_id) == 7 and entity_id[0] == "e" and entity_id[1:].isdigit():
            i = int(entity_id[1:])
            return i if 1 <= i <= self.n_entities else 0
        return 0

    def country(self, user: int) -> str:
        return COUNTRIES[int(self.cat.user_country[user])]


class SimulatedUser:
    def __init__(
        self,
        w: World,
        user: int,
        seed: int,
        client: httpx.AsyncClient,
        tally: Tally,
        slots: asyncio.Semaphore | None = None,
    ):
        """slots: sessions in flight across all users at most (each user's sessions are one after another)."""
        self.w, self.user, self.client, self.tally = w, user, client, tally
        self.slots = slots or asyncio.Semaphore(1)
        self.rng = np.random.default_rng([seed, user])
        self.uid = w.user_id(user)
        self.country = w.country(user)

    async def run(self, deadline: float, sessions: int | None) -> None:
        done = 0
        while time.monotonic() < deadline and (sessions is None or done < sessions):
            async with self.slots:
                share = self.w.params.session_intent  # drawn only when on: runs without it are what they were
                if share > 0 and self.rng.random() < share:
                    await self.intent_session(int(self.w.cat.draw_intent(np.full(1, self.user), self.rng)[0]))
                elif self.rng.random() < SEARCH_SHARE:
                    await self.search_session()
                else:
                    await self.home_session()
            done += 1
            self.tally.sessions += 1

    async def _rank(self, body: dict) -> dict | None:
        try:
            r = await self.client.post("/rank", json=body | {"country": self.country, "user_id": self.uid})
        except httpx.HTTPError as exc:
            self.tally.errors[f"/rank {type(exc).__name__}"] += 1
            return None
        if r.status_code != 200:
            self.tally.errors[f"/rank {r.status_code}"] += 1
            return None
        answer = r.json()
        self.tally.requests[body["task"]] += 1
        self.tally.by_variant[answer.get("variant") or answer.get("model") or ""]["requests"] += 1
        return answer

    async def _react(
        self, answer: dict, task: str, logits: np.ndarray, ents: np.ndarray, intent: np.ndarray | None = None
    ) -> list[int]:
        """Position-biased clicks (and plays, by the session's taste with `intent`) on an answer; posts them;
        returns the clicked entities."""
        positions = np.arange(len(ents))
        p_click = examination(positions) * _sigmoid(logits) * (ents > 0)
        clicked = self.rng.random(len(ents)) < p_click
        if not clicked.any():
            return []
        users = np.full(1, self.user)
        p_play = play_probability(self.w.cat, users, ents[None, :], intent)[0]
        played = clicked & (self.rng.random(len(ents)) < p_play)
        events = []
        for p in np.flatnonzero(clicked):
            item = answer["items"][p]
            base = {
                "user_id": self.uid,
                "task": task,
                "entity_id": item["entity_id"],
                "request_id": answer["request_id"],
                "position": int(p),
                "country": self.country,
            }
            events.append(base | {"action": "click"})
            if played[p]:
                events.append(base | {"action": "play"})
            variant = item.get("variant") or answer.get("variant") or answer.get("model") or ""
            self.tally.by_variant[variant]["clicks"] += 1
        self.tally.clicks[task] += int(clicked.sum())
        self.tally.plays[task] += int(played.sum())
        await self._post_events(events)
        return [int(e) for e in ents[clicked]]

    async def _post_events(self, events: list[dict], attempts: int = 3) -> None:
        """As a well-behaved client: a 503 (or a dropped connection) is retried after its Retry-After."""
        for attempt in range(attempts):
            try:
                r = await self.client.post("/events", json=events)
            except httpx.HTTPError as exc:
                failure, wait = f"/events {type(exc).__name__}", 1.0
            else:
                if r.status_code == 202:
                    return
                failure, wait = f"/events {r.status_code}", float(r.headers.get("retry-after", 1))
                if r.status_code != 503:
                    break
            if attempt < attempts - 1:
                self.tally.retries += 1
                await asyncio.sleep(wait)
        self.tally.errors[failure] += 1

    def _ents(self, answer: dict) -> np.ndarray:
        return np.array([self.w.index(i["entity_id"]) for i in answer["items"]], np.int64)

    async def intent_session(self, intent: int) -> None:
        """A session with an intent genre: home before (sometimes), the search, home after, the found title's page."""
        if self.rng.random() < INTENT_BEFORE:
            await self.home_session(intent, title_pages=False)
        target = await self.search_session(intent)
        await self.home_session(intent, title_pages=False)
        if target and self.rng.random() < INTENT_MLT:
            await self.title_page(target, intent)

    async def search_session(self, intent: int = -1) -> int:
        """Types a title it wants (by its taste, pulled toward `intent` when >= 0); returns that title."""
        cat, rng = self.w.cat, self.rng
        session = np.full(1, intent)
        c = int(cat.user_country[self.user])
        weights = cat.pop_country[:, c] / cat.pop_country[:, c].sum()
        pool = rng.choice(len(weights), 30, p=weights)
        taste = cat.log_taste(np.full(1, self.user), pool[None, :], session)[0]
        target = int(pool[np.argmax(taste + rng.gumbel(size=len(pool)))])
        text = cat.norm_titles[target]
        if rng.random() < self.w.params.keyword_rate:
            words = text.split()
            text = words[int(rng.integers(len(words)))]
        if rng.random() < self.w.params.typo_rate and len(text) > 3:
            i = int(rng.integers(1, len(text)))
            text = text[:i] + LETTERS[rng.integers(26)] + text[i + 1 :]
        patience = 1 + int(rng.geometric(0.22))
        answer, query, typed = None, "", None
        for n in range(1, len(text) + 1):
            query = text[:n].strip()
            if not query or query == typed:
                continue
            typed = query
            answer = await self._rank({"task": "search", "query": query, "k": SEARCH_K})
            if answer is None:
                return target
            top = [self.w.index(i["entity_id"]) for i in answer["items"][:3]]
            if target in top or n >= patience + 2:
                break
        if answer is None or not answer["items"]:
            return target
        ents = self._ents(answer)
        users = np.full(1, self.user)
        prefix = np.array([[cat.norm_titles[e].startswith(query) if e > 0 else False for e in ents]])
        logits = search_logit(cat, users, ents[None, :], (ents == target)[None, :], prefix, session)[0]
        await self._react(answer, "search", logits, ents, session)
        return target

    async def home_session(self, intent: int = -1, title_pages: bool = True) -> None:
        answer = await self._rank({"task": "prequery", "k": HOME_K})
        if answer is None or not answer["items"]:
            return
        ents = self._ents(answer)
        session = np.full(1, intent)
        logits = prequery_logit(self.w.cat, np.full(1, self.user), ents[None, :], session)[0]
        for clicked in await self._react(answer, "prequery", logits, ents, session):
            if title_pages and self.rng.random() < TITLE_PAGE_RATE:
                await self.title_page(clicked)

    async def title_page(self, source: int, intent: int = -1) -> None:
        answer = await self._rank(
            {"task": "more_like_this", "source_entity_id": self.w.entity_id(source), "k": TITLE_K}
        )
        if answer is None or not answer["items"]:
            return
        cat = self.w.cat
        ents = self._ents(answer)
        g_src, g = cat.genres[source], cat.genres[np.maximum(ents, 0)]
        jaccard = (g & g_src).sum(1) / np.maximum((g | g_src).sum(1), 1)
        same = (cat.franchise[np.maximum(ents, 0)] == cat.franchise[source]) & (cat.franchise[source] > 0)
        session = np.full(1, intent)
        logits = mlt_logit(cat, np.full(1, self.user), ents[None, :], jaccard[None, :], same[None, :], session)[0]
        await self._react(answer, "more_like_this", logits, ents, session)


def pick_users(w: World, n: int, seed: int) -> list[int]:
    """n distinct users drawn by activity (the active ones come back most, as in the generator)."""
    rng = np.random.default_rng([seed, 0xC0FFEE])
    n = min(n, w.params.users)
    return [int(u) for u in rng.choice(w.params.users, n, replace=False, p=w.cat.user_activity)]


async def _simulate(
    url: str,
    w: World,
    users: list[int],
    duration_s: float,
    seed: int,
    sessions: int | None,
    progress: bool,
    concurrency: int,
    ingest_token: str | None = None,
) -> Tally:
    from tqdm import tqdm

    tally = Tally()
    slots = asyncio.Semaphore(concurrency)
    # idle connections are dropped well before the server's keep-alive ends, so no request races a close
    limits = httpx.Limits(
        max_connections=concurrency + 4, max_keepalive_connections=concurrency + 4, keepalive_expiry=2.0
    )
    headers = {"Authorization": f"Bearer {ingest_token}"} if ingest_token else None
    async with httpx.AsyncClient(base_url=url, timeout=60, limits=limits, headers=headers) as client:
        deadline = time.monotonic() + duration_s
        runners = [SimulatedUser(w, u, seed, client, tally, slots) for u in users]
        tasks = [asyncio.create_task(r.run(deadline, sessions)) for r in runners]
        total = len(users) * sessions if sessions else None
        with tqdm(total=total, desc="simulate", unit="session", disable=not progress) as bar:
            while not all(t.done() for t in tasks):
                await asyncio.sleep(0.5)
                bar.update(tally.sessions - bar.n)
            bar.update(tally.sessions - bar.n)
        await asyncio.gather(*tasks)
    return tally


def simulate(
    url: str,
    data_dir: Path | str,
    users: int = 100,
    duration_s: float = 60.0,
    seed: int = 0,
    sessions: int | None = None,
    progress: bool = True,
    concurrency: int = 50,
    ingest_token: str | None = None,
) -> dict:
    w = World(Path(data_dir))
    chosen = pick_users(w, users, seed)
    started = time.perf_counter()
    slots = min(concurrency, len(chosen))
    tally = asyncio.run(_simulate(url, w, chosen, duration_s, seed, sessions, progress, slots, ingest_token))
    return {"users": len(chosen), "seconds": round(time.perf_counter() - started, 1), "seed": seed} | tally.summary()
