"""The service's Redis pool against a real Redis (or Redis Cluster): idle connections handed out at once,
and callers beyond `max_connections` waiting for one (then served), never more connections than the
bound — for a cluster, on any node."""

from __future__ import annotations

import asyncio

from service.store.redis_client import QuickBlockingPool, connect, is_cluster


def open_connections(client) -> list[int]:
    """Connections the client holds, per server."""
    if is_cluster(client):
        return [len(node._connections) for node in client.get_nodes()]
    pool = client.connection_pool
    assert isinstance(pool, QuickBlockingPool)
    return [len(pool._available_connections) + len(pool._in_use_connections)]


def test_pool_reuses_idle_connections_and_makes_the_rest_wait(redis_url):
    async def scenario():
        client = connect(redis_url, timeout_s=2.0, max_connections=2)
        key = "unirank-test-empty-{one}"
        for _ in range(20):  # sequential calls: one connection, reused through the quick path
            assert await client.exists(key) == 0
        sequential = open_connections(client)
        # six calls that each hold a connection for 0.2 s, with two connections: all are served, and
        # no third connection is opened (the others waited for one)
        results = await asyncio.gather(*(client.blpop([key], timeout=0.2) for _ in range(6)))
        concurrent = open_connections(client)
        await client.aclose()
        return results, sequential, concurrent

    results, sequential, concurrent = asyncio.run(scenario())
    assert results == [None] * 6
    assert max(sequential) == 1
    assert max(concurrent) == 2
