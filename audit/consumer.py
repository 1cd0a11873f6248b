"""The audit's own reader of the table's stream (beside, not inside, the cache relay).

Shards are discovered with DescribeStream; a child shard is read only after its parent
is drained (or aged out of the stream). Each shard is leased in PostgreSQL
(`consumer_shard`), its checkpoint moves in the transaction that writes its rows
(`audit.writer.write_batch`), and a reader restarts from that checkpoint.

PostgreSQL being away stalls only this consumer: a reader keeps the batch it holds and
retries it with capped exponential backoff (fetching nothing more meanwhile), and picks
up where it stopped once the database is back. The stream keeps 24 hours; an iterator
that expired meanwhile is taken again from the checkpoint.
"""

from __future__ import annotations

import asyncio
import contextlib
import logging
import random
from dataclasses import dataclass, field
from datetime import UTC, datetime
from typing import Any

import psycopg
from psycopg_pool import AsyncConnectionPool

from audit.changes import parse_record
from audit.exceptions import LeaseLost
from audit.writer import ShardPosition, take_lease, write_batch
from dynamo.table import list_shards

__all__ = ["AuditConsumer", "ConsumerMetrics"]

log = logging.getLogger("audit.consumer")


@dataclass
class ConsumerMetrics:
    """What an operator reads on /metrics (audit/metrics.py)."""

    records_read: int = 0
    rows_inserted: int = 0
    batches_written: int = 0
    write_failures: int = 0
    reader_failures: int = 0
    # Per shard: stream time of the oldest record read but not written yet.
    pending_since: dict[str, datetime] = field(default_factory=dict)
    pending_records: dict[str, int] = field(default_factory=dict)
    last_applied_stream_at: datetime | None = None
    shards_reading: int = 0

    def lag_seconds(self, now: datetime | None = None) -> float:
        """Age of the oldest change read from the stream and not yet in PostgreSQL
        (0 when caught up): what grows while PostgreSQL is away."""
        if not self.pending_since:
            return 0.0
        now = now or datetime.now(UTC)
        return max(0.0, (now - min(self.pending_since.values())).total_seconds())


