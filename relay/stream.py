"""The stream relay: DynamoDB Streams -> normalized deltas -> a sink (the cache).

Written for AWS's semantics, which DynamoDB Local only partly shows (one shard, no
splits): shards are discovered and re-discovered, a child shard is read only after its
parent is drained, a checkpoint is stored only after its deltas are published, and an
expired iterator is refreshed from the checkpoint.

Delivery is at-least-once: a relay killed between publish and checkpoint publishes
those records again on restart, with the same versions, which consumers drop.

Two kinds of trouble do not stop a shard:
- a record that does not normalize (poison) is parked as a dead record (`DeadLetterSink`)
  and skipped; the log names only the error's type and field, never a value;
- a checkpoint older than the stream's 24 h (`TrimmedDataAccessException`) is a gap: the
  relay calls `on_gap` (the worker bumps every tenant's epoch and rebuilds every cache
  from DynamoDB) before it reads on from the oldest record. If `on_gap` fails, the reader
  fails and retries from the same checkpoint, so a gap is never skipped.

One reader per shard: only the discovery loop starts readers, one discovery at a time.
"""

from __future__ import annotations

import asyncio
import contextlib
import logging
import time
from collections.abc import Awaitable, Callable, Sequence
from typing import TYPE_CHECKING, Any, Protocol

from dynamo import keys
from dynamo.deltas import DirectoryChange, ExamDelta, ReviewDelta
from dynamo.serde import to_attrs
from dynamo.table import list_shards
from relay.exceptions import LeaseLost
from relay.normalize import Unreadable, normalize

if TYPE_CHECKING:
    from dynamo.store import ExamStore

log = logging.getLogger("relay.stream")

SHARD_END = "SHARD_END"


class DeltaSink(Protocol):
    async def publish(self, deltas: Sequence[ExamDelta | ReviewDelta]) -> object: ...


class CheckpointStore(Protocol):
    """Durable per-shard checkpoints, and the leases that make one relay a shard's reader."""

    async def get(self, shard_id: str) -> str | None: ...
    async def set(self, shard_id: str, sequence_number: str) -> bool:
        """False when the write was fenced off (our lease on the shard is gone)."""
        ...

    async def acquire(self, shard_id: str) -> bool:
        """Take or renew this relay's lease on the shard."""
        ...

    async def release(self, shard_id: str) -> None: ...


class DeadLetterSink(Protocol):
    async def park(self, source: str, bad: Unreadable) -> None:
        """Keep a record that does not normalize where an operator finds it."""
        ...


class DynamoDeadLetters:
    """Dead records in the table: `PK = RELAYDEAD`, `SK = REC#{source}#{sequence}`.

    A dead record holds where the item is (its keys), the stream event's IDs and the
    problem (error types and field names), never the item's image: an operator reads the
    item itself. `expires_at` (epoch seconds) is for the table's TTL. A replayed record
    overwrites its own dead record.
    """

    def __init__(self, store: ExamStore, *, keep_days: float = 14.0) -> None:
        self._store = store
        self._keep_s = int(keep_days * 86_400)
        self.parked = 0

    async def park(self, source: str, bad: Unreadable) -> None:
        data = bad.record.get("dynamodb", {})
        seq = str(data.get("SequenceNumber", ""))
        item_keys = {k: str(next(iter(v.values()))) for k, v in (data.get("Keys") or {}).items()}
        now = time.time()
        item: dict[str, Any] = {
            "PK": keys.RELAY_DEAD_PK,
            "SK": keys.relay_dead_sk(source, seq),
            "entity": "RELAYDEAD",
            "source": source,
            "sequence_number": seq,
            "event_id": str(bad.record.get("eventID", "")),
            "event_name": str(bad.record.get("eventName", "")),
            "item_keys": item_keys,
            "problem": bad.problem,
            "parked_at": int(now * 1000),
            "expires_at": int(now) + self._keep_s,
        }
        await self._store.call("put_item", TableName=self._store.table, Item=to_attrs(item))
        self.parked += 1


