"""Resume and snapshot replay keep every guarantee the live path keeps: a scoped user
is sent nothing outside their scope, a leave names only the exam, the last frame per
exam leaves the client where the live path would, nothing is repeated after the
announced position, a leave published mid-resume is never lost, and a large gap is a
reset snapshot, never an eviction."""

from __future__ import annotations

import asyncio
import random
from typing import Any

import pytest
from redis.asyncio import Redis

from dynamo.deltas import ExamDelta
from dynamo.states import ExamStatus
from dynamo.store import ExamStore
from gateway.context import REGISTRY_MISS_S
from tests.conftest import UNIT, Stack, token
from tests.support.exams import exam_bundle, exam_in
from tests.support.wsclient import Frame, WsClient
from worklist_cache import WorklistFeed
from worklist_cache.feed import offset_key

S = ExamStatus
PHI = ("patient_name", "mrn", "procedure", "site", "claimed_by", "claimed_by_name")


@pytest.fixture
def gateway_overrides() -> dict[str, Any]:
    return {"client_queue": 60}


class Mirror:
    """What a careful client shows for one subscription: the snapshot's rows, then
    every frame applied by the protocol's rules (versions never go back)."""

    def __init__(self, sub: str) -> None:
        self.sub = sub
        self.rows: dict[str, dict[str, Any]] = {}
        self.position: tuple[str, str] | None = None
        self.floor: tuple[int, int] | None = None
        self.repeats: list[str] = []

    def apply(self, frame: Frame) -> None:
        if frame.get("type") == "snapshot" and frame.get("sub") == self.sub:
            self.rows = {r["exam_id"]: r for r in frame["rows"]}
            self.position = (frame["epoch"], frame["offset"])
            self.floor = offset_key(frame["offset"])
        elif frame.get("type") == "resumed" and frame.get("sub") == self.sub:
            if self.position is not None:  # what comes next is after where it resumed
                self.floor = offset_key(self.position[1])
            self.position = (frame["epoch"], frame.get("offset", self.position[1]))
        elif frame.get("type") == "delta" and frame.get("sub") == self.sub:
            if self.floor is not None and offset_key(frame["offset"]) <= self.floor:
                self.repeats.append(frame["offset"])
            d = frame["delta"]
            known = self.rows.get(d["exam_id"])
            if known is not None and known["version"] >= d["version"]:
                return
            if frame.get("leave") or d.get("op") == "remove":
                self.rows.pop(d["exam_id"], None)
            else:
                self.rows[d["exam_id"]] = d
            self.position = (frame["epoch"], frame["offset"])

    def feed(self, client: WsClient, start: int = 0) -> int:
        for frame in client.frames[start:]:
            self.apply(frame)
        return len(client.frames)


async def drain(client: WsClient, quiet: float = 0.4) -> None:
    """Read until nothing arrives for `quiet` seconds."""
    try:
        while True:
            await client.next(quiet)
    except TimeoutError:
        return


async def truth(stack: Stack, tok: str, **view: Any) -> dict[str, int]:
    """What a fresh subscription shows now: exam id -> version."""
    fresh = await WsClient.open(stack.ws_url, tok)
    snap = await fresh.subscribe("truth", **view)
    await fresh.close()
    return {r["exam_id"]: r["version"] for r in snap["rows"]}


def position_of(mirror: Mirror) -> dict[str, str]:
    assert mirror.position is not None
    return {"epoch": mirror.position[0], "offset": mirror.position[1]}


async def test_resume_sends_a_scoped_user_nothing_outside_their_scope(
    stack: Stack, store: ExamStore
) -> None:
    scoped = token("t-gen", sites=("NW-GEN",), subspecialties=("neuro",))
    mine = await exam_in(store, S.SCHEDULED, site="NW-GEN", subspecialty="neuro")
    client = await WsClient.open(stack.ws_url, scoped)
    mirror = Mirror("s")
    mirror.apply(await client.subscribe("s", statuses=[]))
    await drain(client)
    mirror.feed(client)
    await client.close()

    # While away: exams at another site and of another subspecialty come and go
    # (one finalized, one cancelled), and one of the user's own moves on.
    elsewhere = [
        await exam_in(store, S.FINAL, site="NW-ORT", subspecialty="neuro"),
        await exam_in(store, S.CANCELLED, site="NW-GEN", subspecialty="msk"),
        await exam_in(store, S.ARRIVED, site="NW-ORT", subspecialty="msk"),
    ]
    moved = await store.transition(mine.patient_id, mine.accession, S.ARRIVED)
    watcher = await WsClient.open(stack.ws_url, token("t-all"))
    seen = await watcher.subscribe("w", statuses=[])
    if {r["exam_id"]: r["version"] for r in seen["rows"]}.get(moved.accession) != moved.version:
        await watcher.until(lambda f: (f.get("delta") or {}).get("version") == moved.version)

    back = await WsClient.open(stack.ws_url, scoped)
    await back.send(
        {"type": "subscribe", "id": "s", "view": {"statuses": []}, "since": position_of(mirror)}
    )
    resumed = await back.until(lambda f: f.get("id") == "s")
    assert resumed["type"] == "resumed", resumed
    await drain(back)
    text = str(back.frames)
    for exam in elsewhere:
        assert exam.accession not in text, "an exam outside the user's scope was named"
        assert exam.mrn not in text
    frames = [f for f in back.frames if f.get("type") == "delta"]
    assert any(
        f["delta"]["exam_id"] == mine.accession and f["delta"]["version"] == moved.version
        for f in frames
    )


