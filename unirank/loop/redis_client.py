"""A blocking Redis client for the offline tools (`unirank logs`, `unirank experiment report`, tests).

Contract: `redis_client(url)` talks to one server for `redis://`, `rediss://` and `unix://` URLs and to a
Redis Cluster for `redis+cluster://` ones (`unirank.core.redis_url`); the tools only read and trim
single streams, which any node routes to the slot that holds them.
"""

from __future__ import annotations

import redis
from redis.cluster import RedisCluster

from unirank.core.redis_url import is_cluster, node_url


def redis_client(url: str) -> redis.Redis | RedisCluster:
    return RedisCluster.from_url(node_url(url)) if is_cluster(url) else redis.Redis.from_url(url)
