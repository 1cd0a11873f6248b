"""The product on a real Redis Cluster (three masters started by `devstack.cluster`) with
sharded pub/sub: the relay worker and a gateway in-process, two tenants whose slots are
on different masters. Snapshot, live deltas, claims, presence and resume work as on one
Redis; every key of a tenant is in one slot; a master that restarts (its data gone) is a
gap every client recovers from, ending with what DynamoDB holds."""

from __future__ import annotations

import asyncio
import contextlib
from collections.abc import AsyncIterator, Iterator
from dataclasses import dataclass
from typing import Any

import pytest
from redis.asyncio import Redis
from redis.asyncio.cluster import RedisCluster
from redis.crc import key_slot

from devstack import free_port
from devstack.cluster import RedisClusterProcs, start_redis_cluster
from dynamo.models import Exam
from dynamo.settings import DynamoSettings
from dynamo.states import ExamStatus
from dynamo.store import ExamStore
from gateway.app import create_app
from gateway.settings import GatewaySettings
from relay.worker import RelaySettings, run_relay
from tests.conftest import SECRET, UNIT, _serve, token
from tests.support.exams import exam_in
from tests.support.rebuild import eventually
from tests.support.wsclient import Frame, WsClient
from worklist_cache import CacheSettings, WorklistFeed, connect, keys

pytestmark = pytest.mark.slow

S = ExamStatus
SITE = "NW-GEN"


@pytest.fixture(scope="module")
def cluster() -> Iterator[RedisClusterProcs]:
    procs = start_redis_cluster()
    try:
        yield procs
    finally:
        procs.stop()


def two_tenants(cluster: RedisClusterProcs) -> dict[str, int]:
    """Two tenant codes whose slots are served by different masters: code -> port."""
    found: dict[int, str] = {}
    for i in range(100):
        code = f"clinic{i}"
        found.setdefault(cluster.port_of_slot(key_slot(code.encode())), code)
        if len(found) == 2:
            return {code: port for port, code in found.items()}
    raise AssertionError("no two tenants on two masters")


@dataclass
class ClusterStack:
    ws_url: str
    redis: RedisCluster
    feed: WorklistFeed
    tenants: dict[str, int]  # tenant -> the port of the master holding its slot


@pytest.fixture
async def cstack(
    cluster: RedisClusterProcs, dynamo_settings: DynamoSettings
) -> AsyncIterator[ClusterStack]:
    client = connect(cluster.url, cluster=True)
    assert isinstance(client, RedisCluster)
    await client.flushall()
    cache = CacheSettings(redis_url=cluster.url, redis_cluster=True, pubsub="sharded")
    relay = asyncio.create_task(
        run_relay(
            RelaySettings(
                reap_interval=0.5, antientropy_interval=0, discover_interval=1.0, lease_seconds=3
            ),
            dynamo_settings,
            cache,
        )
    )
    port = free_port()
    settings = GatewaySettings(
        port=port, jwt_secret=SECRET, drain_seconds=0.2, pubsub_probe_seconds=1.0
    )
    server, served = await _serve(create_app(settings, cache, dynamo_settings), port, settings)
    try:
        yield ClusterStack(
            f"ws://127.0.0.1:{port}/ws",
            client,
            WorklistFeed(client, sharded=True),
            two_tenants(cluster),
        )
    finally:
        server.should_exit = True
        await asyncio.wait_for(served, 10 * UNIT)
        # The relay task never ends on its own: one that did died of a fault.
        died = relay.done() and not relay.cancelled() and relay.exception()
        relay.cancel()
        await asyncio.gather(relay, return_exceptions=True)
        await client.aclose()
        assert not died, f"the relay task ended: {died!r}"


class Rows:
    """What a careful client shows for one subscription (the protocol's rules)."""

    def __init__(self, sub: str) -> None:
        self.sub = sub
        self.rows: dict[str, int] = {}
        self.resets = 0

    def follow(self, frames: list[Frame]) -> dict[str, int]:
        self.rows, self.resets = {}, 0
        for f in frames:
            if f.get("type") == "snapshot" and self.sub in (f.get("sub"), f.get("id")):
                self.rows = {r["exam_id"]: r["version"] for r in f["rows"]}
                self.resets += 1
            elif f.get("type") == "delta" and f.get("sub") == self.sub:
                d = f["delta"]
                if self.rows.get(d["exam_id"], 0) >= d["version"]:
                    continue
                if f.get("leave") or d.get("op") == "remove":
                    self.rows.pop(d["exam_id"], None)
                else:
                    self.rows[d["exam_id"]] = d["version"]
        return self.rows


