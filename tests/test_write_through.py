"""Write-through (`dynamo.writethrough`): a write through an opted-in store reaches the
worklists without the stream relay, and the relay's copy is then dropped by version."""

from __future__ import annotations

import asyncio
from collections.abc import AsyncIterator
from typing import Any

import pytest
from redis.asyncio import Redis

from dynamo.client import dynamodb_client, streams_client
from dynamo.deltas import ExamDelta
from dynamo.settings import DynamoSettings
from dynamo.states import ExamStatus
from dynamo.store import ExamStore
from dynamo.writethrough import WriteThrough
from relay.checkpoints import RedisCheckpoints
from relay.normalize import record_to_delta
from relay.stream import StreamRelay
from tests.conftest import gateway_node, seed_demo_directory, token
from tests.support.exams import exam_bundle
from tests.support.wsclient import Frame, WsClient
from worklist_cache import WorklistFeed

S = ExamStatus


@pytest.fixture
async def gateway_alone(
    dynamo_settings: DynamoSettings, redis: Redis, redis_url: str
) -> AsyncIterator[str]:
    """A gateway with no relay running: its WebSocket URL."""
    async with dynamodb_client(dynamo_settings) as client:
        await seed_demo_directory(client, dynamo_settings.table)
    async with gateway_node(dynamo_settings, redis_url) as (url, _app):
        yield url


def _deliveries(client: WsClient, exam_id: str) -> list[int]:
    return [
        f["delta"]["version"]
        for f in client.frames
        if f.get("type") == "delta" and f["delta"]["exam_id"] == exam_id
    ]


def _of(exam_id: str, version: int) -> Any:
    def match(f: Frame) -> bool:
        d = f.get("delta") or {}
        return bool(d.get("exam_id") == exam_id and d.get("version") == version)

    return match


async def test_a_write_reaches_the_client_without_the_relay_and_once_with_it(
    gateway_alone: str, ddb: Any, dynamo_settings: DynamoSettings, redis: Redis
) -> None:
    client = await WsClient.open(gateway_alone, token("t-ana"))
    await client.subscribe("s", statuses=[])
    through = WriteThrough(WorklistFeed(redis))
    store = ExamStore(ddb, dynamo_settings.table, write_through=through)
    exam, order, profile = exam_bundle()
    created = await store.create_exam(exam, order, profile)
    await client.until(_of(exam.accession, created.version), timeout=10)
    moved = await store.transition(exam.patient_id, exam.accession, S.ARRIVED)
    await client.until(_of(exam.accession, moved.version), timeout=10)
    assert through.published == 2 and through.failed == 0

    # Now the relay reads the stream: its copies of both writes come after them.
    async with streams_client(dynamo_settings) as streams:
        arn = (await ddb.describe_table(TableName=dynamo_settings.table))["Table"][
            "LatestStreamArn"
        ]
        feed = WorklistFeed(redis)
        relayed: dict[tuple[str, int], str | None] = {}
        carried = asyncio.Event()

        class Recorded:
            """The relay's sink: the feed, noting each exam delta's offset (None: stale)."""

            async def publish(self, deltas: Any) -> list[str | None]:
                offsets = await feed.publish(deltas)
                for d, offset in zip(deltas, offsets, strict=True):
                    relayed[(d.exam_id, d.version)] = offset
                if {(exam.accession, 1), (exam.accession, 2)} <= relayed.keys():
                    carried.set()
                return offsets

        relay = StreamRelay(
            streams, arn, Recorded(), RedisCheckpoints(redis, arn), poll_interval=0.02
        )
        relay_task = asyncio.create_task(relay.run())
        try:
            # Streams order records per item only (other tests' writes may sit in other
            # shards), so wait for the relay to have carried both of this exam's writes.
            await asyncio.wait_for(carried.wait(), timeout=60)
        finally:
            relay_task.cancel()
            await asyncio.gather(relay_task, return_exceptions=True)
    # The relay did carry both writes, and the feed dropped them as repeats.
    assert relayed[(exam.accession, 1)] is None and relayed[(exam.accession, 2)] is None
    # A delivery of a relayed copy would have been published before the feed returned;
    # a plain write after it, delivered, proves the client has seen all that came before.
    await store.transition(exam.patient_id, exam.accession, S.IN_PROGRESS)
    await client.until(_of(exam.accession, 3), timeout=10)
    assert _deliveries(client, exam.accession) == [1, 2, 3], "each version delivered once"


async def test_the_early_delta_is_what_the_relay_makes_of_the_write(
    ddb: Any, dynamo_settings: DynamoSettings
) -> None:
    published: list[ExamDelta] = []

    class Feed:
        async def publish(self, deltas: Any) -> object:
            published.extend(deltas)
            return None

    store = ExamStore(ddb, dynamo_settings.table, write_through=WriteThrough(Feed()))
    exam, order, profile = exam_bundle()
    await store.create_exam(exam, order, profile)
    for step in (S.ARRIVED, S.IN_PROGRESS, S.COMPLETED):
        await store.transition(exam.patient_id, exam.accession, step)
        item = (
            await ddb.get_item(
                TableName=dynamo_settings.table, Key=store.key(exam.patient_id, exam.accession)
            )
        )["Item"]
        relayed = record_to_delta({"eventName": "MODIFY", "dynamodb": {"NewImage": item}})
        assert published[-1] == relayed
    assert [d.version for d in published] == [1, 2, 3, 4]


async def test_a_failed_early_publish_never_fails_the_write(
    ddb: Any, dynamo_settings: DynamoSettings
) -> None:
    class Down:
        async def publish(self, deltas: Any) -> object:
            raise ConnectionError("redis is down")

    through = WriteThrough(Down(), pause_s=60)
    store = ExamStore(ddb, dynamo_settings.table, write_through=through)
    exam, order, profile = exam_bundle()
    await store.create_exam(exam, order, profile)
    moved = await store.transition(exam.patient_id, exam.accession, S.ARRIVED)
    assert moved.version == 2
    assert (through.failed, through.skipped) == (1, 1), "after a failure, a pause"
