"""The stream relay: DynamoDB Streams -> normalized deltas -> a sink (the cache).

Written for AWS's semantics, which DynamoDB Local only partly shows (one shard, no
splits): shards are discovered and re-discovered, a child shard is read only after its
parent is drained, a checkpoint is stored only after its deltas are published, and an
expired iterator is refreshed from the checkpoint.

Delivery is at-least-once: a relay killed between publish and checkpoint publishes
those records again on restart, with the same versions, which consumers drop.
"""

from __future__ import annotations

import asyncio
import logging
from collections.abc import Sequence
from typing import Any, Protocol

from dynamo.deltas import ExamDelta
from dynamo.normalize import records_to_deltas

log = logging.getLogger("dynamo.relay")

SHARD_END = "SHARD_END"


class DeltaSink(Protocol):
    async def publish(self, deltas: Sequence[ExamDelta]) -> object: ...


class CheckpointStore(Protocol):
    async def get(self, shard_id: str) -> str | None: ...
    async def set(self, shard_id: str, sequence_number: str) -> None: ...


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
    ) -> None:
        self._streams = streams
        self.stream_arn = stream_arn
        self._sink = sink
        self._checkpoints = checkpoints
        self._poll = poll_interval
        self._discover_every = discover_interval
        self._readers: dict[str, asyncio.Task[None]] = {}
        self._done: set[str] = set()
        self.records_seen = 0
        self.deltas_published = 0

    async def run(self) -> None:
        """Read every shard until cancelled. A reader that dies takes the relay with it."""
        try:
            while True:
                await self._discover()
                failed = [t for t in self._readers.values() if t.done() and not t.cancelled()]
                for task in failed:
                    exc = task.exception()
                    if exc is not None:
                        raise exc
                await asyncio.sleep(self._discover_every)
        finally:
            for task in self._readers.values():
                task.cancel()
            await asyncio.gather(*self._readers.values(), return_exceptions=True)

    async def _discover(self) -> None:
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
            self._readers[sid] = asyncio.create_task(self._read_shard(sid), name=f"shard:{sid}")

    async def _list_shards(self) -> list[dict[str, Any]]:
        shards: list[dict[str, Any]] = []
        start: str | None = None
        while True:
            kwargs: dict[str, Any] = {"StreamArn": self.stream_arn}
            if start:
                kwargs["ExclusiveStartShardId"] = start
            desc = (await self._streams.describe_stream(**kwargs))["StreamDescription"]
            shards.extend(desc.get("Shards", []))
            start = desc.get("LastEvaluatedShardId")
            if not start:
                return shards

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
            log.error(
                "checkpoint of shard %s is older than the stream's 24 h; reading from the "
                "oldest record (consumers must resync)",
                shard_id,
            )
            kwargs = {
                "StreamArn": self.stream_arn,
                "ShardId": shard_id,
                "ShardIteratorType": "TRIM_HORIZON",
            }
            resp = await self._streams.get_shard_iterator(**kwargs)
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
            records = resp.get("Records", [])
            if records:
                self.records_seen += len(records)
                deltas = records_to_deltas(records)
                if deltas:
                    await self._sink.publish(deltas)
                    self.deltas_published += len(deltas)
                await self._checkpoints.set(shard_id, records[-1]["dynamodb"]["SequenceNumber"])
            iterator = resp.get("NextShardIterator")
            if not records and iterator is not None:
                await asyncio.sleep(self._poll)
        # No next iterator: the shard is closed and drained; its children may start.
        await self._checkpoints.set(shard_id, SHARD_END)
        self._done.add(shard_id)
        log.info("shard %s drained", shard_id)
        await self._discover()
