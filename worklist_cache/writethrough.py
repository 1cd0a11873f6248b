"""Write-through for a writer process (HL7 ingest, the simulator): the worklist feed its
exam writes are published to as soon as DynamoDB acknowledges them
(`dynamo.writethrough`), for as long as the process runs."""

from __future__ import annotations

import contextlib
from collections.abc import AsyncIterator

from dynamo.writethrough import WriteThrough
from worklist_cache.connection import connect
from worklist_cache.feed import WorklistFeed
from worklist_cache.settings import CacheSettings

__all__ = ["write_through"]


@contextlib.asynccontextmanager
async def write_through(enabled: bool) -> AsyncIterator[WriteThrough | None]:
    """A `WriteThrough` to the feed at CacheSettings' Redis (None when not `enabled`);
    its Redis client is closed on exit."""
    if not enabled:
        yield None
        return
    cache = CacheSettings()
    redis = connect(cache.redis_url, cluster=cache.redis_cluster)
    try:
        yield WriteThrough(
            WorklistFeed(redis, maxlen=cache.feed_maxlen, sharded=cache.pubsub == "sharded")
        )
    finally:
        await redis.aclose()
