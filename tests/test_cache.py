"""worklist_cache on a real redis-server: idempotent apply, indexed snapshots, history,
resume, sharded pub/sub, and recovery after Redis restarts empty."""

from __future__ import annotations

import asyncio
import itertools
import random
from collections.abc import AsyncIterator
from typing import Any

import orjson
import pytest
from hypothesis import HealthCheck, given, settings
from hypothesis import strategies as st
from redis.asyncio import Redis

from devstack import start_redis
from dynamo.deltas import ExamDelta
from dynamo.states import ExamStatus, Modality, Priority
from dynamo.store import ExamStore
from relay.worker import rebuild
from tests.conftest import UNIT
from tests.support.exams import exam_bundle, exam_in
from worklist_cache import FeedSubscriber, WorklistFeed, keys
from worklist_cache.feed import urgency_score
from worklist_cache.views import RowMatcher, View

_tenants = itertools.count(1)


def select_rows(
    rows: list[dict[str, Any]], match: RowMatcher, limit: int
) -> tuple[list[dict[str, Any]], int]:
    """The reference the Lua snapshot must equal: filter every row in Python, most
    urgent first, at most `limit`; and how many matched in all."""
    chosen = [r for r in rows if match(r)]
    chosen.sort(key=lambda r: (urgency_score(r["priority"], r["tat_due_at"]), r["exam_id"]))
    return chosen[:limit], len(chosen)


SITES = ["NW-GEN", "NW-ORT", "NW-IMG"]


def make_delta(tenant: str, exam: int, version: int, rng: random.Random) -> ExamDelta:
    base, _, _ = exam_bundle(tenant, rng.choice(SITES))
    return ExamDelta.from_exam(base).model_copy(
        update={
            "exam_id": f"E{exam}",
            "version": version,
            "status": rng.choice(list(ExamStatus)),
            "priority": rng.choice(list(Priority)),
            "modality": rng.choice(list(Modality)),
            "subspecialty": rng.choice(["neuro", "body", "msk"]),
            "tat_due_at": 1_800_000_000_000 + rng.randrange(10_000_000),
            "claimed_by": rng.choice([None, None, "u-ana", "u-ben"]),
            "op": "remove" if rng.random() < 0.1 else "upsert",
        }
    )


async def cache_state(redis: Redis, tenant: str) -> dict[str, Any]:
    """Everything a reader could observe: rows and the indexes."""
    rows = {
        k.decode(): orjson.loads(v) for k, v in (await redis.hgetall(keys.exams(tenant))).items()
    }
    indexes = {}
    for key in await redis.keys(keys.index(tenant, "*", "*")):
        members = await redis.zrange(key, 0, -1, withscores=True)
        if members:
            indexes[key.decode()] = [(m.decode(), s) for m, s in members]
    return {"rows": rows, "indexes": indexes}


