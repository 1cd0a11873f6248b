"""The relay after a gap, a poison record, a lost Redis, and with a shard's lineage:
DynamoDB Local's real stream and redis-server throughout.

DynamoDB Local keeps its stream whole and has one shard, so two things are shown through
a thin wrapper around the real streams client (every call still goes to DynamoDB Local):
a trimmed stream (`TrimmedDataAccessException`, and the records it lost), and a closed
parent shard in front of the real one.
"""

from __future__ import annotations

import asyncio
import collections
import contextlib
import json
import logging
import sys
from collections.abc import AsyncIterator
from typing import Any

import orjson
import pytest
from redis.asyncio import Redis
from redis.exceptions import SlotNotCoveredError

from devstack import start_redis
from devstack.procs import ManagedProcess
from devstack.services import ROOT
from dynamo import keys as dkeys
from dynamo.claims import Claims
from dynamo.client import streams_client
from dynamo.models import exam_to_item
from dynamo.review import ReviewState, ReviewStore
from dynamo.serde import from_attrs, to_attrs
from dynamo.settings import DynamoSettings
from dynamo.states import ExamStatus
from dynamo.store import ExamStore
from dynamo.table import stream_arn
from relay.checkpoints import RedisCheckpoints
from relay.lambda_handler import handler
from relay.stream import StreamRelay
from relay.worker import RelaySettings, gap_handler, maintain_forever, pipeline
from tests.conftest import UNIT
from tests.support.exams import exam_bundle, exam_in
from tests.support.rebuild import cached, delete_study, eventually, stream_end, truth
from tests.support.relay import _lambda_env, _with_env
from worklist_cache import WorklistFeed, keys

S = ExamStatus


class Wrapped:
    """The real streams client, passed through; subclasses change one thing."""

    def __init__(self, real: Any) -> None:
        self._real = real
        self.exceptions = real.exceptions

    async def describe_stream(self, **kw: Any) -> Any:
        return await self._real.describe_stream(**kw)

    async def get_shard_iterator(self, **kw: Any) -> Any:
        return await self._real.get_shard_iterator(**kw)

    async def get_records(self, **kw: Any) -> Any:
        return await self._real.get_records(**kw)


class Trimmed(Wrapped):
    """A stream whose records up to `horizon` aged out (the relay was away > 24 h):
    an iterator after an older checkpoint raises the real client's
    TrimmedDataAccessException, and reads from TRIM_HORIZON no longer see them."""

    def __init__(self, real: Any, horizon: str) -> None:
        super().__init__(real)
        self.horizon = int(horizon)
        self.refused = 0

    async def get_shard_iterator(self, **kw: Any) -> Any:
        if kw["ShardIteratorType"] == "AFTER_SEQUENCE_NUMBER":
            if int(kw["SequenceNumber"]) < self.horizon:
                self.refused += 1
                raise self.exceptions.TrimmedDataAccessException(
                    {"Error": {"Code": "TrimmedDataAccessException", "Message": "injected"}},
                    "GetShardIterator",
                )
        return await self._real.get_shard_iterator(**kw)

    async def get_records(self, **kw: Any) -> Any:
        resp = dict(await self._real.get_records(**kw))
        kept = [r for r in resp["Records"] if int(r["dynamodb"]["SequenceNumber"]) > self.horizon]
        resp["Records"] = kept
        return resp


async def _run(relay: StreamRelay) -> asyncio.Task[None]:
    return asyncio.create_task(relay.run())


async def _stop(task: asyncio.Task[None]) -> None:
    task.cancel()
    await asyncio.gather(task, return_exceptions=True)


@pytest.fixture
async def streams(dynamo_settings: DynamoSettings) -> AsyncIterator[Any]:
    async with streams_client(dynamo_settings) as client:
        yield client