async def deliver(
    records: list[dict[str, Any]],
    sink: DeltaSink,
    dead_letters: DeadLetterSink | None,
    source: str,
) -> tuple[int, int]:
    """Normalize a batch, park what does not normalize, publish the rest in order:
    the one path of the worker's shard readers and of the Lambda handler. Returns
    (deltas published, records parked). Parking comes first: if it fails, nothing of
    the batch is acknowledged and the batch is read again."""
    deltas, unreadable = normalize(records)
    for bad in unreadable:
        seq = bad.record.get("dynamodb", {}).get("SequenceNumber")
        log.error(
            "parking stream record %s (seq %s) of %s: %s",
            bad.record.get("eventID"),
            seq,
            source,
            bad.problem,
        )
        if dead_letters is not None:
            await dead_letters.park(source, bad)
    notices = [d for d in deltas if isinstance(d, DirectoryChange)]
    rows = [d for d in deltas if not isinstance(d, DirectoryChange)]
    if rows:
        await sink.publish(rows)
    if notices:
        announce = getattr(sink, "announce", None)
        if announce is not None:
            await announce(notices)
    return len(deltas), len(unreadable)


class StreamRelay:
    def __init__(
        self,
        streams: Any,
        stream_arn: str,
        sink: DeltaSink,
        checkpoints: CheckpointStore,
        *,
        poll_interval: float = 0.05,
        discover_interval: float = 5.0,
        lease_interval: float = 5.0,
        on_gap: Callable[[str], Awaitable[None]] | None = None,
        dead_letters: DeadLetterSink | None = None,
    ) -> None:
        self._streams = streams
        self.stream_arn = stream_arn
        self._sink = sink
        self._checkpoints = checkpoints
        self._poll = poll_interval
        self._discover_every = discover_interval
        self._lease_every = lease_interval
        self.reader_failures = 0
        self._readers: dict[str, asyncio.Task[None]] = {}
        self._done: set[str] = set()
        self.records_seen = 0
        self.deltas_published = 0
        self.records_parked = 0
        self.gaps = 0
        self._on_gap = on_gap
        self._dead_letters = dead_letters
        # Readers are started only by `_discover`, one discovery at a time: two
        # overlapping discoveries could otherwise both start a reader for one shard.
        self._discovering = asyncio.Lock()
        # Set by a reader that drained its shard: discover its children now.
        self._wake = asyncio.Event()

    async def run(self) -> None:
        """Read every shard this relay can lease until cancelled.

        Every `lease_interval` the leases of running readers are renewed (a reader whose
        lease was lost is stopped); every `discover_interval` the shard list is re-read.
        A reader that fails is logged and restarted from its checkpoint.
        """
        loop = asyncio.get_running_loop()
        me = asyncio.current_task()
        next_discovery = 0.0
        backoff = 0.2
        try:
            while True:
                # A cancel that botocore's retries swallowed (see `_read_shard`) still
                # stops the loop, or `run` would outlive its caller's cancel.
                if me is not None and me.cancelling():
                    raise asyncio.CancelledError()
                self._reap_readers()
                try:
                    if loop.time() >= next_discovery:
                        await self._discover()
                        next_discovery = loop.time() + self._discover_every
                    await self._renew_leases()
                    beat = getattr(self._sink, "heartbeat", None)
                    if beat is not None:
                        await beat()
                    backoff = 0.2
                except asyncio.CancelledError:
                    raise
                except Exception as exc:
                    # Redis restarting, DynamoDB throttled: keep going, a little later.
                    log.warning("relay round failed (%s); retrying", type(exc).__name__)
                    await asyncio.sleep(backoff)
                    backoff = min(backoff * 2, 5.0)
                    continue
                # asyncio.timeout, not wait_for: on Python 3.11 wait_for can swallow a
                # cancel that comes as the wake is set, and this loop would outlive it.
                with contextlib.suppress(TimeoutError):
                    async with asyncio.timeout(min(self._discover_every, self._lease_every)):
                        await self._wake.wait()
                if self._wake.is_set():
                    self._wake.clear()
                    next_discovery = 0.0  # a shard ended: its children may start now
        finally:
            readers = list(self._readers.items())
            for _, task in readers:
                task.cancel()
            await asyncio.gather(*(t for _, t in readers), return_exceptions=True)
            # Hand the shards over at once rather than when the leases expire.
            for sid, _ in readers:
                with contextlib.suppress(Exception):
                    await self._checkpoints.release(sid)

    def _reap_readers(self) -> None:
        for sid, task in list(self._readers.items()):
            if not task.done():
                continue
            del self._readers[sid]
            if task.cancelled():
                continue
            exc = task.exception()
            if isinstance(exc, LeaseLost):
                log.warning("lease on shard %s lost; another relay reads it now", sid)
            elif exc is not None:
                self.reader_failures += 1
                log.error("reader of shard %s failed; restarting it", sid, exc_info=exc)

    async def _renew_leases(self) -> None:
        for sid, task in list(self._readers.items()):
            if not task.done() and not await self._checkpoints.acquire(sid):
                task.cancel()
                log.warning("lease on shard %s lost; stopping its reader", sid)

    async def _discover(self) -> None:
        async with self._discovering:
            await self._discover_once()

    async def _discover_once(self) -> None:
        shards = await self._list_shards()
        known = {s["ShardId"] for s in shards}
        for shard in shards:
            sid = shard["ShardId"]
            if sid in self._readers or sid in self._done:
                continue
            if await self._checkpoints.get(sid) == SHARD_END:
                self._done.add(sid)
                continue
            parent = shard.get("ParentShardId")
            # A parent that aged out of the stream (not listed) counts as drained.
            if parent and parent in known and parent not in self._done:
                continue
            if not await self._checkpoints.acquire(sid):
                continue  # another relay reads it
            if sid in self._readers:  # defensive: never two readers of one shard
                continue
            self._readers[sid] = asyncio.create_task(self._read_shard(sid), name=f"shard:{sid}")

    async def _list_shards(self) -> list[dict[str, Any]]:
        return await list_shards(self._streams, self.stream_arn)

    async def _iterator(self, shard_id: str) -> str:
        checkpoint = await self._checkpoints.get(shard_id)
        kwargs: dict[str, Any] = {"StreamArn": self.stream_arn, "ShardId": shard_id}
        if checkpoint:
            kwargs.update(ShardIteratorType="AFTER_SEQUENCE_NUMBER", SequenceNumber=checkpoint)
        else:
            kwargs["ShardIteratorType"] = "TRIM_HORIZON"
        try:
            resp = await self._streams.get_shard_iterator(**kwargs)
        except self._streams.exceptions.TrimmedDataAccessException:
            return await self._after_gap(shard_id)
        return str(resp["ShardIterator"])

    async def _after_gap(self, shard_id: str) -> str:
        """Records between the checkpoint and the oldest one kept are gone: let the
        consumers converge from DynamoDB, then read on from the oldest record.

        Without a checkpoint there is nothing the relay claimed to have read up to, so
        nothing can have been skipped: DynamoDB Local raises this on a fresh stream's
        TRIM_HORIZON iterator too. Then it just reads again from the oldest record."""
        if not await self._checkpoints.get(shard_id):
            log.info(
                "shard %s: trimmed before it was first read; reading from the oldest", shard_id
            )
            await asyncio.sleep(self._poll)
            resp = await self._streams.get_shard_iterator(
                StreamArn=self.stream_arn, ShardId=shard_id, ShardIteratorType="TRIM_HORIZON"
            )
            return str(resp["ShardIterator"])
        self.gaps += 1
        log.error(
            "shard %s: records after the checkpoint were trimmed (the relay was away longer "
            "than the stream keeps them); treating it as a gap",
            shard_id,
        )
        if self._on_gap is not None:
            await self._on_gap(shard_id)
        resp = await self._streams.get_shard_iterator(
            StreamArn=self.stream_arn, ShardId=shard_id, ShardIteratorType="TRIM_HORIZON"
        )
        return str(resp["ShardIterator"])

    async def _read_shard(self, shard_id: str) -> None:
        iterator: str | None = await self._iterator(shard_id)
        me = asyncio.current_task()
        while iterator is not None:
            # A cancel that lands while aiohttp's timeout is expiring comes back as a
            # TimeoutError, which botocore retries: the CancelledError is lost. Honour
            # the pending cancel ourselves, or the reader outlives its relay.
            if me is not None and me.cancelling():
                raise asyncio.CancelledError()
            try:
                resp = await self._streams.get_records(ShardIterator=iterator, Limit=1000)
            except self._streams.exceptions.ExpiredIteratorException:
                iterator = await self._iterator(shard_id)
                continue
            except self._streams.exceptions.TrimmedDataAccessException:
                iterator = await self._after_gap(shard_id)
                continue
            records = resp.get("Records", [])
            if records:
                self.records_seen += len(records)
                published, parked = await deliver(records, self._sink, self._dead_letters, shard_id)
                self.deltas_published += published
                self.records_parked += parked
                last = records[-1]["dynamodb"]["SequenceNumber"]
                if await self._checkpoints.set(shard_id, last) is False:
                    raise LeaseLost(shard_id)
            iterator = resp.get("NextShardIterator")
            if not records and iterator is not None:
                await asyncio.sleep(self._poll)
        # No next iterator: the shard is closed and drained; its children may start.
        if await self._checkpoints.set(shard_id, SHARD_END) is False:
            raise LeaseLost(shard_id)
        self._done.add(shard_id)
        log.info("shard %s drained", shard_id)
        self._wake.set()  # the discovery loop starts its children (never this task)
