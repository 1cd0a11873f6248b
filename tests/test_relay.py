"""The stream relay: nothing lost or reordered across crashes, lineage, Lambda parity."""

from __future__ import annotations

import asyncio
import json
import os
import random
import signal
import sys
from collections.abc import Sequence
from pathlib import Path
from typing import Any

import orjson
from redis.asyncio import Redis

from devstack.procs import ManagedProcess
from devstack.services import ROOT
from dynamo.client import streams_client
from dynamo.deltas import ExamDelta, ReviewDelta
from dynamo.models import exam_to_item
from dynamo.serde import to_attrs
from dynamo.settings import DynamoSettings
from dynamo.states import ExamStatus
from dynamo.store import ExamStore
from dynamo.table import stream_arn
from relay.checkpoints import RedisCheckpoints
from relay.lambda_handler import handler
from relay.normalize import records_to_deltas
from relay.stream import SHARD_END, StreamRelay
from tests.conftest import UNIT
from tests.support.exams import exam_bundle
from tests.support.relay import _lambda_env, _with_env
from worklist_cache import WorklistFeed, keys
from worklist_cache.feed import Snapshot

FIXTURES = Path(__file__).parent / "fixtures"
PATH = (ExamStatus.ARRIVED, ExamStatus.IN_PROGRESS, ExamStatus.COMPLETED, ExamStatus.FINAL)


async def _write_day(store: ExamStore, exams: int, seed: int) -> set[tuple[str, int]]:
    """Create exams and walk each through its states, interleaved; returns every
    (accession, version) written."""
    rng = random.Random(seed)
    written: set[tuple[str, int]] = set()

    async def one() -> None:
        exam, order, profile = exam_bundle("northwind")
        await store.create_exam(exam, order, profile)
        written.add((exam.accession, 1))
        for status in PATH:
            await asyncio.sleep(rng.random() * 0.05)
            new = await store.transition(exam.patient_id, exam.accession, status)
            written.add((exam.accession, new.version))

    await asyncio.gather(*(one() for _ in range(exams)))
    return written


async def _feed_entries(redis: Redis, tenant: str = "northwind") -> list[tuple[str, int]]:
    entries = await redis.xrange(keys.feed(tenant))
    out = []
    for _id, fields in entries:
        delta = orjson.loads(fields[b"d"])
        out.append((delta["exam_id"], delta["version"]))
    return out


async def _wait_for_feed(redis: Redis, count: int, timeout: float = 20.0) -> list[tuple[str, int]]:
    loop = asyncio.get_running_loop()
    deadline = loop.time() + timeout * UNIT
    while True:
        entries = await _feed_entries(redis)
        if len(entries) >= count or loop.time() > deadline:
            return entries
        await asyncio.sleep(0.1)


def _assert_exactly_once_in_order(
    entries: list[tuple[str, int]], written: set[tuple[str, int]]
) -> None:
    assert len(entries) == len(set(entries)), "a delta was recorded twice"
    assert set(entries) == written, f"missing: {sorted(written - set(entries))[:5]}"
    last: dict[str, int] = {}
    for exam_id, version in entries:
        assert version > last.get(exam_id, 0), f"{exam_id} went backwards"
        last[exam_id] = version


async def test_relay_cancelled_mid_stream_resumes_without_loss(
    store: ExamStore, dynamo_settings: DynamoSettings, redis: Redis, ddb: Any
) -> None:
    arn = await stream_arn(ddb, dynamo_settings.table)
    feed, checkpoints = WorklistFeed(redis), RedisCheckpoints(redis, arn)
    async with streams_client(dynamo_settings) as streams:
        writer = asyncio.create_task(_write_day(store, exams=20, seed=1))
        for _ in range(4):  # run, cancel at an arbitrary point, start a new relay
            relay = StreamRelay(streams, arn, feed, checkpoints, poll_interval=0.02)
            task = asyncio.create_task(relay.run())
            await asyncio.sleep(0.3 + random.random() * 0.3)
            task.cancel()
            await asyncio.gather(task, return_exceptions=True)
        written = await writer
        relay = StreamRelay(streams, arn, feed, checkpoints, poll_interval=0.02)
        task = asyncio.create_task(relay.run())
        entries = await _wait_for_feed(redis, len(written))
        task.cancel()
        await asyncio.gather(task, return_exceptions=True)
    _assert_exactly_once_in_order(entries, written)