async def test_a_trimmed_stream_is_a_gap_epochs_bump_and_caches_converge(
    store: ExamStore, redis: Redis, streams: Any, dynamo_settings: DynamoSettings
) -> None:
    feed = WorklistFeed(redis)
    line = pipeline(store, feed, RelaySettings())
    arn = await stream_arn(store._client, store.table)
    checkpoints = RedisCheckpoints(redis, arn)
    a = await exam_in(store, S.COMPLETED)
    b = await exam_in(store, S.ARRIVED)
    c = await exam_in(store, S.SCHEDULED)
    kept = await exam_in(store, S.IN_PROGRESS)
    other = await exam_in(store, S.COMPLETED, tenant="acme", site="AC-1")

    def relay_over(client: Any) -> StreamRelay:
        return StreamRelay(
            client,
            arn,
            line.sink,
            checkpoints,
            poll_interval=0.02,
            on_gap=gap_handler(store, feed, line),
            dead_letters=line.dead_letters,
        )

    task = await _run(relay_over(streams))
    await eventually(
        lambda: _equal(feed, "northwind", truth(a, b, c, kept)), 20, "the first relay's cache"
    )
    await _stop(task)
    epochs = {t: await redis.get(keys.epoch(t)) for t in ("northwind", "acme")}

    # The relay is away; meanwhile exams move on, and those records age out.
    a = await store.transition(a.patient_id, a.accession, S.FINAL)
    b = await store.transition(b.patient_id, b.accession, S.CANCELLED)
    await delete_study(store, c)
    d = await exam_in(store, S.COMPLETED)
    other = await store.transition(other.patient_id, other.accession, S.CANCELLED)
    _, _, horizon = await stream_end(dynamo_settings)

    trimmed = Trimmed(streams, horizon)
    task = await _run(relay_over(trimmed))
    try:
        await eventually(
            lambda: _equal(feed, "northwind", truth(a, b, kept, d)), 20, "northwind converged"
        )
        await eventually(lambda: _equal(feed, "acme", truth(other)), 20, "acme converged")
        after = await exam_in(store, S.SCHEDULED)  # and the relay reads on
        await eventually(
            lambda: _equal(feed, "northwind", truth(a, b, kept, d, after)), 20, "live again"
        )
    finally:
        await _stop(task)
    assert trimmed.refused >= 1
    for tenant, epoch in epochs.items():
        assert await redis.get(keys.epoch(tenant)) != epoch, f"{tenant}'s clients must reset"
        assert await feed.is_built(tenant)
    assert set(await cached(feed, view=_open())) == {kept.accession, d.accession, after.accession}


def _open() -> Any:
    from worklist_cache.views import View

    return View()


async def _equal(feed: WorklistFeed, tenant: str, want: dict[str, tuple[str, int]]) -> bool:
    return await cached(feed, tenant) == want


# ---- poison ------------------------------------------------------------------------


async def test_a_poison_record_is_parked_and_the_shard_keeps_flowing(
    store: ExamStore, redis: Redis, streams: Any, caplog: pytest.LogCaptureFixture
) -> None:
    """A hand-edited item with a state this build does not know: its record is parked
    as a dead record (keys and error, no values) and the records after it flow."""
    feed = WorklistFeed(redis)
    line = pipeline(store, feed, RelaySettings())
    arn = await stream_arn(store._client, store.table)
    first = await exam_in(store, S.COMPLETED)
    bad, _, _ = exam_bundle()
    item = exam_to_item(bad.model_copy(update={"patient_name": "SECRETNAME^PHI"}))
    item.update(status="ON_HOLD", GSI1PK=dkeys.gsi1_pk("northwind", S.COMPLETED))
    await store.call("put_item", TableName=store.table, Item=to_attrs(item))
    later = await exam_in(store, S.ARRIVED)

    relay = StreamRelay(
        streams,
        arn,
        line.sink,
        RedisCheckpoints(redis, arn),
        poll_interval=0.02,
        dead_letters=line.dead_letters,
    )
    caplog.set_level(logging.DEBUG, logger="dynamo")
    caplog.set_level(logging.DEBUG, logger="relay")
    caplog.set_level(logging.DEBUG, logger="worklist_cache")
    task = await _run(relay)
    try:
        await eventually(
            lambda: _equal(feed, "northwind", truth(first, later)), 20, "the records after it"
        )
    finally:
        await _stop(task)
    assert relay.records_parked == 1 and relay.reader_failures == 0
    resp = await store.call(
        "query",
        TableName=store.table,
        KeyConditionExpression="PK = :pk",
        ExpressionAttributeValues={":pk": {"S": dkeys.RELAY_DEAD_PK}},
    )
    (dead,) = [from_attrs(i) for i in resp["Items"]]
    assert dead["item_keys"] == {"PK": item["PK"], "SK": item["SK"]}
    assert "enum@status" in dead["problem"] and dead["expires_at"] > 0
    assert "SECRETNAME" not in json.dumps(dead)
    # The project's own logs (botocore's DEBUG bodies are silenced by service.logs).
    ours = [r for r in caplog.records if r.name.startswith(("dynamo", "relay", "worklist_cache"))]
    logged = "\n".join(r.getMessage() + str(r.exc_info or "") for r in ours)
    assert "parking stream record" in logged
    assert "SECRETNAME" not in logged and "input_value" not in logged


