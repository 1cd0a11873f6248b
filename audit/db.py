"""Connections to the audit database: a pool for long-lived processes, one connection
for a Lambda invocation; both run the migrations first."""

from __future__ import annotations

from collections.abc import AsyncIterator
from contextlib import asynccontextmanager
from typing import Any

import psycopg
from psycopg_pool import AsyncConnectionPool

from audit.migrate import migrate

__all__ = ["connect", "open_pool"]


async def connect(url: str, *, migrated: bool = True) -> psycopg.AsyncConnection[Any]:
    conn = await psycopg.AsyncConnection.connect(url, connect_timeout=10)
    if migrated:
        await migrate(conn)
    return conn


@asynccontextmanager
async def open_pool(
    url: str, *, size: int = 4, migrated: bool = True, wait: bool = True, timeout: float = 5.0
) -> AsyncIterator[AsyncConnectionPool[Any]]:
    """A pool over `url`, migrated when `migrated`. With `wait`, the first connection
    must succeed (a worker retries its start). While the database is away, `connection()`
    fails after `timeout` seconds (PoolTimeout, an OperationalError) and every new call
    tries a new connection at once: the caller's own backoff paces the retries, so the
    first call after the database is back succeeds."""
    pool: AsyncConnectionPool[Any] = AsyncConnectionPool(
        url,
        min_size=1,
        max_size=max(1, size),
        open=False,
        timeout=timeout,
        # A failed background reconnect gives up at once; the next caller tries again
        # (the pool's own backoff would otherwise delay recovery by up to minutes).
        reconnect_timeout=0,
        kwargs={"connect_timeout": 10},
    )
    await pool.open(wait=wait)
    try:
        if migrated:
            async with pool.connection() as conn:
                await migrate(conn)
        yield pool
    finally:
        await pool.close()
