"""The relay's per-shard checkpoints, durable in Redis."""

from __future__ import annotations

from redis.asyncio import Redis

from worklist_cache import keys


class RedisCheckpoints:
    def __init__(self, redis: Redis, stream_arn: str) -> None:
        self._redis = redis
        self._key = keys.relay_checkpoint(stream_arn)

    async def get(self, shard_id: str) -> str | None:
        value = await self._redis.hget(self._key, shard_id)
        return value.decode() if isinstance(value, bytes) else value

    async def set(self, shard_id: str, sequence_number: str) -> None:
        await self._redis.hset(self._key, shard_id, sequence_number)