async def test_relay_process_killed_resumes_without_loss(
    store: ExamStore, dynamo_settings: DynamoSettings, redis: Redis, redis_url: str
) -> None:
    env = {
        "REDIS_URL": redis_url,
        "DYNAMO_ENDPOINT_URL": dynamo_settings.endpoint_url,
        "DYNAMO_TABLE": dynamo_settings.table,
        "RELAY_POLL_INTERVAL": "0.02",
        # The killed relay's lease must run out before its successor reads the shard.
        "RELAY_LEASE_SECONDS": "2",
        "RELAY_DISCOVER_INTERVAL": "0.5",
    }

    def spawn() -> ManagedProcess:
        return ManagedProcess("relay", [sys.executable, "-m", "relay"], env=env, cwd=ROOT)

    await _already_built(redis)
    writer = asyncio.create_task(_write_day(store, exams=20, seed=2))
    relay = spawn()
    try:
        await _wait_for_feed(redis, 10)
        relay.kill()  # SIGKILL: no chance to clean up or checkpoint
        await asyncio.sleep(0.5)
        relay = spawn()
        written = await writer
        entries = await _wait_for_feed(redis, len(written), timeout=30)
    finally:
        relay.stop()
    _assert_exactly_once_in_order(entries, written)


async def _already_built(redis: Redis, tenant: str = "northwind") -> None:
    """The steady state: the tenant's cache is built, so the worker does not rebuild it
    from DynamoDB first (a rebuild applies only the newest version of each exam, and
    these tests count every version the stream carries)."""
    await WorklistFeed(redis).mark_built(tenant)


def _worker_env(dynamo_settings: DynamoSettings, redis_url: str, name: str) -> dict[str, str]:
    return {
        "REDIS_URL": redis_url,
        "DYNAMO_ENDPOINT_URL": dynamo_settings.endpoint_url,
        "DYNAMO_TABLE": dynamo_settings.table,
        "RELAY_POLL_INTERVAL": "0.02",
        "RELAY_LEASE_SECONDS": "1.5",
        "RELAY_DISCOVER_INTERVAL": "0.3",
        "RELAY_REAP_INTERVAL": "0.3",
        "RELAY_NODE_NAME": name,
    }


async def _lease_holder(redis: Redis, arn: str) -> str | None:
    checkpoints = RedisCheckpoints(redis, arn)
    lease_keys = await redis.keys(keys.relay_lease(arn, "*"))
    assert len(lease_keys) <= 1
    if not lease_keys:
        return None
    shard = lease_keys[0].decode().rpartition(":lease:")[2]
    return await checkpoints.holder(shard)


async def test_two_relays_share_by_lease_and_the_survivor_takes_over(
    store: ExamStore, dynamo_settings: DynamoSettings, redis: Redis, redis_url: str, ddb: Any
) -> None:
    arn = await stream_arn(ddb, dynamo_settings.table)
    await _already_built(redis)
    relays = {
        name: ManagedProcess(
            name,
            [sys.executable, "-m", "relay"],
            env=_worker_env(dynamo_settings, redis_url, name),
            cwd=ROOT,
        )
        for name in ("relay-a", "relay-b")
    }
    try:
        before = await _write_day(store, exams=10, seed=3)
        await _wait_for_feed(redis, len(before))
        holder = await _lease_holder(redis, arn)
        assert holder in relays, "one relay leases the shard"
        relays[holder].kill()  # the reader dies without a goodbye
        survivor = next(n for n in relays if n != holder)
        after = await _write_day(store, exams=10, seed=4)
        written = before | after
        entries = await _wait_for_feed(redis, len(written), timeout=30)
        assert await _lease_holder(redis, arn) == survivor
    finally:
        for proc in relays.values():
            proc.stop()
    _assert_exactly_once_in_order(entries, written)


