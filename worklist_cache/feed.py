"""Apply deltas to the materialized worklists, append them to the tenant's history and
publish them, in one atomic step per delta; read consistent snapshots back.

Idempotent by version: a delta whose version is not newer than the cached one changes
nothing and is neither recorded nor published, so replays and duplicate relays are
harmless and an exam never moves backwards.
"""

from __future__ import annotations

import secrets
from collections.abc import Sequence
from dataclasses import dataclass
from typing import Any

import orjson
from redis.asyncio import Redis

from dynamo.deltas import ExamDelta
from worklist_cache import keys

# KEYS: versions, exams, feed, epoch   ARGV: exam_id, version, op, delta_json, maxlen,
# candidate_epoch, channel.  Returns the feed offset, or false when the delta is stale.
_APPLY = """
local cur = redis.call('HGET', KEYS[1], ARGV[1])
if cur and tonumber(cur) >= tonumber(ARGV[2]) then return false end
local epoch = redis.call('GET', KEYS[4])
if not epoch then
  epoch = ARGV[6]
  redis.call('SET', KEYS[4], epoch)
end
redis.call('HSET', KEYS[1], ARGV[1], ARGV[2])
if ARGV[3] == 'remove' then
  redis.call('HDEL', KEYS[2], ARGV[1])
else
  redis.call('HSET', KEYS[2], ARGV[1], ARGV[4])
end
local id = redis.call('XADD', KEYS[3], 'MAXLEN', '~', ARGV[5], '*', 'd', ARGV[4])
redis.call('PUBLISH', ARGV[7],
  '{"epoch":"' .. epoch .. '","offset":"' .. id .. '","delta":' .. ARGV[4] .. '}')
return id
"""

# KEYS: exams, epoch, feed   ARGV: candidate_epoch.  Returns {epoch, offset, rows}.
_SNAPSHOT = """
local epoch = redis.call('GET', KEYS[2])
if not epoch then
  epoch = ARGV[1]
  redis.call('SET', KEYS[2], epoch)
end
local last = redis.call('XREVRANGE', KEYS[3], '+', '-', 'COUNT', 1)
local offset = '0-0'
if last[1] then offset = last[1][1] end
return {epoch, offset, redis.call('HVALS', KEYS[1])}
"""


def new_epoch() -> str:
    return secrets.token_hex(6)


@dataclass(frozen=True)
class Missed:
    """The deltas after a position, or `reset` when history cannot say."""

    reset: bool
    epoch: str
    entries: list[tuple[str, bytes]]  # (offset, delta JSON), in feed order


def _text(value: object) -> str:
    return value.decode() if isinstance(value, bytes) else str(value)


def _offset_key(offset: str) -> tuple[int, int]:
    ms, _, seq = offset.partition("-")
    return int(ms), int(seq or 0)


@dataclass(frozen=True)
class Snapshot:
    epoch: str
    offset: str
    rows: list[dict[str, Any]]


class WorklistFeed:
    """The write side (used by the relay) and snapshot side (used by the gateway)."""

    def __init__(self, redis: Redis, *, maxlen: int = 100_000) -> None:
        self._redis = redis
        self._maxlen = maxlen
        self._apply = redis.register_script(_APPLY)
        self._snapshot = redis.register_script(_SNAPSHOT)

    async def publish(self, deltas: Sequence[ExamDelta]) -> list[str | None]:
        """Apply and publish deltas in order; returns each one's offset (None if stale)."""
        if not deltas:
            return []
        async with self._redis.pipeline(transaction=False) as pipe:
            for d in deltas:
                await self._apply(
                    keys=[
                        keys.versions(d.tenant),
                        keys.exams(d.tenant),
                        keys.feed(d.tenant),
                        keys.epoch(d.tenant),
                    ],
                    args=[
                        d.exam_id,
                        d.version,
                        d.op,
                        orjson.dumps(d.model_dump(mode="json")),
                        self._maxlen,
                        new_epoch(),
                        keys.channel(d.tenant),
                    ],
                    client=pipe,
                )
            results = await pipe.execute()
        return [r.decode() if isinstance(r, bytes) else r for r in results]

    async def snapshot(self, tenant: str) -> Snapshot:
        """Every cached exam of a tenant, with the feed position it is consistent with."""
        epoch, offset, rows = await self._snapshot(
            keys=[keys.exams(tenant), keys.epoch(tenant), keys.feed(tenant)],
            args=[new_epoch()],
        )
        return Snapshot(
            epoch=epoch.decode() if isinstance(epoch, bytes) else epoch,
            offset=offset.decode() if isinstance(offset, bytes) else offset,
            rows=[orjson.loads(r) for r in rows],
        )

    async def since(self, tenant: str, epoch: str, offset: str, limit: int = 10_000) -> Missed:
        """Exactly the deltas after (`epoch`, `offset`), or a reset.

        A reset when the epoch changed (Redis restarted, cache rebuilt), when history was
        trimmed past the offset (Redis records the highest trimmed ID), or when more than
        `limit` deltas were missed (a snapshot is cheaper then).
        """
        feed = keys.feed(tenant)
        async with self._redis.pipeline(transaction=True) as pipe:
            pipe.get(keys.epoch(tenant))
            pipe.exists(feed)
            pipe.xrange(feed, min=f"({offset}", max="+", count=limit + 1)
            current, exists, entries = await pipe.execute()
        current = current.decode() if isinstance(current, bytes) else current
        if current is None or current != epoch:
            return Missed(True, current or "", [])
        if exists and await self._trimmed_past(feed, offset):
            return Missed(True, current, [])
        if len(entries) > limit:
            return Missed(True, current, [])
        out = []
        for entry_id, fields in entries:
            eid = entry_id.decode() if isinstance(entry_id, bytes) else entry_id
            out.append((eid, fields[b"d"]))
        return Missed(False, current, out)

    async def _trimmed_past(self, feed: str, offset: str) -> bool:
        """Whether entries after `offset` may have been trimmed away.

        MAXLEN trimming drops the oldest entries; Redis records the first entry left and
        how many were ever added. If some were dropped and the first one left comes after
        `offset`, what lay between is gone (conservatively: the client may have seen the
        last dropped one, and then a reset costs one snapshot, never a lost delta).
        """
        info = await self._redis.xinfo_stream(feed)
        deleted = _text(info.get("max-deleted-entry-id") or "0-0")
        if _offset_key(deleted) > _offset_key(offset):
            return True
        trimmed = int(info.get("entries-added", 0)) > int(info.get("length", 0))
        first = _text(info.get("recorded-first-entry-id") or "0-0")
        return trimmed and _offset_key(first) > _offset_key(offset)

    async def is_built(self, tenant: str) -> bool:
        """Whether this Redis holds a tenant's worklists rebuilt since it last started."""
        return bool(await self._redis.exists(keys.built(tenant)))

    async def mark_built(self, tenant: str) -> None:
        await self._redis.set(keys.built(tenant), "1")

    async def row(self, tenant: str, exam_id: str) -> dict[str, Any] | None:
        """One exam's cached worklist row, if the cache holds it."""
        raw = await self._redis.hget(keys.exams(tenant), exam_id)
        return None if raw is None else dict(orjson.loads(raw))

    async def heartbeat(self, ttl_ms: int = 15_000) -> None:
        """The relay is alive and reading (for the gateway's readiness)."""
        await self._redis.set(keys.relay_alive(), "1", px=ttl_ms)

    async def relay_alive(self) -> bool:
        return bool(await self._redis.exists(keys.relay_alive()))