async def test_a_leave_on_resume_carries_no_patient_data_and_the_last_frame_wins(
    stack: Stack, store: ExamStore
) -> None:
    """A "my reads" view that went claim, release, claim, release while away ends
    without the exam, and the leave names only the exam."""
    client = await WsClient.open(stack.ws_url, token("t-ana"))
    mirror = Mirror("mine")
    mirror.apply(await client.subscribe("mine", claimed_by_me=True))
    exam = await exam_in(store, S.COMPLETED)
    claimed = await client.request({"type": "claim", "exam_id": exam.accession})
    await client.until(lambda f: (f.get("delta") or {}).get("version") == claimed["version"])
    mirror.feed(client)
    assert exam.accession in mirror.rows
    await client.close()

    other_tab = await WsClient.open(stack.ws_url, token("t-ana"))
    for _ in range(2):
        await other_tab.request({"type": "release", "exam_id": exam.accession})
        await other_tab.request({"type": "claim", "exam_id": exam.accession})
    released = await other_tab.request({"type": "release", "exam_id": exam.accession})
    assert released["type"] == "released"
    await asyncio.sleep(0.3 * UNIT)  # the relay's copies arrive and are dropped as repeats

    back = await WsClient.open(stack.ws_url, token("t-ana"))
    await back.send(
        {
            "type": "subscribe",
            "id": "mine",
            "view": {"claimed_by_me": True},
            "since": position_of(mirror),
        }
    )
    resumed = await back.until(lambda f: f.get("id") == "mine")
    assert resumed["type"] == "resumed", resumed
    await drain(back)
    mirror.feed(back)
    assert exam.accession not in mirror.rows, "the exam stayed on 'my reads' after release"
    leaves = [f for f in back.frames if f.get("leave")]
    assert leaves and all(set(f["delta"]) == {"exam_id", "version"} for f in leaves)
    assert all(not any(k in f["delta"] for k in PHI) for f in leaves)


async def test_live_leaves_name_only_the_exam(stack: Stack, store: ExamStore) -> None:
    client = await WsClient.open(stack.ws_url)
    await client.subscribe("s")
    exam = await exam_in(store, S.COMPLETED)
    await client.until(lambda f: (f.get("delta") or {}).get("exam_id") == exam.accession)
    final = await store.transition(exam.patient_id, exam.accession, S.CANCELLED)
    left = await client.until(lambda f: bool(f.get("leave")))
    assert left["delta"] == {"exam_id": exam.accession, "version": final.version}


async def test_a_gap_larger_than_the_queue_is_a_reset_snapshot_not_an_eviction(
    stack: Stack, redis: Redis
) -> None:
    feed = WorklistFeed(redis)
    client = await WsClient.open(stack.ws_url)
    snap = await client.subscribe("s")
    position = {"epoch": snap["epoch"], "offset": snap["offset"]}
    await client.close()
    exam, _, _ = exam_bundle()
    base = ExamDelta.from_exam(exam)
    await feed.publish([base.model_copy(update={"exam_id": f"BIG{i:04d}"}) for i in range(200)])

    for _ in range(3):  # the same resume, again and again: never a loop of evictions
        back = await WsClient.open(stack.ws_url)
        await back.send({"type": "subscribe", "id": "s", "since": position})
        reply = await back.until(lambda f: f.get("id") == "s")
        assert reply["type"] == "snapshot" and reply["reset"] is True
        assert reply["total"] == 200
        assert (await back.request({"type": "ping"}))["type"] == "pong", "still connected"
        await back.close()


