"""Which Redis a URL names: one server, or a Redis Cluster (`redis+cluster://host:port`).

Contract: `is_cluster(url)` says whether the URL names a cluster; `node_url(url)` is the same URL with
the plain `redis://` (or `rediss://`) scheme that redis-py's `RedisCluster.from_url` takes. Any node of
the cluster will do as the seed: the client discovers the others and follows the slot map.
"""

from __future__ import annotations

CLUSTER_SCHEMES = {"redis+cluster": "redis", "rediss+cluster": "rediss"}


def is_cluster(url: str) -> bool:
    return url.split("://", 1)[0].lower() in CLUSTER_SCHEMES


def node_url(url: str) -> str:
    scheme, rest = url.split("://", 1)
    return f"{CLUSTER_SCHEMES.get(scheme.lower(), scheme)}://{rest}"
