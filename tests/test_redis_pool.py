"""The service's Redis pool against a real Redis: idle connections handed out at once, and callers beyond
`max_connections` waiting for one (then served), never more connections than the bound."""

from __future__ import annotations

import asyncio

from service.cache import QuickBlockingPool, connect


def test_pool_reuses_idle_connections_and_makes_the_rest_wait(redis_url):
    async def scenario():
        client = connect(redis_url, timeout_s=2.0, max_connections=2)
        pool = client.connection_pool
        assert isinstance(pool, QuickBlockingPool)
        for _ in range(20):  # sequential calls: one connection, reused through the quick path
            assert await client.ping()
        assert len(pool._available_connections) + len(pool._in_use_connections) == 1
        # six calls that each hold a connection for 0.2 s, with two connections: all are served, and
        # no third connection is opened (the others waited for one)
        results = await asyncio.gather(*(client.blpop([f"unirank-test-empty-{i}"], timeout=0.2) for i in range(6)))
        total = len(pool._available_connections) + len(pool._in_use_connections)
        await client.aclose()
        return results, total

    results, total = asyncio.run(scenario())
    assert results == [None] * 6
    assert total == 2
