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
    url: str, *, size: int = 4, migrated: bool = True, wait: bool = True
) -> AsyncIterator[AsyncConnectionPool[Any]]:
    """A pool over `url`, migrated when `migrated`. With `wait`, the first connection
    must succeed (a worker retries its start); the pool re-opens lost connections on its
    own afterwards, and `connection()` waits up to 30 s for one."""
    pool: AsyncConnectionPool[Any] = AsyncConnectionPool(
        url,
        min_size=1,
        max_size=max(1, size),
        open=False,
        timeout=30.0,
        reconnect_timeout=0,  # never give up on the database: keep trying
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