async def subscribe(client: WsClient, sub: str = "s") -> Frame:
    """Subscribe, again while the worker is still building the tenant (`unavailable`)."""
    for _ in range(int(40 * UNIT)):
        reply = await client.subscribe(sub)
        if reply.get("code") != "unavailable":
            return reply
        await asyncio.sleep(0.25)
    raise AssertionError("the tenant was never built")


async def seen(client: WsClient, predicate: Any, timeout: float = 10) -> Frame:
    """The first frame matching `predicate`, among those already read or still to come
    (a presence diff and a delta may arrive in either order)."""
    for frame in client.frames:
        if predicate(frame):
            return frame
    return await client.until(predicate, timeout=timeout)


async def settle(client: WsClient, quiet: float = 0.3) -> None:
    with contextlib.suppress(TimeoutError):
        while True:
            await client.next(quiet)


def delta_of(exam: Exam) -> Any:
    def match(f: Frame) -> bool:
        d = f.get("delta") or {}
        return d.get("exam_id") == exam.accession and d.get("version") == exam.version

    return match


async def open_exams(feed: WorklistFeed, tenant: str) -> dict[str, int]:
    snap = await feed.snapshot(tenant, limit=10_000)
    return {r["exam_id"]: r["version"] for r in snap.rows}


async def test_a_gateway_on_a_cluster_serves_two_tenants_from_two_masters(
    cstack: ClusterStack, cluster: RedisClusterProcs, store: ExamStore
) -> None:
    (north, north_port), (south, south_port) = cstack.tenants.items()
    assert north_port != south_port
    # Every key and channel of a tenant is in the slot of its hash tag (one node).
    for tenant in (north, south):
        names = [
            keys.exams(tenant),
            keys.versions(tenant),
            keys.feed(tenant),
            keys.epoch(tenant),
            keys.sites(tenant),
            keys.closed(tenant),
            keys.built(tenant),
            keys.rebuilding(tenant),
            keys.presence(tenant),
            keys.reviews(tenant),
            keys.index(tenant, "SCHEDULED", SITE),
            keys.channel(tenant),
            keys.presence_channel(tenant),
            keys.directory_channel(tenant),
        ]
        slots = {cluster.keyslot(name) for name in names}
        assert slots == {key_slot(tenant.encode())}, tenant
    arn, shard = "arn:aws:dynamodb:local:000:table/t/stream/x", "shardId-1"
    assert cluster.keyslot(keys.relay_lease(arn, shard)) == cluster.keyslot(
        keys.relay_checkpoint(arn)
    )

    ana = await WsClient.open(cstack.ws_url, token("c-ana", name="Dr. Ana", tenant=north))
    ben = await WsClient.open(cstack.ws_url, token("c-ben", name="Dr. Ben", tenant=north))
    zed = await WsClient.open(cstack.ws_url, token("c-zed", name="Dr. Zed", tenant=south))
    for client in (ana, ben, zed):
        snap = await subscribe(client)
        assert snap["type"] == "snapshot", snap

    # Live deltas, published by the apply script on each tenant's own master.
    n1 = await exam_in(store, S.COMPLETED, tenant=north, site=SITE)
    s1 = await exam_in(store, S.SCHEDULED, tenant=south, site=SITE)
    await seen(ben, delta_of(n1))
    await seen(zed, delta_of(s1))
    for port, tenant, exam in ((north_port, north, n1), (south_port, south, s1)):
        node = Redis(port=port)
        assert await node.hexists(keys.exams(tenant), exam.accession), "on its own master"
        await node.aclose()

    # A claim is seen by the other reader of the tenant, and only there.
    claimed = await ana.request({"type": "claim", "exam_id": n1.accession})
    assert claimed["type"] == "claimed", claimed
    lock = await seen(
        ben,
        lambda f: (
            (f.get("delta") or {}).get("exam_id") == n1.accession
            and f["delta"]["version"] == claimed["version"]
        ),
    )
    assert lock["delta"]["claimed_by"] == "c-ana"
    conflict = await ben.request({"type": "claim", "exam_id": n1.accession})
    assert conflict["code"] == "conflict"

    # Presence, per tenant, across the cluster.
    await seen(
        ben,
        lambda f: (
            f["type"] == "presence_diff"
            and any(u["sub"] == "c-ana" and u["reading"] == [n1.accession] for u in f["joins"])
        ),
    )
    state = await zed.request({"type": "presence"})
    assert [u["sub"] for u in state["users"]] == ["c-zed"]

    # Resume: what ben missed while away, exactly.
    await settle(ben)
    last = [f for f in ben.frames if f["type"] in ("snapshot", "delta")][-1]
    await ben.close()
    moved = await store.transition(s1.patient_id, s1.accession, S.ARRIVED)
    n2 = await exam_in(store, S.SCHEDULED, tenant=north, site=SITE)
    await seen(ana, delta_of(n2))
    back = await WsClient.open(cstack.ws_url, token("c-ben", name="Dr. Ben", tenant=north))
    since = {"epoch": last["epoch"], "offset": last["offset"]}
    await back.send({"type": "subscribe", "id": "s", "since": since})
    resumed = await back.until(lambda f: f.get("id") == "s")
    assert resumed["type"] == "resumed", resumed
    missed = [await back.next() for _ in range(resumed["missed"])]
    assert {f["delta"]["exam_id"] for f in missed} == {n2.accession}, "nothing of the south"
    await seen(zed, delta_of(moved))
    assert not any(
        (f.get("delta") or {}).get("exam_id") in (n1.accession, n2.accession) for f in zed.frames
    )


