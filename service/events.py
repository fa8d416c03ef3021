"""POST /events: engagement events into Redis — each user's recent history and action counters.

Clicks and plays go to the front of `ur:hist:{user}` as "entity|kind" (the kind says whether the
event came from a search or a recommendation surface, and click or play; capped at the history length), every
action increments `ur:cnt:{user}`. A whole batch is ONE Redis command (a Lua script run atomically on
the server): per-command client overhead, not Redis, is what limits ingestion otherwise. The caller
acknowledges only after Redis did, so nothing acknowledged is lost.
"""

from __future__ import annotations

import redis.asyncio as aioredis

from model_export.tables import HISTORY_LENGTH, event_kind
from service.schemas import Event

ENGAGED = ("click", "play")

# KEYS: counters and history key of each user, in pairs. ARGV: ttl, history length, then five values
# per event, oldest first: the user's position in KEYS (1-based pair), action, task, history entry
# ("entity|kind"), engaged.
STORE_BATCH = """
local ttl, hlen = tonumber(ARGV[1]), tonumber(ARGV[2])
for i = 3, #ARGV, 5 do
  local u = tonumber(ARGV[i])
  local counters, history = KEYS[2 * u - 1], KEYS[2 * u]
  redis.call('HINCRBY', counters, ARGV[i + 1], 1)
  redis.call('HINCRBY', counters, ARGV[i + 2] .. ':' .. ARGV[i + 1], 1)
  if ARGV[i + 4] == '1' then redis.call('LPUSH', history, ARGV[i + 3]) end
end
for u = 1, #KEYS / 2 do
  redis.call('EXPIRE', KEYS[2 * u - 1], ttl)
  redis.call('LTRIM', KEYS[2 * u], 0, hlen - 1)
  redis.call('EXPIRE', KEYS[2 * u], ttl)
end
return (#ARGV - 2) / 5
"""


def history_key(user_id: str) -> str:
    return f"ur:hist:{user_id}"


def counters_key(user_id: str) -> str:
    return f"ur:cnt:{user_id}"


class EventStore:
    def __init__(self, client: aioredis.Redis, ttl_s: int):
        self.client = client
        self.ttl_s = ttl_s
        self._store = client.register_script(STORE_BATCH)

    async def store(self, events: list[Event]) -> int:
        users: dict[str, int] = {}
        keys: list[str] = []
        args: list[str | int] = [self.ttl_s, HISTORY_LENGTH]
        for ev in sorted(events, key=lambda e: e.ts or 0.0):  # oldest first, so the newest ends up in front
            slot = users.get(ev.user_id)
            if slot is None:
                slot = users[ev.user_id] = len(users) + 1
                keys += (counters_key(ev.user_id), history_key(ev.user_id))
            entry = f"{ev.entity_id}|{event_kind(ev.task, ev.action == 'play')}"
            args += (slot, ev.action, ev.task, entry, 1 if ev.action in ENGAGED else 0)
        return int(await self._store(keys=keys, args=args))


async def recent_history(client: aioredis.Redis, user_id: str) -> list[bytes]:
    return await client.lrange(history_key(user_id), 0, HISTORY_LENGTH - 1)
