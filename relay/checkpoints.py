"""The relay's per-shard checkpoints and shard leases, durable in Redis.

Several relay processes may run for availability; a lease (like the Kinesis Client
Library's lease table) makes one of them the only reader of a shard. A lease is a key
holding its owner's ID with a TTL: the owner renews it, and when the owner dies it
expires and another relay takes the shard over from its checkpoint. A checkpoint write
is fenced by the lease: a relay that lost its lease (paused too long, partitioned)
cannot move the checkpoint, so a slow ex-owner never overwrites its successor's.
"""

from __future__ import annotations

from worklist_cache import keys
from worklist_cache.connection import Client
from worklist_cache.scripts import LEASE_ACQUIRE

# KEYS: lease   ARGV: owner.
_RELEASE = """
if redis.call('GET', KEYS[1]) == ARGV[1] then return redis.call('DEL', KEYS[1]) end
return 0
"""

# KEYS: lease, checkpoints   ARGV: owner, shard, sequence_number.
_FENCED_SET = """
if redis.call('GET', KEYS[1]) ~= ARGV[1] then return 0 end
redis.call('HSET', KEYS[2], ARGV[2], ARGV[3])
return 1
"""


class RedisCheckpoints:
    """Checkpoints of one stream. With an `owner`, writes are fenced by shard leases."""

    def __init__(
        self, redis: Client, stream_arn: str, *, owner: str | None = None, lease_ms: int = 15_000
    ) -> None:
        self._redis = redis
        self._arn = stream_arn
        self._key = keys.relay_checkpoint(stream_arn)
        self.owner = owner
        self.lease_ms = lease_ms
        self._acquire = redis.register_script(LEASE_ACQUIRE)
        self._release = redis.register_script(_RELEASE)
        self._fenced_set = redis.register_script(_FENCED_SET)

    async def get(self, shard_id: str) -> str | None:
        value = await self._redis.hget(self._key, shard_id)
        return value.decode() if isinstance(value, bytes) else value

    async def set(self, shard_id: str, sequence_number: str) -> bool:
        """Store a checkpoint; False when a lease is in use and no longer ours."""
        if self.owner is None:
            await self._redis.hset(self._key, shard_id, sequence_number)
            return True
        lease = keys.relay_lease(self._arn, shard_id)
        done = await self._fenced_set(
            keys=[lease, self._key], args=[self.owner, shard_id, sequence_number]
        )
        return bool(done)

    async def acquire(self, shard_id: str) -> bool:
        """Take or renew the shard's lease. Always True without an owner (one relay)."""
        if self.owner is None:
            return True
        lease = keys.relay_lease(self._arn, shard_id)
        return bool(await self._acquire(keys=[lease], args=[self.owner, self.lease_ms]))

    async def release(self, shard_id: str) -> None:
        if self.owner is not None:
            await self._release(keys=[keys.relay_lease(self._arn, shard_id)], args=[self.owner])

    async def holder(self, shard_id: str) -> str | None:
        value = await self._redis.get(keys.relay_lease(self._arn, shard_id))
        return value.decode() if isinstance(value, bytes) else value