async def test_a_resume_storm_under_writes_converges_with_no_repeats(
    stack: Stack, redis: Redis
) -> None:
    """Clients resume while exams change, finalize and get cancelled; afterwards each
    one shows exactly what a fresh subscription shows, and no frame came at or before
    a position it had been told."""
    rng = random.Random(7)
    feed = WorklistFeed(redis)
    exam, _, _ = exam_bundle()
    base = ExamDelta.from_exam(exam)
    ids = [f"STORM{i:03d}" for i in range(40)]
    versions = dict.fromkeys(ids, 1)
    await feed.publish([base.model_copy(update={"exam_id": x}) for x in ids])

    async def churn(rounds: int) -> None:
        for _ in range(rounds):
            batch = []
            for x in rng.sample(ids, 8):
                versions[x] += 1
                status = rng.choice([S.ARRIVED, S.COMPLETED, S.FINAL, S.CANCELLED, S.SCHEDULED])
                batch.append(
                    base.model_copy(update={"exam_id": x, "version": versions[x], "status": status})
                )
            await feed.publish(batch)
            await asyncio.sleep(0.002)

    clients = [await WsClient.open(stack.ws_url, token(f"t-st{i}")) for i in range(16)]
    mirrors = [Mirror("s") for _ in clients]
    for client, mirror in zip(clients, mirrors, strict=True):
        mirror.apply(await client.subscribe("s"))
    await churn(5)
    for client, mirror in zip(clients, mirrors, strict=True):
        await drain(client, 0.2)
        mirror.feed(client)
        await client.close()
    await churn(5)  # while they are away

    async def come_back(i: int, mirror: Mirror) -> WsClient:
        back = await WsClient.open(stack.ws_url, token(f"t-st{i}"))
        await back.send({"type": "subscribe", "id": "s", "since": position_of(mirror)})
        return back

    async def newcomer(i: int) -> WsClient:
        fresh = await WsClient.open(stack.ws_url, token(f"t-new{i}"))
        await fresh.send({"type": "subscribe", "id": "s", "view": {}})
        return fresh

    writer = asyncio.create_task(churn(60))  # and while they resume (and others join)
    backs = await asyncio.gather(
        *(come_back(i, m) for i, m in enumerate(mirrors)), *(newcomer(i) for i in range(8))
    )
    await writer
    mirrors += [Mirror("s") for _ in range(8)]
    expected = await truth(stack, token("t-truth"))
    for back, mirror in zip(backs, mirrors, strict=True):
        await drain(back)
        mirror.feed(back)
        assert not mirror.repeats, f"frames at or before the announced position: {mirror.repeats}"
        assert {k: v["version"] for k, v in mirror.rows.items()} == expected


async def test_a_tenant_with_exams_is_not_served_until_its_cache_is_rebuilt(
    stack: Stack, store: ExamStore, redis: Redis
) -> None:
    """After Redis lost a tenant's worklists, a subscription is answered `unavailable`
    (never an empty or old list) until the rebuild from DynamoDB is done."""
    from relay.worker import rebuild

    exam = await exam_in(store, S.COMPLETED, tenant="lakeside", site="LK-MED")
    await store.register_tenant("lakeside")
    await redis.flushdb()  # the cache is gone; DynamoDB still holds the exam
    client = await WsClient.open(stack.ws_url, token("t-lk", tenant="lakeside"))
    refused = await client.subscribe("s")
    assert refused["type"] == "error" and refused["code"] == "unavailable", refused
    await rebuild(store, WorklistFeed(redis), "lakeside")
    snap = await client.subscribe("s")
    assert snap["type"] == "snapshot"
    assert [r["exam_id"] for r in snap["rows"]] == [exam.accession]


async def test_a_tenant_whose_first_exam_came_since_the_registry_was_read_is_not_served_empty(
    stack: Stack, store: ExamStore, redis: Redis
) -> None:
    """The gateway remembers which tenants have exams (DynamoDB's registry) and serves a
    tenant without any an empty list. A tenant that had none when the registry was read,
    then its first exam, then a Redis that lost its cache: its next subscription must
    not be an empty list served as the truth (the registry is read again)."""
    first = await WsClient.open(stack.ws_url, token("t-hb", tenant="harbor"))
    empty = await first.subscribe("s")
    assert empty["type"] == "snapshot" and empty["rows"] == [], "no exam yet: empty is true"
    exam = await exam_in(store, S.SCHEDULED, tenant="harbor", site="HB-1")
    await store.register_tenant("harbor")
    await first.until(lambda f: (f.get("delta") or {}).get("exam_id") == exam.accession, 10)
    await redis.flushdb()  # Redis restarted empty; DynamoDB holds the exam
    await asyncio.sleep(REGISTRY_MISS_S + 0.2)
    second = await WsClient.open(stack.ws_url, token("t-hb2", tenant="harbor"))
    reply = await second.subscribe("s")
    if reply["type"] == "snapshot":
        assert [r["exam_id"] for r in reply["rows"]] == [exam.accession], "not an empty list"
    else:
        assert reply["type"] == "error" and reply["code"] == "unavailable", reply