class AuditConsumer:
    def __init__(
        self,
        streams: Any,
        stream_arn: str,
        pool: AsyncConnectionPool[Any],
        *,
        consumer: str = "audit",
        owner: str = "audit",
        poll_interval: float = 0.5,
        discover_interval: float = 10.0,
        lease_seconds: float = 30.0,
        batch_limit: int = 1000,
        retry_max_seconds: float = 10.0,
    ) -> None:
        self._streams = streams
        self.stream_arn = stream_arn
        self._pool = pool
        self.consumer = consumer
        self.owner = owner
        self._poll = poll_interval
        self._discover_every = discover_interval
        self._lease_seconds = lease_seconds
        self._limit = batch_limit
        self._retry_max = retry_max_seconds
        self._readers: dict[str, asyncio.Task[None]] = {}
        self._done: set[str] = set()
        self.metrics = ConsumerMetrics()

    def _position(self, shard_id: str) -> ShardPosition:
        return ShardPosition(
            self.consumer, self.stream_arn, shard_id, self.owner, self._lease_seconds
        )

    async def run(self) -> None:
        """Read every shard this worker can lease until cancelled."""
        loop = asyncio.get_running_loop()
        next_discovery = 0.0
        backoff = 0.2
        try:
            while True:
                self._reap()
                try:
                    if loop.time() >= next_discovery:
                        await self._discover()
                        next_discovery = loop.time() + self._discover_every
                    await self._renew()
                    backoff = 0.2
                except asyncio.CancelledError:
                    raise
                except Exception as exc:
                    # PostgreSQL restarting, DynamoDB throttling: try again, later.
                    log.warning("audit round failed (%s); retrying", type(exc).__name__)
                    await asyncio.sleep(backoff)
                    backoff = min(backoff * 2, self._retry_max)
                    continue
                await asyncio.sleep(min(self._discover_every, self._lease_seconds / 3))
        finally:
            readers = list(self._readers.items())
            for _, task in readers:
                task.cancel()
            await asyncio.gather(*(t for _, t in readers), return_exceptions=True)
            for sid, _ in readers:
                with contextlib.suppress(Exception):
                    await self._release(sid)

    def _reap(self) -> None:
        for sid, task in list(self._readers.items()):
            if not task.done():
                continue
            del self._readers[sid]
            self.metrics.pending_since.pop(sid, None)
            self.metrics.pending_records.pop(sid, None)
            if task.cancelled():
                continue
            exc = task.exception()
            if isinstance(exc, LeaseLost):
                log.warning("lease on shard %s lost; another worker reads it", sid)
            elif exc is not None:
                self.metrics.reader_failures += 1
                log.error("audit reader of shard %s failed; restarting it", sid, exc_info=exc)
        self.metrics.shards_reading = len(self._readers)

    async def _list_shards(self) -> list[dict[str, Any]]:
        return await list_shards(self._streams, self.stream_arn)

    async def _discover(self) -> None:
        shards = await self._list_shards()
        listed = {s["ShardId"] for s in shards}
        async with self._pool.connection() as conn:
            for shard in shards:
                await conn.execute(
                    "INSERT INTO consumer_shard (consumer, stream_arn, shard_id, parent_shard_id)"
                    " VALUES (%s, %s, %s, %s) ON CONFLICT DO NOTHING",
                    (self.consumer, self.stream_arn, shard["ShardId"], shard.get("ParentShardId")),
                )
            cur = await conn.execute(
                "SELECT shard_id FROM consumer_shard WHERE consumer = %s AND stream_arn = %s"
                " AND ended",
                (self.consumer, self.stream_arn),
            )
            self._done |= {str(r[0]) for r in await cur.fetchall()}
            for shard in shards:
                sid = shard["ShardId"]
                if sid in self._readers or sid in self._done:
                    continue
                parent = shard.get("ParentShardId")
                # A parent that aged out of the stream (not listed) counts as drained.
                if parent and parent in listed and parent not in self._done:
                    continue
                async with conn.transaction(), conn.cursor() as c:
                    if not await take_lease(c, self._position(sid)):
                        continue  # another worker reads it
                self._readers[sid] = asyncio.create_task(self._read(sid), name=f"audit:{sid}")
        self.metrics.shards_reading = len(self._readers)

    async def _renew(self) -> None:
        async with self._pool.connection() as conn:
            for sid, task in list(self._readers.items()):
                if task.done():
                    continue
                async with conn.transaction(), conn.cursor() as c:
                    held = await take_lease(c, self._position(sid))
                if not held:
                    task.cancel()
                    log.warning("lease on shard %s lost; stopping its reader", sid)

    async def _release(self, shard_id: str) -> None:
        async with self._pool.connection() as conn:
            await conn.execute(
                "UPDATE consumer_shard SET owner = NULL, lease_expires_at = NULL"
                " WHERE consumer = %s AND stream_arn = %s AND shard_id = %s AND owner = %s",
                (self.consumer, self.stream_arn, shard_id, self.owner),
            )

    async def _checkpoint(self, shard_id: str) -> str | None:
        async with self._pool.connection() as conn:
            cur = await conn.execute(
                "SELECT checkpoint FROM consumer_shard"
                " WHERE consumer = %s AND stream_arn = %s AND shard_id = %s",
                (self.consumer, self.stream_arn, shard_id),
            )
            row = await cur.fetchone()
        return None if row is None or row[0] is None else str(row[0])

    async def _iterator(self, shard_id: str) -> str:
        checkpoint = await self._retrying(self._checkpoint, shard_id)
        kwargs: dict[str, Any] = {"StreamArn": self.stream_arn, "ShardId": shard_id}
        if checkpoint:
            kwargs.update(ShardIteratorType="AFTER_SEQUENCE_NUMBER", SequenceNumber=checkpoint)
        else:
            kwargs["ShardIteratorType"] = "TRIM_HORIZON"
        try:
            resp = await self._streams.get_shard_iterator(**kwargs)
        except self._streams.exceptions.TrimmedDataAccessException:
            log.error(
                "audit checkpoint of shard %s is older than the stream's 24 h: changes were"
                " lost to the audit; reading from the oldest record",
                shard_id,
            )
            kwargs = {
                "StreamArn": self.stream_arn,
                "ShardId": shard_id,
                "ShardIteratorType": "TRIM_HORIZON",
            }
            resp = await self._streams.get_shard_iterator(**kwargs)
        return str(resp["ShardIterator"])

    async def _retrying(self, fn: Any, *args: Any) -> Any:
        """Call `fn` until PostgreSQL answers (capped exponential backoff with jitter)."""
        delay = 0.1
        while True:
            try:
                return await fn(*args)
            except (psycopg.OperationalError, psycopg.InterfaceError, OSError, TimeoutError) as exc:
                # psycopg_pool.PoolTimeout is an OperationalError.
                self.metrics.write_failures += 1
                log.warning("audit database unavailable (%s); retrying", type(exc).__name__)
                await asyncio.sleep(delay * (0.5 + random.random() / 2))
                delay = min(delay * 2, self._retry_max)

    async def _write(self, shard_id: str, records: list[dict[str, Any]]) -> None:
        async with self._pool.connection() as conn:
            result = await write_batch(conn, records, self._position(shard_id))
        self.metrics.rows_inserted += result.inserted
        self.metrics.batches_written += 1
        if result.newest_stream_at is not None:
            last = self.metrics.last_applied_stream_at
            if last is None or result.newest_stream_at > last:
                self.metrics.last_applied_stream_at = result.newest_stream_at

    async def _read(self, shard_id: str) -> None:
        iterator: str | None = await self._iterator(shard_id)
        me = asyncio.current_task()
        while iterator is not None:
            # aiobotocore's retries can swallow a cancel (see relay/stream.py).
            if me is not None and me.cancelling():
                raise asyncio.CancelledError()
            try:
                resp = await self._streams.get_records(ShardIterator=iterator, Limit=self._limit)
            except self._streams.exceptions.ExpiredIteratorException:
                iterator = await self._iterator(shard_id)
                continue
            records = resp.get("Records", [])
            if records:
                self.metrics.records_read += len(records)
                oldest = parse_record(records[0]).stream_at or datetime.now(UTC)
                self.metrics.pending_since[shard_id] = oldest
                self.metrics.pending_records[shard_id] = len(records)
                await self._retrying(self._write, shard_id, records)
                self.metrics.pending_since.pop(shard_id, None)
                self.metrics.pending_records.pop(shard_id, None)
            # Expired while PostgreSQL was away (15 min)? The next GetRecords says so, and
            # the iterator is taken again from the checkpoint just committed.
            iterator = resp.get("NextShardIterator")
            if not records and iterator is not None:
                await asyncio.sleep(self._poll)
        await self._retrying(self._mark_ended, shard_id)
        self._done.add(shard_id)
        log.info("audit: shard %s drained", shard_id)

    async def _mark_ended(self, shard_id: str) -> None:
        async with self._pool.connection() as conn, conn.transaction(), conn.cursor() as cur:
            if not await take_lease(cur, self._position(shard_id)):
                raise LeaseLost(shard_id)
            await cur.execute(
                "UPDATE consumer_shard SET ended = true WHERE consumer = %s AND stream_arn = %s"
                " AND shard_id = %s",
                (self.consumer, self.stream_arn, shard_id),
            )
