"""POST /events: engagement events into Redis — each user's recent history and action counters, and the
feedback stream that joins clicks and plays to the answer they were on.

Clicks and plays go to the front of the user's history list as "entity|kind" (the kind says whether
the event came from a search or a recommendation surface, and click or play; capped at the history
length), every action increments the user's counters hash (keys: `unirank.core.history`, hash-tagged
by user); a click or play that names its `request_id` is also appended to the feedback stream
(`unirank.core.impression_log`), and when that request was in an experiment the script returns its
experiment and the variant to credit (for interleaving, the team that showed the entity). On one Redis a
whole batch is ONE command (a Lua script run atomically on the server): per-command client overhead,
not Redis, is what limits ingestion otherwise. On a Redis Cluster it is one script call per slot of its
users plus the feedback commands, in one pipeline. The caller acknowledges only after Redis did, so
nothing acknowledged is lost. The feedback stream keeps what its `StreamBound` says: entries younger than
UNIRANK_IMPRESSION_RETENTION_S (exactly) and about UNIRANK_FEEDBACK_LOG_MAX_BYTES.
"""

from __future__ import annotations

import time

import redis.asyncio as aioredis
from redis.crc import key_slot

from service.core.schemas import Event
from service.store.redis_client import is_cluster
from service.store.retention import StreamBound
from unirank.core.history import HISTORY_LENGTH, counters_key, event_kind, history_key
from unirank.core.impression_log import ENGAGED, Feedback, request_key

# KEYS: the counters and history key of each user in pairs, then (when the batch has feedback events)
# the feedback stream and the request key of each feedback event in order. ARGV: ttl, history length,
# the feedback stream's MINID (entries older go) and MAXLEN (about), number of users, then seven values
# per event, oldest first: the user's position
# (1-based pair), action, task, history entry ("entity|kind"), engaged (1/0), the feedback record (""
# when the event names no request) and its entity. Returns {events stored, {experiment, variant, team}
# per feedback event (false when unknown)}.
STORE_BATCH = """
local ttl, hlen, fminid, fmax = tonumber(ARGV[1]), tonumber(ARGV[2]), ARGV[3], tonumber(ARGV[4])
local nusers = tonumber(ARGV[5])
local credits, f = {}, 0
for i = 6, #ARGV, 7 do
  local u = tonumber(ARGV[i])
  local counters, history = KEYS[2 * u - 1], KEYS[2 * u]
  redis.call('HINCRBY', counters, ARGV[i + 1], 1)
  redis.call('HINCRBY', counters, ARGV[i + 2] .. ':' .. ARGV[i + 1], 1)
  if ARGV[i + 4] == '1' then redis.call('LPUSH', history, ARGV[i + 3]) end
  if ARGV[i + 5] ~= '' then
    f = f + 1
    redis.call('XADD', KEYS[2 * nusers + 1], 'MINID', fminid, '*', 'f', ARGV[i + 5])
    credits[f] = redis.call('HMGET', KEYS[2 * nusers + 1 + f], '_x', '_v', ARGV[i + 6])
  end
end
if f > 0 then redis.call('XTRIM', KEYS[2 * nusers + 1], 'MAXLEN', '~', fmax) end
for u = 1, nusers do
  redis.call('EXPIRE', KEYS[2 * u - 1], ttl)
  redis.call('LTRIM', KEYS[2 * u], 0, hlen - 1)
  redis.call('EXPIRE', KEYS[2 * u], ttl)
end
return {(#ARGV - 5) / 7, credits}
"""


