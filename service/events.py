"""POST /events: engagement events into Redis — each user's recent history and action counters.

Clicks and plays go to the front of `ur:hist:{user}` (capped at the model's history length), every
action increments `ur:cnt:{user}`. One pipelined round trip per batch; the caller acknowledges only
after Redis did, so nothing acknowledged is lost.
"""

from __future__ import annotations

import redis.asyncio as aioredis

from model_export.tables import HISTORY_LENGTH
from service.schemas import Event

ENGAGED = ("click", "play")


def history_key(user_id: str) -> str:
    return f"ur:hist:{user_id}"


def counters_key(user_id: str) -> str:
    return f"ur:cnt:{user_id}"


async def store_events(client: aioredis.Redis, events: list[Event], ttl_s: int) -> int:
    pipe = client.pipeline(transaction=False)
    engaged_users: set[str] = set()
    for ev in sorted(events, key=lambda e: e.ts or 0.0):  # oldest first, so the newest ends up in front
        counters = counters_key(ev.user_id)
        pipe.hincrby(counters, ev.action, 1)
        pipe.hincrby(counters, f"{ev.task}:{ev.action}", 1)
        if ev.action in ENGAGED:
            pipe.lpush(history_key(ev.user_id), ev.entity_id)
            engaged_users.add(ev.user_id)
    for user in {e.user_id for e in events}:
        pipe.expire(counters_key(user), ttl_s)
    for user in engaged_users:
        pipe.ltrim(history_key(user), 0, HISTORY_LENGTH - 1)
        pipe.expire(history_key(user), ttl_s)
    await pipe.execute()
    return len(events)


async def recent_history(client: aioredis.Redis, user_id: str) -> list[bytes]:
    return await client.lrange(history_key(user_id), 0, HISTORY_LENGTH - 1)