@settings(
    max_examples=25,
    deadline=None,
    suppress_health_check=[HealthCheck.function_scoped_fixture, HealthCheck.too_slow],
)
@given(seed=st.integers(0, 10**6), exams=st.integers(1, 6), versions=st.integers(1, 6))
async def test_shuffled_and_repeated_deltas_converge_to_the_ordered_result(
    redis: Redis, seed: int, exams: int, versions: int
) -> None:
    rng = random.Random(seed)
    ordered_tenant, shuffled_tenant = f"o{next(_tenants)}", f"s{next(_tenants)}"
    history = [make_delta("x", e, v, rng) for e in range(exams) for v in range(1, versions + 1)]
    feed = WorklistFeed(redis)
    await feed.publish([d.model_copy(update={"tenant": ordered_tenant}) for d in history])
    chaos = history + rng.sample(history, k=len(history) // 2)  # repeats
    rng.shuffle(chaos)
    await feed.publish([d.model_copy(update={"tenant": shuffled_tenant}) for d in chaos])

    ordered = await cache_state(redis, ordered_tenant)
    shuffled = await cache_state(redis, shuffled_tenant)
    fix = lambda state, t: orjson.loads(orjson.dumps(state).replace(t.encode(), b"T"))  # noqa: E731
    assert fix(shuffled, shuffled_tenant) == fix(ordered, ordered_tenant)
    # Each exam holds its newest version (or is gone when the newest was a removal).
    for e in range(exams):
        newest = max((d for d in history if d.exam_id == f"E{e}"), key=lambda d: d.version)
        row = ordered["rows"].get(f"E{e}")
        assert (row is None) == (newest.op == "remove")
        assert row is None or row["version"] == newest.version
    # History holds each applied delta once: nothing applied twice.
    entries = await redis.xrange(keys.feed(shuffled_tenant))
    applied = [
        (orjson.loads(f[b"d"])["exam_id"], orjson.loads(f[b"d"])["version"]) for _, f in entries
    ]
    assert len(applied) == len(set(applied))


@settings(
    max_examples=20,
    deadline=None,
    suppress_health_check=[HealthCheck.function_scoped_fixture, HealthCheck.too_slow],
)
@given(
    seed=st.integers(0, 10**6),
    statuses=st.lists(st.sampled_from(list(ExamStatus)), max_size=3, unique=True),
    sites=st.lists(st.sampled_from(SITES), max_size=2, unique=True),
    modalities=st.lists(st.sampled_from(list(Modality)), max_size=2, unique=True),
    priorities=st.lists(st.sampled_from(list(Priority)), max_size=2, unique=True),
    subspecialties=st.lists(st.sampled_from(["neuro", "body", "msk"]), max_size=2, unique=True),
    mine=st.booleans(),
    limit=st.integers(1, 40),
)
async def test_indexed_snapshots_match_the_view_exactly(
    redis: Redis,
    seed: int,
    statuses: list[ExamStatus],
    sites: list[str],
    modalities: list[Modality],
    priorities: list[Priority],
    subspecialties: list[str],
    mine: bool,
    limit: int,
) -> None:
    """What the Lua snapshot returns equals filtering and sorting every row in Python."""
    rng = random.Random(seed)
    tenant = f"v{next(_tenants)}"
    deltas = [make_delta(tenant, e, v, rng) for e in range(40) for v in (1, 2)]
    feed = WorklistFeed(redis)
    await feed.publish(deltas)
    view = View(
        statuses=statuses,
        sites=sites,
        modalities=modalities,
        priorities=priorities,
        subspecialties=subspecialties,
        claimed_by_me=mine,
    )
    snap = await feed.snapshot(tenant, view, me="u-ana", limit=limit)
    everything = [orjson.loads(v) for v in (await redis.hgetall(keys.exams(tenant))).values()]
    expected, total = select_rows(everything, view.matcher("u-ana"), limit)
    assert snap.total == total
    assert [r["exam_id"] for r in snap.rows] == [r["exam_id"] for r in expected]


async def test_a_snapshot_taken_while_deltas_flow_plus_later_deltas_equals_the_cache(
    redis: Redis,
) -> None:
    tenant = f"l{next(_tenants)}"
    feed = WorklistFeed(redis)
    rng = random.Random(3)
    seen: list[dict[str, Any]] = []
    pubsub = redis.pubsub()
    await pubsub.subscribe(keys.channel(tenant))

    async def collect() -> None:
        async for message in pubsub.listen():
            if message["type"] == "message":
                seen.append(orjson.loads(message["data"]))

    collector = asyncio.create_task(collect())

    async def writer() -> None:
        for i in range(1000):
            await feed.publish([make_delta(tenant, rng.randrange(30), i + 1, rng)])

    writing = asyncio.create_task(writer())
    await asyncio.sleep(0.05)
    snap = await feed.snapshot(tenant, View(statuses=[]), limit=10_000)
    await writing
    final_offset = (await feed.snapshot(tenant, View(statuses=[]), limit=1)).offset
    for _ in range(int(200 * UNIT)):  # until the collector has heard the last delta
        if seen and seen[-1]["offset"] == final_offset:
            break
        await asyncio.sleep(0.01)
    collector.cancel()
    await asyncio.gather(collector, return_exceptions=True)
    await pubsub.aclose()

    view = {r["exam_id"]: r for r in snap.rows}
    after = tuple(map(int, snap.offset.split("-")))
    for message in seen:
        if tuple(map(int, message["offset"].split("-"))) <= after:
            continue
        delta = message["delta"]
        if delta["op"] == "remove":
            view.pop(delta["exam_id"], None)
        else:
            view[delta["exam_id"]] = delta
    final = await feed.snapshot(tenant, View(statuses=[]), limit=10_000)
    assert view == {r["exam_id"]: r for r in final.rows}
    assert snap.offset != final.offset, "the snapshot was taken while deltas flowed"


async def test_since_gives_exactly_the_missing_deltas_or_a_reset(redis: Redis) -> None:
    tenant = f"r{next(_tenants)}"
    feed = WorklistFeed(redis, maxlen=5)
    rng = random.Random(4)
    offsets: list[str] = []
    for v in range(1, 21):
        (offset,) = await feed.publish([make_delta(tenant, v % 4, v, rng)])
        assert offset is not None
        offsets.append(offset)
    snap = await feed.snapshot(tenant)
    missed = await feed.since(tenant, snap.epoch, offsets[14])
    assert not missed.reset
    assert [o for o, _ in missed.entries] == offsets[15:]
    assert (await feed.since(tenant, snap.epoch, offsets[-1])).entries == []
    assert (await feed.since(tenant, "another-epoch", offsets[14])).reset
    # Trimmed: approximate MAXLEN drops whole nodes of ~100 entries.
    for v in range(21, 400):
        await feed.publish([make_delta(tenant, v % 4, v, rng)])
    assert (await feed.since(tenant, snap.epoch, offsets[0])).reset
    assert (await feed.since(tenant, snap.epoch, offsets[14], limit=3)).reset  # too many


async def test_sharded_pub_sub_delivers_the_feed(redis: Redis) -> None:
    tenant = f"h{next(_tenants)}"
    got: list[bytes] = []

    async def on_gap() -> None:
        pass

    async with FeedSubscriber(redis, on_gap, sharded=True) as subscriber:
        await subscriber.subscribe(keys.channel(tenant), got.append)
        feed = WorklistFeed(redis, sharded=True)
        await feed.publish([make_delta(tenant, 1, 1, random.Random(1))])
        for _ in range(100):
            if got:
                break
            await asyncio.sleep(0.02)
    assert len(got) == 1 and orjson.loads(got[0])["delta"]["exam_id"] == "E1"


@pytest.fixture
async def private_redis() -> AsyncIterator[tuple[Any, str]]:
    proc, url = start_redis()
    try:
        yield proc, url
    finally:
        proc.stop()


async def test_after_redis_restarts_empty_the_epoch_changes_and_dynamodb_refills_it(
    store: ExamStore, private_redis: tuple[Any, str]
) -> None:
    proc, url = private_redis
    port = int(url.rsplit(":", 1)[1].split("/")[0])
    open_exam = await exam_in(store, ExamStatus.COMPLETED)
    done = await exam_in(store, ExamStatus.FINAL)
    redis = Redis.from_url(url)
    feed = WorklistFeed(redis)
    await rebuild(store, feed, "northwind")
    before = await feed.snapshot("northwind")
    assert [r["exam_id"] for r in before.rows] == [open_exam.accession]
    assert await feed.is_built("northwind")

    proc.stop()  # a real restart of the server, which keeps nothing on disk
    proc2, _ = start_redis(port=port)
    try:
        await redis.aclose()
        redis = Redis.from_url(url)
        feed = WorklistFeed(redis)
        assert not await feed.is_built("northwind")
        assert (await feed.since("northwind", before.epoch, before.offset)).reset
        await rebuild(store, feed, "northwind")
        after = await feed.snapshot("northwind")
        assert after.epoch != before.epoch
        assert [r["exam_id"] for r in after.rows] == [open_exam.accession]
        assert after.rows[0]["version"] == open_exam.version
        assert done.accession not in {r["exam_id"] for r in after.rows}
    finally:
        await redis.aclose()
        proc2.stop()


async def test_a_burst_of_first_subscriptions_all_get_their_messages(redis: Redis) -> None:
    """Many tenants' first clients at once (a cold-start storm): every channel is
    confirmed and delivers (redis-py's PubSub alone can lose all but one)."""
    got: dict[str, list[bytes]] = {}

    async def on_gap() -> None:
        pass

    fresh = Redis.from_url(_url(redis))  # a new client: its PubSub has not connected yet
    async with FeedSubscriber(fresh, on_gap) as sub:
        channels = [keys.channel(f"storm{i}") for i in range(10)]
        await asyncio.gather(
            *(sub.subscribe(c, got.setdefault(c, []).append, timeout=5.0) for c in channels)
        )
        for c in channels:
            await redis.publish(c, b"x")
        for _ in range(100):
            if all(got[c] for c in channels):
                break
            await asyncio.sleep(0.02)
    await fresh.aclose()
    assert all(got[c] == [b"x"] for c in channels)


def _url(redis: Redis) -> str:
    kw = redis.get_connection_kwargs()
    return f"redis://{kw.get('host', '127.0.0.1')}:{kw.get('port', 6379)}/{kw.get('db', 0)}"