# ---- two readers of one shard -------------------------------------------------------


class WithParent(Wrapped):
    """The real shard shown as the child of a closed, already empty parent (a shard
    split's lineage, which DynamoDB Local never makes)."""

    PARENT = "shardId-parent-closed"

    def __init__(self, real: Any) -> None:
        super().__init__(real)
        self.iterators: collections.Counter[str] = collections.Counter()
        self.parent_drained = False
        self._held: list[asyncio.Future[None]] = []

    async def describe_stream(self, **kw: Any) -> Any:
        resp = await self._real.describe_stream(**kw)
        if self.parent_drained:
            # The first discoveries after the parent ends meet here, answer in hand: if two
            # run at once (the drained reader's and the loop's), they go on together. A
            # relay that discovers one at a time passes alone after the wait.
            held = asyncio.get_running_loop().create_future()
            self._held.append(held)
            if len(self._held) >= 2:
                for f in self._held:
                    if not f.done():
                        f.set_result(None)
            with contextlib.suppress(TimeoutError):
                await asyncio.wait_for(asyncio.shield(held), 0.5 * UNIT)
        shards = [dict(s, ParentShardId=self.PARENT) for s in resp["StreamDescription"]["Shards"]]
        shards.append({"ShardId": self.PARENT, "SequenceNumberRange": {}})
        return {"StreamDescription": dict(resp["StreamDescription"], Shards=shards)}

    async def get_shard_iterator(self, **kw: Any) -> Any:
        self.iterators[kw["ShardId"]] += 1
        if kw["ShardId"] == self.PARENT:
            return {"ShardIterator": "parent"}
        return await self._real.get_shard_iterator(**kw)

    async def get_records(self, **kw: Any) -> Any:
        if kw["ShardIterator"] == "parent":
            self.parent_drained = True
            return {"Records": []}  # closed and drained: no next iterator
        return await self._real.get_records(**kw)


async def test_a_child_shard_gets_exactly_one_reader(
    store: ExamStore, redis: Redis, streams: Any
) -> None:
    arn = await stream_arn(store._client, store.table)
    feed = WorklistFeed(redis)
    exam = await exam_in(store, S.ARRIVED)
    lineage = WithParent(streams)
    relay = StreamRelay(
        lineage,
        arn,
        feed,
        RedisCheckpoints(redis, arn),
        poll_interval=0.02,
        discover_interval=0.05,
        lease_interval=0.05,
    )
    task = await _run(relay)
    try:
        await eventually(lambda: _equal(feed, "northwind", truth(exam)), 20, "the child's records")
        await asyncio.sleep(1.0 * UNIT)  # many discoveries later
        readers = [t for t in asyncio.all_tasks() if t.get_name().startswith("shard:")]
    finally:
        await _stop(task)
    (child,) = [s for s in lineage.iterators if s != WithParent.PARENT]
    assert lineage.iterators[child] == 1, "a second reader opened the child shard"
    assert [t.get_name() for t in readers] == [f"shard:{child}"]


# ---- Redis lost -------------------------------------------------------------------


