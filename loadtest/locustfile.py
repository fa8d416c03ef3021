"""Realistic traffic for a running unirank, with locust: people typing in the search box, opening the
home page, and opening a title's page. Titles, countries and users come from the served bundle.

    locust -f loadtest/locustfile.py --host http://127.0.0.1:8000 --headless -u 50 -r 10 -t 1m \
        --csv results/locust

UNIRANK_BUNDLE points at the bundle (default artifacts/demo); only its entity and user tables are read.
UNIRANK_INGEST_TOKEN, when the service requires one, is sent with the clicks (POST /events).
"""

from __future__ import annotations

import os
import random
from pathlib import Path

import gevent
import pyarrow.parquet as pq
from locust import HttpUser, between, events, task

_CATALOGUE: dict = {}


def catalogue() -> dict:
    """Entities (id, title, countries) and user ids of the bundle, read once per locust process."""
    if not _CATALOGUE:
        tables = Path(os.environ.get("UNIRANK_BUNDLE", "artifacts/demo")) / "tables"
        entities = pq.read_table(tables / "entities.parquet", columns=["entity_id", "title", "countries"]).to_pylist()
        users = pq.read_table(tables / "users.parquet", columns=["user_id"]).column(0).to_pylist()
        _CATALOGUE.update(entities=[e for e in entities if e["countries"]], users=users)
    return _CATALOGUE


@events.init.add_listener
def _load(environment, **_):
    catalogue()


class UnirankUser(HttpUser):
    abstract = True

    def on_start(self) -> None:
        cat = catalogue()
        self.user_id = random.choice(cat["users"]) if random.random() < 0.9 else f"new-{random.getrandbits(32):08x}"
        self.country = random.choice(random.choice(cat["entities"])["countries"])

    def rank(self, body: dict, name: str) -> list[dict]:
        body = {"country": self.country, "user_id": self.user_id} | body
        with self.client.post("/rank", json=body, name=name, catch_response=True) as r:
            if r.status_code != 200:
                r.failure(f"{r.status_code}: {r.text[:200]}")
                return []
            return r.json()["items"]

    def click(self, task_name: str, entity_id: str) -> None:
        event = {"user_id": self.user_id, "task": task_name, "entity_id": entity_id, "action": "click"}
        token = os.environ.get("UNIRANK_INGEST_TOKEN")
        headers = {"Authorization": f"Bearer {token}"} if token else None
        self.client.post("/events", json=[event], name="/events", headers=headers)


class InstantSearchUser(UnirankUser):
    """Types a title (or its second word) keystroke by keystroke, 100-200 ms apart, then clicks."""

    weight = 6
    wait_time = between(1, 3)

    @task
    def type_a_title(self) -> None:
        title = random.choice(catalogue()["entities"])["title"]
        words = title.split()
        target = words[1] if len(words) > 1 and random.random() < 0.2 else title
        items: list[dict] = []
        for n in range(1, min(len(target), 12) + 1):
            items = self.rank({"task": "search", "query": target[:n], "k": 10}, "/rank search")
            if items and random.random() < 0.15 * n:  # the wanted title shows up: stop typing
                break
            gevent.sleep(random.uniform(0.1, 0.2))
        if items:
            self.click("search", random.choice(items[:3])["entity_id"])


class PreQueryUser(UnirankUser):
    """Opens the home page: a pre-query recommendation row."""

    weight = 3
    wait_time = between(2, 5)

    @task
    def home_page(self) -> None:
        items = self.rank({"task": "prequery", "k": 20}, "/rank prequery")
        if items and random.random() < 0.3:
            self.click("prequery", random.choice(items)["entity_id"])


class MoreLikeThisUser(UnirankUser):
    """Opens a title's page and asks for similar titles."""

    weight = 2
    wait_time = between(2, 5)

    @task
    def title_page(self) -> None:
        source = random.choice(catalogue()["entities"])
        items = self.rank(
            {
                "task": "more_like_this",
                "source_entity_id": source["entity_id"],
                "country": random.choice(source["countries"]),
                "k": 12,
            },
            "/rank more_like_this",
        )
        if items and random.random() < 0.3:
            self.click("more_like_this", random.choice(items)["entity_id"])