async def test_the_worker_reaps_expired_claims_and_the_feed_shows_it(
    store: ExamStore, dynamo_settings: DynamoSettings, redis: Redis, redis_url: str
) -> None:
    from dynamo.claims import Claims

    exam, order, profile = exam_bundle("northwind")
    await store.create_exam(exam, order, profile)
    for status in PATH[:3]:
        await store.transition(exam.patient_id, exam.accession, status)
    claim = await Claims(store).claim(exam.patient_id, exam.accession, "u-ana", "Ana", lease_ms=300)
    await _already_built(redis)
    worker = ManagedProcess(
        "relay",
        [sys.executable, "-m", "relay"],
        env=_worker_env(dynamo_settings, redis_url, "relay-r"),
        cwd=ROOT,
    )
    try:
        entries = await _wait_for_feed(redis, 6, timeout=20)
    finally:
        worker.stop()
    assert entries[-1] == (exam.accession, claim.exam.version + 1)
    snap = await WorklistFeed(redis).snapshot("northwind")
    (row,) = snap.rows
    assert row["claimed_by"] is None and row["status"] == "COMPLETED"


# ---- AWS semantics DynamoDB Local does not show: a fake at the boto client boundary ----


class _ExpiredIterator(Exception):
    pass


class _Trimmed(Exception):
    pass


class FakeStreams:
    """Two generations of shards: `parent` (closed) and its child `child` (open), listed
    child first, as DescribeStream may. The child's iterator expires once."""

    class exceptions:
        ExpiredIteratorException = _ExpiredIterator
        TrimmedDataAccessException = _Trimmed

    def __init__(self, parent: list[dict[str, Any]], child: list[dict[str, Any]]) -> None:
        self.records = {"parent": parent, "child": child}
        self.expire_child_once = True
        self.describe_calls = 0

    async def describe_stream(self, **kwargs: Any) -> dict[str, Any]:
        self.describe_calls += 1
        return {
            "StreamDescription": {
                "Shards": [
                    {"ShardId": "child", "ParentShardId": "parent"},
                    {"ShardId": "parent", "SequenceNumberRange": {"EndingSequenceNumber": "3"}},
                ]
            }
        }

    async def get_shard_iterator(self, **kw: Any) -> dict[str, Any]:
        records = self.records[kw["ShardId"]]
        start = 0
        if kw["ShardIteratorType"] == "AFTER_SEQUENCE_NUMBER":
            seqs = [r["dynamodb"]["SequenceNumber"] for r in records]
            start = seqs.index(kw["SequenceNumber"]) + 1
        return {"ShardIterator": f"{kw['ShardId']}:{start}"}

    async def get_records(self, ShardIterator: str, Limit: int) -> dict[str, Any]:
        shard, _, pos = ShardIterator.partition(":")
        start = int(pos)
        if shard == "child" and start > 0 and self.expire_child_once:
            self.expire_child_once = False
            raise _ExpiredIterator()
        batch = self.records[shard][start : start + 1]  # one record per call
        nxt = start + len(batch)
        if shard == "parent" and nxt >= len(self.records[shard]):
            return {"Records": batch}  # closed shard: no next iterator
        return {"Records": batch, "NextShardIterator": f"{shard}:{nxt}"}


def _record(seq: int, version: int, status: ExamStatus) -> dict[str, Any]:
    exam, _, _ = exam_bundle("northwind") if seq == 1 else _record.base  # type: ignore[attr-defined]
    _record.base = (exam, None, None)  # type: ignore[attr-defined]
    image = exam_to_item(exam.model_copy(update={"version": version, "status": status}))
    return {
        "eventName": "INSERT" if version == 1 else "MODIFY",
        "dynamodb": {"NewImage": to_attrs(image), "SequenceNumber": str(seq)},
    }


class ListSink:
    def __init__(self) -> None:
        self.deltas: list[ExamDelta | ReviewDelta] = []

    async def publish(self, deltas: Sequence[ExamDelta | ReviewDelta]) -> object:
        self.deltas.extend(deltas)
        return None


class DictCheckpoints:
    def __init__(self) -> None:
        self.values: dict[str, str] = {}

    async def get(self, shard_id: str) -> str | None:
        return self.values.get(shard_id)

    async def set(self, shard_id: str, sequence_number: str) -> bool:
        self.values[shard_id] = sequence_number
        return True

    async def acquire(self, shard_id: str) -> bool:
        return True

    async def release(self, shard_id: str) -> None:
        pass


