"""Redis clients that ride out a restart: every process makes its clients here.

A pooled connection to a Redis that restarted fails on its next command; redis-py's
clients from `from_url` do not retry that by default. These retry connection errors
and timeouts with jittered exponential backoff (50 ms up to 1 s, 6 times), so a restart
costs a pause, not a crash.
"""

from __future__ import annotations

from redis.asyncio import Redis
from redis.asyncio.retry import Retry
from redis.backoff import ExponentialWithJitterBackoff
from redis.exceptions import ConnectionError as RedisConnectionError
from redis.exceptions import TimeoutError as RedisTimeoutError


def connect(url: str) -> Redis:
    return Redis.from_url(
        url,
        retry=Retry(ExponentialWithJitterBackoff(base=0.05, cap=1.0), retries=6),
        retry_on_error=[RedisConnectionError, RedisTimeoutError, OSError],
        health_check_interval=15,
    )
