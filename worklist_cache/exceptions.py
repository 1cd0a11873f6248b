"""Errors of the worklist cache.

CacheError              root of every error this package raises
├── OutOfScope          a view asks for sites, subspecialties or modalities its user
│                       may not read
└── RebuildIncomplete   a rebuild could not be marked built (Redis restarted under
                        it, again and again)
"""

from __future__ import annotations

from redis.exceptions import RedisClusterException, RedisError

# What talking to Redis can raise when Redis (a node, a link) fails: redis-py's errors,
# its cluster client's own (`SlotNotCoveredError` while a master restarts is no
# `RedisError`), and the socket's. A loop that must outlive a Redis fault catches these.
REDIS_FAULTS: tuple[type[Exception], ...] = (RedisError, RedisClusterException, OSError)


class CacheError(Exception):
    """Root of the cache's errors."""


class OutOfScope(CacheError):
    """A view asks for sites, subspecialties or modalities its user may not read."""


class RebuildIncomplete(CacheError):
    """A rebuild could not be marked built (Redis restarted under it, again and again)."""

    def __init__(self, tenant: str) -> None:
        super().__init__(f"the rebuild of {tenant} did not complete")
        self.tenant = tenant