async def test_a_master_restart_is_a_gap_every_client_recovers_from(
    cstack: ClusterStack, cluster: RedisClusterProcs, store: ExamStore
) -> None:
    (north, north_port), (south, _) = cstack.tenants.items()
    ana = await WsClient.open(cstack.ws_url, token("c-ana", tenant=north))
    zed = await WsClient.open(cstack.ws_url, token("c-zed", tenant=south))
    await subscribe(ana)
    await subscribe(zed)
    before = [await exam_in(store, S.SCHEDULED, tenant=north, site=SITE) for _ in range(3)]
    south_exam = await exam_in(store, S.SCHEDULED, tenant=south, site=SITE)
    await seen(ana, delta_of(before[-1]), 15)
    await seen(zed, delta_of(south_exam), 15)

    # The master holding the north tenant's slot crashes and comes back empty.
    await asyncio.to_thread(cluster.restart, north_port, down_seconds=0.5)
    await seen(ana, lambda f: f.get("type") == "resync", 15)

    # Writes after the restart all reach the client.
    after = await exam_in(store, S.SCHEDULED, tenant=north, site=SITE)
    moved = await store.transition(before[0].patient_id, before[0].accession, S.ARRIVED)
    later = await exam_in(store, S.SCHEDULED, tenant=south, site=SITE)
    truth_north = {e.accession: e.version for e in (*before[1:], after, moved)}
    truth_south = {south_exam.accession: south_exam.version, later.accession: later.version}

    ana_rows, zed_rows = Rows("s"), Rows("s")

    async def converged() -> bool:
        await settle(ana, 0.2)
        await settle(zed, 0.05)
        return (
            ana_rows.follow(ana.frames) == truth_north
            and zed_rows.follow(zed.frames) == truth_south
            and await open_exams(cstack.feed, north) == truth_north
        )

    await eventually(converged, 40, "the clients and the rebuilt cache to hold DynamoDB's rows")
    assert ana_rows.resets >= 2, "the gap was a fresh snapshot"
    assert await open_exams(cstack.feed, south) == truth_south, "the other master kept its data"


async def test_a_tenant_whose_slot_moves_is_followed_to_its_new_master(
    cstack: ClusterStack, cluster: RedisClusterProcs, store: ExamStore
) -> None:
    (north, north_port), (_, south_port) = cstack.tenants.items()
    ana = await WsClient.open(cstack.ws_url, token("c-ana", tenant=north))
    await subscribe(ana)
    first = await exam_in(store, S.SCHEDULED, tenant=north, site=SITE)
    await seen(ana, delta_of(first), 15)

    # Resharding: the tenant's slot, keys and all, goes to the other master.
    slot = key_slot(north.encode())
    await asyncio.to_thread(cluster.move_slot, slot, south_port)
    assert cluster.port_of_slot(slot) == south_port != north_port
    await seen(ana, lambda f: f.get("type") == "resync", 15)
    await ana.until(lambda f: f.get("type") == "snapshot", 15)  # the resync's

    # The subscription followed: deltas published on the new master arrive live.
    second = await exam_in(store, S.SCHEDULED, tenant=north, site=SITE)
    await seen(ana, delta_of(second), 15)
    node = Redis(port=south_port)
    assert await node.hexists(keys.exams(north), second.accession)
    await node.aclose()
    rows = Rows("s")
    await settle(ana)
    truth = {first.accession: first.version, second.accession: second.version}
    assert rows.follow(ana.frames) == truth == await open_exams(cstack.feed, north)
