"""POST /events: engagement events into Redis — each user's recent history and action counters, and the
feedback stream that joins clicks and plays to the answer they were on.

Clicks and plays go to the front of `ur:hist:{user}` as "entity|kind" (the kind says whether the event
came from a search or a recommendation surface, and click or play; capped at the history length), every
action increments `ur:cnt:{user}`; a click or play that names its `request_id` is also appended to the
feedback stream (`unirank.core.impression_log`), and when that request was in an experiment the script
returns its experiment and the variant to credit (for interleaving, the team that showed the entity).
A whole batch is ONE Redis command (a Lua script run atomically on the server): per-command client
overhead, not Redis, is what limits ingestion otherwise. The caller acknowledges only after Redis did,
so nothing acknowledged is lost.
"""

from __future__ import annotations

import time

import redis.asyncio as aioredis

from service.schemas import Event
from unirank.core.history import HISTORY_LENGTH, event_kind
from unirank.core.impression_log import ENGAGED, Feedback, request_key

# KEYS: the feedback stream, then the counters and history key of each user in pairs, then the request
# key of each feedback event in order. ARGV: ttl, history length, feedback stream cap, number of users,
# then six values per event, oldest first: the user's position (1-based pair), action, task, history
# entry ("entity|kind"), engaged (1/0), the feedback record ("" when the event names no request) and its
# entity. Returns {events stored, {experiment, variant, team} per feedback event (false when unknown)}.
STORE_BATCH = """
local ttl, hlen, fmax, nusers = tonumber(ARGV[1]), tonumber(ARGV[2]), tonumber(ARGV[3]), tonumber(ARGV[4])
local credits, f = {}, 0
for i = 5, #ARGV, 7 do
  local u = tonumber(ARGV[i])
  local counters, history = KEYS[2 * u], KEYS[2 * u + 1]
  redis.call('HINCRBY', counters, ARGV[i + 1], 1)
  redis.call('HINCRBY', counters, ARGV[i + 2] .. ':' .. ARGV[i + 1], 1)
  if ARGV[i + 4] == '1' then redis.call('LPUSH', history, ARGV[i + 3]) end
  if ARGV[i + 5] ~= '' then
    f = f + 1
    redis.call('XADD', KEYS[1], 'MAXLEN', '~', fmax, '*', 'f', ARGV[i + 5])
    credits[f] = redis.call('HMGET', KEYS[1 + 2 * nusers + f], '_x', '_v', ARGV[i + 6])
  end
end
for u = 1, nusers do
  redis.call('EXPIRE', KEYS[2 * u], ttl)
  redis.call('LTRIM', KEYS[2 * u + 1], 0, hlen - 1)
  redis.call('EXPIRE', KEYS[2 * u + 1], ttl)
end
return {(#ARGV - 4) / 7, credits}
"""


def history_key(user_id: str) -> str:
    return f"ur:hist:{user_id}"


def counters_key(user_id: str) -> str:
    return f"ur:cnt:{user_id}"


class EventStore:
    def __init__(
        self, client: aioredis.Redis, ttl_s: int, feedback_stream: str = "ur:feedback", feedback_max: int = 1_000_000
    ):
        self.client = client
        self.ttl_s = ttl_s
        self.feedback_stream = feedback_stream
        self.feedback_max = feedback_max
        self._store = client.register_script(STORE_BATCH)

    async def store(self, events: list[Event]) -> tuple[int, list[tuple[Event, str | None, str | None]]]:
        """Stores the batch; returns how many events, and for each click or play that named its request,
        (event, experiment, variant credited) — None, None when the request was in no experiment (or is
        unknown)."""
        users: dict[str, int] = {}
        user_keys: list[str] = []
        request_keys: list[str] = []
        feedback: list[Event] = []
        args: list[str | int] = []
        now_ms = int(time.time() * 1000)
        for ev in sorted(events, key=lambda e: e.ts or 0.0):  # oldest first, so the newest ends up in front
            slot = users.get(ev.user_id)
            if slot is None:
                slot = users[ev.user_id] = len(users) + 1
                user_keys += (counters_key(ev.user_id), history_key(ev.user_id))
            engaged = ev.action in ENGAGED
            entry = f"{ev.entity_id}|{event_kind(ev.task, ev.action == 'play')}"
            record = b""
            if engaged and ev.request_id is not None:
                ts = int(ev.ts * 1000) if ev.ts is not None else now_ms
                record = Feedback(ev.request_id, ev.entity_id, ev.action, ev.position, ev.user_id, ts).encode()
                request_keys.append(request_key(ev.request_id))
                feedback.append(ev)
            args += (slot, ev.action, ev.task, entry, 1 if engaged else 0, record, ev.entity_id)
        head = [self.ttl_s, HISTORY_LENGTH, self.feedback_max, len(users)]
        stored, credits = await self._store(keys=[self.feedback_stream, *user_keys, *request_keys], args=head + args)
        out = []
        for ev, (experiment, variant, team) in zip(feedback, credits, strict=True):
            experiment = experiment.decode() if experiment else None
            variant = variant.decode() if variant else None
            out.append((ev, experiment, team.decode() if team else variant))
        return int(stored), out


async def recent_history(client: aioredis.Redis, user_id: str) -> list[bytes]:
    return await client.lrange(history_key(user_id), 0, HISTORY_LENGTH - 1)