class EventStore:
    def __init__(
        self, client: aioredis.Redis, ttl_s: int, feedback_stream: str = "ur:feedback", bound: StreamBound | None = None
    ):
        """bound: how much of the feedback stream is kept (by default a day and 256 MiB)."""
        self.client = client
        self.ttl_s = ttl_s
        self.feedback_stream = feedback_stream
        self.bound = bound or StreamBound(86_400, 256 << 20)
        self._store = client.register_script(STORE_BATCH)

    async def store(self, events: list[Event]) -> tuple[int, list[tuple[Event, str | None, str | None]]]:
        """Stores the batch; returns how many events, and for each click or play that named its request,
        (event, experiment, variant credited) — None, None when the request was in no experiment (or is
        unknown)."""
        ordered = sorted(events, key=lambda e: e.ts or 0.0)  # oldest first, so the newest ends up in front
        if is_cluster(self.client):
            credits = await self._store_per_slot(ordered)
        else:
            credits = await self._store_in_one_call(ordered)
        out = []
        for ev, (experiment, variant, team) in credits:
            experiment = experiment.decode() if experiment else None
            variant = variant.decode() if variant else None
            out.append((ev, experiment, team.decode() if team else variant))
        return len(events), out

    def _calls(self, events: list[Event], with_feedback: bool) -> tuple[list[str], list, list[Event]]:
        """The script's keys and arguments for these events, and the feedback events it will credit."""
        users: dict[str, int] = {}
        user_keys: list[str] = []
        request_keys: list[str] = []
        feedback: list[Event] = []
        args: list[str | int | bytes] = []
        for ev in events:
            slot = users.get(ev.user_id)
            if slot is None:
                slot = users[ev.user_id] = len(users) + 1
                user_keys += (counters_key(ev.user_id), history_key(ev.user_id))
            engaged = ev.action in ENGAGED
            entry = f"{ev.entity_id}|{event_kind(ev.task, ev.action == 'play')}"
            record = b""
            if with_feedback and engaged and ev.request_id is not None:
                record = self._feedback_record(ev)
                request_keys.append(request_key(ev.request_id))
                feedback.append(ev)
            args += (slot, ev.action, ev.task, entry, 1 if engaged else 0, record, ev.entity_id)
        keys = [*user_keys, self.feedback_stream, *request_keys] if feedback else user_keys
        trim = [self.bound.minid(), self.bound.maxlen()]
        return keys, [self.ttl_s, HISTORY_LENGTH, *trim, len(users), *args], feedback

    def _feedback_record(self, ev: Event) -> bytes:
        ts = int(ev.ts * 1000) if ev.ts is not None else int(time.time() * 1000)
        record = Feedback(ev.request_id, ev.entity_id, ev.action, ev.position, ev.user_id, ts).encode()
        self.bound.observe(len(record))
        return record

    async def _store_in_one_call(self, events: list[Event]) -> list[tuple[Event, tuple]]:
        """One Redis: the whole batch is one atomic script call."""
        keys, args, feedback = self._calls(events, with_feedback=True)
        _, credits = await self._store(keys=keys, args=args)
        return list(zip(feedback, credits, strict=True))

    async def _store_per_slot(self, events: list[Event]) -> list[tuple[Event, tuple]]:
        """Redis Cluster: a script refuses keys of several slots, so the batch is one script call per
        slot of its users (their history and counters), plus the feedback appends and the reads of the
        requests' experiments, all in one pipeline that redis-py splits per node and sends concurrently.
        Each user's part stays atomic; the batch as a whole is not (a failed batch is refused and its
        retry may count the parts that did land twice — never lose them)."""
        by_slot: dict[int, list[Event]] = {}
        for ev in events:
            by_slot.setdefault(key_slot(history_key(ev.user_id).encode()), []).append(ev)
        feedback = [ev for ev in events if ev.action in ENGAGED and ev.request_id is not None]
        pipe = self.client.pipeline(transaction=False)
        for group in by_slot.values():
            keys, args, _ = self._calls(group, with_feedback=False)
            # EVAL, not EVALSHA: redis-py refuses EVALSHA in a cluster pipeline (a node that lacks the
            # script could not be told apart from one that ran it); the server caches it by its hash
            pipe.eval(STORE_BATCH, len(keys), *keys, *args)
        for ev in feedback:
            pipe.xadd(
                self.feedback_stream, {"f": self._feedback_record(ev)}, minid=self.bound.minid(), approximate=False
            )
            pipe.hmget(request_key(ev.request_id), "_x", "_v", ev.entity_id)
        if feedback:
            pipe.xtrim(self.feedback_stream, maxlen=self.bound.maxlen(), approximate=True)
        replies = await pipe.execute()
        credits = replies[len(by_slot) : len(by_slot) + 2 * len(feedback)][1::2]
        return list(zip(feedback, credits, strict=True))


async def recent_history(client: aioredis.Redis, user_id: str) -> list[bytes]:
    return await client.lrange(history_key(user_id), 0, HISTORY_LENGTH - 1)
