"""Moving users' histories and counters from the key names before hash tags to today's.

Contract: `migrate_keys(client)` renames every `ur:hist:<id>` / `ur:cnt:<id>` of one Redis to
`unirank.core.history`'s keys, merging with what the service already wrote under the new names since
the upgrade (the new entries stay in front, the list is cut at the history length; counters are
summed); each key moves in one atomic script and keeps the later of the two expiries. Running it again
moves nothing. A Redis Cluster never held the old names (it was not supported before them).
"""

from __future__ import annotations

from collections.abc import Callable

import redis

from unirank.core.history import (
    HISTORY_LENGTH,
    LEGACY_COUNTERS_PREFIX,
    LEGACY_HISTORY_PREFIX,
    counters_key,
    history_key,
)

# KEYS: old, new. ARGV: "list" or "hash", history length. Returns 1 when something moved.
MOVE = """
local old, new = KEYS[1], KEYS[2]
local ttl_old, ttl_new = redis.call('PTTL', old), redis.call('PTTL', new)
if ttl_old == -2 then return 0 end
if ARGV[1] == 'list' then
  local items = redis.call('LRANGE', old, 0, tonumber(ARGV[2]) - 1)
  if #items > 0 then redis.call('RPUSH', new, unpack(items)) end
  redis.call('LTRIM', new, 0, tonumber(ARGV[2]) - 1)
else
  local pairs_ = redis.call('HGETALL', old)
  for i = 1, #pairs_, 2 do redis.call('HINCRBY', new, pairs_[i], pairs_[i + 1]) end
end
redis.call('DEL', old)
if ttl_old == -1 and ttl_new <= -1 then redis.call('PERSIST', new)
elseif ttl_old > 0 and ttl_new ~= -1 then redis.call('PEXPIRE', new, math.max(ttl_old, ttl_new)) end
return 1
"""


def migrate_keys(client: redis.Redis, progress: Callable[[int], None] = lambda n: None) -> dict[str, int]:
    """Moves the old keys; returns how many histories and counter hashes moved."""
    move = client.register_script(MOVE)
    moved = {"histories": 0, "counters": 0}
    for what, prefix, kind, new_key in (
        ("histories", LEGACY_HISTORY_PREFIX, "list", history_key),
        ("counters", LEGACY_COUNTERS_PREFIX, "hash", counters_key),
    ):
        for old in client.scan_iter(match=f"{prefix}*", count=1000):
            user = old[len(prefix) :].decode()
            moved[what] += move(keys=[old, new_key(user)], args=[kind, HISTORY_LENGTH])
            progress(1)
    return moved