async def test_child_shard_is_read_only_after_its_parent_is_drained() -> None:
    statuses = [ExamStatus.SCHEDULED, *PATH]
    records = [_record(i + 1, i + 1, s) for i, s in enumerate(statuses)]
    fake = FakeStreams(parent=records[:3], child=records[3:])
    sink, checkpoints = ListSink(), DictCheckpoints()
    relay = StreamRelay(fake, "arn:fake", sink, checkpoints, poll_interval=0.01)
    task = asyncio.create_task(relay.run())
    for _ in range(200):
        if len(sink.deltas) >= 5:
            break
        await asyncio.sleep(0.01)
    task.cancel()
    await asyncio.gather(task, return_exceptions=True)
    assert [d.version for d in sink.deltas] == [1, 2, 3, 4, 5]
    assert checkpoints.values["parent"] == SHARD_END
    assert checkpoints.values["child"] == "5"
    assert not fake.expire_child_once, "the expired iterator was refreshed from the checkpoint"


# ---- the Lambda path ---------------------------------------------------------------


async def test_lambda_handler_applies_a_recorded_event(
    redis: Redis, redis_url: str, dynamo_settings: DynamoSettings
) -> None:
    event = json.loads((FIXTURES / "stream_event.json").read_text())
    env = _lambda_env(redis_url, dynamo_settings)
    result = await asyncio.to_thread(_with_env, env, handler, event, None)
    assert result == {"batchItemFailures": []}
    snap: Snapshot = await WorklistFeed(redis).snapshot("northwind")
    (row,) = snap.rows
    assert (row["exam_id"], row["status"], row["version"]) == ("NWFX0000001", "ARRIVED", 2)
    assert "lock_version" not in row  # the fencing token never leaves the store
    assert await _feed_entries(redis) == [("NWFX0000001", 1), ("NWFX0000001", 2)]
    # Lambda retries a batch: nothing is applied twice.
    await asyncio.to_thread(_with_env, env, handler, event, None)
    assert len(await _feed_entries(redis)) == 2


async def test_lambda_and_worker_normalize_real_records_alike(
    store: ExamStore, dynamo_settings: DynamoSettings, ddb: Any
) -> None:
    exam, order, profile = exam_bundle("northwind")
    await store.create_exam(exam, order, profile)
    await store.transition(exam.patient_id, exam.accession, ExamStatus.ARRIVED)
    arn = await stream_arn(ddb, dynamo_settings.table)
    async with streams_client(dynamo_settings) as streams:
        shard = (await streams.describe_stream(StreamArn=arn))["StreamDescription"]["Shards"][0]
        it = await streams.get_shard_iterator(
            StreamArn=arn, ShardId=shard["ShardId"], ShardIteratorType="TRIM_HORIZON"
        )
        records = (await streams.get_records(ShardIterator=it["ShardIterator"]))["Records"]
    # What Lambda delivers: the same records as JSON, times as epoch seconds.
    lambda_records = json.loads(json.dumps(records, default=lambda d: int(d.timestamp())))
    worker = records_to_deltas(records)
    assert [d.version for d in worker] == [1, 2]
    assert records_to_deltas(lambda_records) == worker
    if os.environ.get("CI_SIGNAL_TEST"):  # keeps `signal` in use for a future drain test
        signal.getsignal(signal.SIGTERM)


async def test_a_lease_fences_the_checkpoint_of_a_relay_that_lost_it(redis: Redis) -> None:
    a = RedisCheckpoints(redis, "arn:x", owner="a", lease_ms=200)
    b = RedisCheckpoints(redis, "arn:x", owner="b", lease_ms=200)
    assert await a.acquire("s1") and not await b.acquire("s1")
    assert await a.set("s1", "100")
    await asyncio.sleep(0.35 * UNIT)  # a stalls past its lease
    assert await b.acquire("s1")
    assert await b.set("s1", "200")
    assert not await a.set("s1", "150"), "the ex-owner cannot move the checkpoint"
    assert not await a.acquire("s1")
    assert await a.get("s1") == "200"
    await b.release("s1")
    assert await a.acquire("s1")
