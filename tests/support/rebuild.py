"""Helpers of the rebuild tests: the cache against DynamoDB, waits."""

from __future__ import annotations

import asyncio
from typing import Any

from dynamo.client import dynamodb_client, streams_client
from dynamo.models import Exam
from dynamo.settings import DynamoSettings
from dynamo.states import ExamStatus
from dynamo.store import ExamStore
from dynamo.table import stream_arn
from tests.conftest import UNIT
from worklist_cache import WorklistFeed
from worklist_cache.views import View

EVERY_STATE = View(statuses=list(ExamStatus))


async def eventually(check: Any, timeout: float, what: str) -> None:
    loop = asyncio.get_running_loop()
    deadline = loop.time() + timeout * UNIT
    while True:
        if await check():
            return
        if loop.time() > deadline:
            raise AssertionError(f"timed out waiting for {what}")
        await asyncio.sleep(0.05)


async def delete_study(store: ExamStore, exam: Exam) -> None:
    """An exam deleted by hand (an operator's fix): only its study item goes."""
    await store.call(
        "delete_item", TableName=store.table, Key=store.key(exam.patient_id, exam.accession)
    )


async def cached(
    feed: WorklistFeed, tenant: str = "northwind", view: View = EVERY_STATE
) -> dict[str, Any]:
    snap = await feed.snapshot(tenant, view, limit=10_000)
    return {r["exam_id"]: (r["status"], r["version"]) for r in snap.rows}


def truth(*exams: Exam) -> dict[str, tuple[str, int]]:
    return {e.accession: (e.status.value, e.version) for e in exams}


async def stream_end(dynamo_settings: DynamoSettings) -> tuple[str, str, str]:
    """The table's stream ARN, its (one, in DynamoDB Local) shard and its last record."""
    async with dynamodb_client(dynamo_settings) as ddb, streams_client(dynamo_settings) as st:
        arn = await stream_arn(ddb, dynamo_settings.table)
        shard = (await st.describe_stream(StreamArn=arn))["StreamDescription"]["Shards"][0]
        it = (
            await st.get_shard_iterator(
                StreamArn=arn, ShardId=shard["ShardId"], ShardIteratorType="TRIM_HORIZON"
            )
        )["ShardIterator"]
        last = ""
        while it:
            resp = await st.get_records(ShardIterator=it)
            if not resp["Records"]:
                break
            last = resp["Records"][-1]["dynamodb"]["SequenceNumber"]
            it = resp.get("NextShardIterator")
    return arn, shard["ShardId"], last
