"""Helpers of the audit tests: a consumer over a real stream, waits."""

from __future__ import annotations

import asyncio
from collections.abc import AsyncIterator, Awaitable, Callable
from typing import Any

import pytest
from psycopg_pool import AsyncConnectionPool

from audit.consumer import AuditConsumer
from audit.db import open_pool
from dynamo.client import streams_client
from dynamo.settings import DynamoSettings
from dynamo.states import ExamStatus
from dynamo.table import stream_arn
from tests.conftest import UNIT

PATH = (ExamStatus.ARRIVED, ExamStatus.IN_PROGRESS, ExamStatus.COMPLETED)


async def read_stream(settings: DynamoSettings, arn: str) -> list[dict[str, Any]]:
    """Every record the stream holds now, shard by shard (what any consumer would see)."""
    out: list[dict[str, Any]] = []
    async with streams_client(settings) as streams:
        desc = (await streams.describe_stream(StreamArn=arn))["StreamDescription"]
        for shard in desc["Shards"]:
            it = (
                await streams.get_shard_iterator(
                    StreamArn=arn, ShardId=shard["ShardId"], ShardIteratorType="TRIM_HORIZON"
                )
            )["ShardIterator"]
            while it:
                resp = await streams.get_records(ShardIterator=it, Limit=1000)
                out.extend(resp["Records"])
                if not resp["Records"]:
                    break
                it = resp.get("NextShardIterator")
    return out


async def wait_for(
    check: Callable[[], Awaitable[bool]], timeout: float, what: str = "condition"
) -> None:
    loop = asyncio.get_running_loop()
    deadline = loop.time() + timeout * UNIT
    while not await check():
        if loop.time() > deadline:
            raise AssertionError(f"timed out waiting for {what}")
        await asyncio.sleep(0.1)


@pytest.fixture
async def arn(ddb: Any, dynamo_settings: DynamoSettings) -> str:
    return await stream_arn(ddb, dynamo_settings.table)


@pytest.fixture
async def pool(audit_database_url: str) -> AsyncIterator[AsyncConnectionPool[Any]]:
    async with open_pool(audit_database_url, size=2) as p:
        yield p


def consumer(streams: Any, arn: str, pool: AsyncConnectionPool[Any], **kw: Any) -> AuditConsumer:
    kw = {"poll_interval": 0.05, "discover_interval": 0.5, "lease_seconds": 3.0, **kw}
    return AuditConsumer(streams, arn, pool, retry_max_seconds=1.0, **kw)


async def _true(value: bool) -> bool:
    return value