async def test_after_redis_restarts_empty_the_replay_changes_nothing(
    store: ExamStore, dynamo_settings: DynamoSettings
) -> None:
    """Redis dies and comes back empty; the worker is redeployed too, so its relay has
    no checkpoint and replays the stream from its trim horizon. Every tenant is rebuilt
    from DynamoDB before anything else is applied: no older version than DynamoDB held
    at the restart ever enters the new cache, and closed exams are kept."""
    proc, url = start_redis()
    port = int(url.rsplit(":", 1)[1].split("/")[0])
    env = {
        "REDIS_URL": url,
        "DYNAMO_ENDPOINT_URL": dynamo_settings.endpoint_url,
        "DYNAMO_TABLE": dynamo_settings.table,
        "RELAY_POLL_INTERVAL": "0.02",
        "RELAY_LEASE_SECONDS": "1.5",
        "RELAY_DISCOVER_INTERVAL": "0.3",
        "RELAY_REAP_INTERVAL": "0.3",
    }

    def spawn() -> ManagedProcess:
        return ManagedProcess("relay", [sys.executable, "-m", "relay"], env=env, cwd=ROOT)

    exams = [await exam_in(store, s) for s in (S.ARRIVED, S.COMPLETED, S.FINAL, S.CANCELLED)]
    exams.append(await exam_in(store, S.FINAL, tenant="acme", site="AC-1"))
    worker = spawn()
    redis = Redis.from_url(url)
    proc2 = None
    try:
        feed = WorklistFeed(redis)
        want = truth(*exams[:4])
        await eventually(lambda: _equal(feed, "northwind", want), 30, "the first cache")
        worker.stop()
        proc.stop()  # Redis loses everything: cache, history, checkpoints, `built`
        proc2, _ = await asyncio.to_thread(start_redis, port)
        worker = spawn()
        await redis.aclose()
        redis = Redis.from_url(url)
        feed = WorklistFeed(redis)
        await eventually(lambda: _equal(feed, "northwind", want), 30, "northwind rebuilt")
        await eventually(lambda: _equal(feed, "acme", truth(exams[4])), 30, "acme rebuilt")
        await eventually(feed.relay_alive, 10, "the relay reading")
        await asyncio.sleep(1.0 * UNIT)  # the replay of the whole stream is done by now
        newest = {e.accession: e.version for e in exams}
        for tenant in ("northwind", "acme"):
            for _, fields in await redis.xrange(keys.feed(tenant)):
                delta = orjson.loads(fields[b"d"])
                assert delta["version"] == newest[delta["exam_id"]], (
                    f"an older version of {delta['exam_id']} was applied: {delta['version']}"
                )
        assert await feed.is_built("northwind") and await feed.is_built("acme")
    finally:
        worker.stop()
        await redis.aclose()
        if proc2 is not None:
            proc2.stop()
        proc.stop()


# ---- Lambda ------------------------------------------------------------------------


async def test_the_lambda_handler_pools_peer_reviews_like_the_worker(
    store: ExamStore, redis: Redis, redis_url: str, streams: Any, dynamo_settings: DynamoSettings
) -> None:
    """Records read from DynamoDB Local's stream, delivered as Lambda delivers them."""
    exam = await exam_in(store, S.FINAL)
    arn = await stream_arn(store._client, store.table)
    shard = (await streams.describe_stream(StreamArn=arn))["StreamDescription"]["Shards"][0]
    it = await streams.get_shard_iterator(
        StreamArn=arn, ShardId=shard["ShardId"], ShardIteratorType="TRIM_HORIZON"
    )
    records = (await streams.get_records(ShardIterator=it["ShardIterator"]))["Records"]
    event = {
        "Records": [
            {**r, "eventSourceARN": arn, "eventSource": "aws:dynamodb", "awsRegion": "us-east-1"}
            for r in json.loads(json.dumps(records, default=lambda d: int(d.timestamp())))
        ]
    }
    env = _lambda_env(redis_url, dynamo_settings, RELAY_REVIEW_RATE="1.0")
    result = await asyncio.to_thread(_with_env, env, handler, event, None)
    assert result == {"batchItemFailures": []}
    review = await ReviewStore(store).get("northwind", exam.accession)
    assert review.state is ReviewState.POOLED
    assert (await WorklistFeed(redis).row("northwind", exam.accession))["status"] == "FINAL"


# ---- maintenance -------------------------------------------------------------------


async def test_maintenance_outlives_a_fault_redis_py_does_not_call_a_redis_error(
    store: ExamStore, redis: Redis
) -> None:
    """While a cluster master restarts, redis-py's cluster client raises
    `SlotNotCoveredError`, which is no `RedisError`. The maintenance loop (cache builds,
    the claim reaper) runs in one task group with the stream's readers: one escaped
    exception would have ended the whole relay, silently. It logs, counts and goes on."""
    exam = await exam_in(store, S.SCHEDULED)
    feed = WorklistFeed(redis)
    line = pipeline(store, feed, RelaySettings())
    build = line.rebuilder.ensure_built
    raised: list[str] = []

    async def flaky(tenant: str) -> Any:
        if len(raised) < 2:
            raised.append(tenant)
            raise SlotNotCoveredError("slot not covered")  # (as a restarting master)
        return await build(tenant)

    line.rebuilder.ensure_built = flaky  # type: ignore[method-assign]
    counts: collections.Counter[str] = collections.Counter()
    task = asyncio.create_task(maintain_forever(Claims(store), line, feed, 0.05, counts))
    try:

        async def built() -> bool:
            return await feed.is_built(exam.tenant)

        await eventually(built, 20, "the tenant built after the faults")
        assert not task.done(), "the loop is still running"
        assert counts["maintenance_failures"] == 2
    finally:
        task.cancel()
        await asyncio.gather(task, return_exceptions=True)
