"""Redis clients that ride out a restart: every process makes its clients here.

A pooled connection to a Redis that restarted fails on its next command; redis-py's
clients from `from_url` do not retry that by default. These retry connection errors
and timeouts with jittered exponential backoff (50 ms up to 1 s, 6 times), so a restart
costs a pause, not a crash.

With `cluster=True` (`CACHE_REDIS_CLUSTER`) the client is a `RedisCluster`: the URL names
any one node, the client discovers the others and routes each command to the master of
its key's slot (every key of a tenant shares one slot: `keys` tags them `{tenant}`).
"""

from __future__ import annotations

from typing import TypeAlias

from redis.asyncio import BlockingConnectionPool, Redis
from redis.asyncio.cluster import RedisCluster
from redis.asyncio.retry import Retry
from redis.backoff import ExponentialWithJitterBackoff
from redis.exceptions import ConnectionError as RedisConnectionError
from redis.exceptions import TimeoutError as RedisTimeoutError

# What every process holds: a standalone client, or a cluster client (same commands).
Client: TypeAlias = Redis | RedisCluster


def _retry() -> Retry:
    return Retry(ExponentialWithJitterBackoff(base=0.05, cap=1.0), retries=6)


def connect(url: str, *, max_connections: int = 256, cluster: bool = False) -> Client:
    """A client whose pool waits (up to 10 s) for a free connection when a burst of
    requests needs more than `max_connections`, rather than failing them."""
    if cluster:
        # The cluster client re-reads the slot map on MOVED and on connection errors
        # (a master that restarted, a failover), then retries the command.
        return RedisCluster.from_url(
            url,
            max_connections=max_connections,
            retry=_retry(),
            retry_on_error=[RedisConnectionError, RedisTimeoutError, OSError],
            health_check_interval=15,
        )
    pool = BlockingConnectionPool.from_url(
        url,
        max_connections=max_connections,
        timeout=10,
        retry=_retry(),
        retry_on_error=[RedisConnectionError, RedisTimeoutError, OSError],
        health_check_interval=15,
    )
    return Redis.from_pool(pool)  # closing the client closes its pool
