"""Presence under a reconnect storm, on two gateway nodes over one real Redis: every
session ends with the true presence (its own scope applied to `reading`), a node that
missed announcements converges by re-reading, and the Redis work a storm costs per
session does not grow with the storm's size (counted in bytes Redis sent, not timed)."""

from __future__ import annotations

import asyncio
import random
import time
from collections import Counter
from collections.abc import AsyncIterator
from typing import Any

import orjson
import pytest
from redis.asyncio import Redis

from dynamo.settings import DynamoSettings
from dynamo.states import ExamStatus
from dynamo.store import ExamStore
from tests.conftest import UNIT, Stack, gateway_node, token
from tests.support.exams import exam_in
from tests.support.wsclient import WsClient
from worklist_cache import keys

TENANT = "northwind"


class Node:
    """A second gateway node (its ws URL and its app, to reach its pub/sub)."""

    def __init__(self, ws_url: str, app: Any) -> None:
        self.ws_url = ws_url
        self.app = app


@pytest.fixture
async def second_node(
    stack: Stack, dynamo_settings: DynamoSettings, redis_url: str
) -> AsyncIterator[Node]:
    async with gateway_node(dynamo_settings, redis_url) as (url, app):
        yield Node(url, app)


class Viewer:
    """One session and the presence it was told: `presence_state`, then diffs applied."""

    def __init__(self, client: WsClient, sub: str, sites: tuple[str, ...]) -> None:
        self.client = client
        self.sub = sub
        self.sites = sites
        self.view: dict[str, dict[str, Any]] = {}
        self._seen = 0

    def _apply(self) -> None:
        frames = self.client.frames
        while self._seen < len(frames):
            f = frames[self._seen]
            self._seen += 1
            if f.get("type") == "presence_state":
                self.view = {u["sub"]: u for u in f["users"]}
            elif f.get("type") == "presence_diff":
                for user in f["joins"]:
                    self.view[user["sub"]] = user
                for sub in f["leaves"]:
                    self.view.pop(sub, None)

    async def converges(self, expected: dict[str, dict[str, Any]], timeout: float = 10.0) -> None:
        self._apply()
        if self.view == expected:
            return

        def done(_frame: dict[str, Any]) -> bool:
            self._apply()
            return self.view == expected

        try:
            await self.client.until(done, timeout)
        except TimeoutError:
            assert self.view == expected, f"{self.sub} never saw the true presence"


def truth(
    online: list[Viewer], reading: dict[str, dict[str, str]], viewer_sites: tuple[str, ...]
) -> dict[str, dict[str, Any]]:
    """What a viewer of these sites should see: every user online, their tabs counted,
    the exams they read at the viewer's sites only (reading: sub -> exam_id -> site)."""
    tabs = Counter(v.sub for v in online)
    return {
        sub: {
            "sub": sub,
            "name": f"Dr. {sub}",
            "roles": ["radiologist"],
            "connections": n,
            "reading": sorted(
                e
                for e, site in reading.get(sub, {}).items()
                if not viewer_sites or site in viewer_sites
            ),
        }
        for sub, n in tabs.items()
    }


async def everyone_converges(
    online: list[Viewer], reading: dict[str, dict[str, str]], timeout: float = 10.0
) -> None:
    await asyncio.gather(*(v.converges(truth(online, reading, v.sites), timeout) for v in online))


async def test_a_storm_across_two_nodes_ends_in_the_true_presence_everywhere(
    stack: Stack, second_node: Node, store: ExamStore, redis: Redis
) -> None:
    rng = random.Random(18)
    users = {f"st-{i}": ("NW-GEN",) if i % 3 == 0 else () for i in range(8)}
    tokens = {
        sub: token(sub, name=f"Dr. {sub}", sites=sites, subspecialties=())
        for sub, sites in users.items()
    }
    urls = [stack.ws_url, second_node.ws_url]

    async def open_one(i: int) -> Viewer:
        sub = f"st-{i % len(users)}"
        client = await WsClient.open(urls[i % 2], tokens[sub])
        return Viewer(client, sub, users[sub])

    # Someone reads an exam at each site, so scope decides what `reading` shows.
    general = await exam_in(store, ExamStatus.COMPLETED, site="NW-GEN")
    ortho = await exam_in(store, ExamStatus.COMPLETED, site="NW-ORT", subspecialty="msk")
    reader = await open_one(1)
    for exam in (general, ortho):
        claimed = await reader.client.request({"type": "claim", "exam_id": exam.accession})
        assert claimed["type"] == "claimed", claimed
    reading = {reader.sub: {general.accession: "NW-GEN", ortho.accession: "NW-ORT"}}

    online = [reader, *await asyncio.gather(*(open_one(i) for i in range(2, 42)))]
    await everyone_converges(online, reading)

    # The storm: half leave at once while as many join, on both nodes.
    leaving = rng.sample(online[1:], 20)
    joining = [open_one(i) for i in range(42, 62)]
    _, joined = await asyncio.gather(
        asyncio.gather(*(v.client.close() for v in leaving)), asyncio.gather(*joining)
    )
    online = [v for v in online if v not in leaving] + list(joined)
    await everyone_converges(online, reading)
    assert await redis.hlen(keys.presence(TENANT)) == len(online)


async def test_a_node_that_missed_announcements_converges_by_reading_again(
    stack: Stack, second_node: Node, redis: Redis
) -> None:
    tok = {sub: token(sub, name=f"Dr. {sub}") for sub in ("gp-a", "gp-b")}
    here = [Viewer(await WsClient.open(stack.ws_url, tok["gp-a"]), "gp-a", ()) for _ in range(3)]
    there = [
        Viewer(await WsClient.open(second_node.ws_url, tok["gp-b"]), "gp-b", ()) for _ in range(3)
    ]
    await everyone_converges(here + there, {})

    # A change nobody announced (its announcement lost): a third node's session.
    ghost = {
        "sub": "gp-c",
        "name": "Dr. gp-c",
        "roles": ["radiologist"],
        "reading": [],
        "scope": {},
        "node": "node-lost",
        "seen": time.time_ns() // 1_000_000,
    }
    await redis.hset(keys.presence(TENANT), "lost-conn", orjson.dumps(ghost))
    # The second node's pub/sub connection drops: a gap, after which it reads again.
    gw = second_node.app.state.gw
    gaps = gw.subscriber.gaps
    port = gw.subscriber._pubsub.connection._writer.get_extra_info("sockname")[1]
    for client in await redis.client_list(_type="pubsub"):
        if client["addr"].endswith(f":{port}"):
            await redis.client_kill_filter(_id=client["id"])
    # Meanwhile a tab on the first node closes: the second node may miss that too.
    await here.pop().client.close()
    seen_by_second = {**truth([*here, *there], {}, ()), **_user("gp-c", 1)}
    await asyncio.gather(*(v.converges(seen_by_second) for v in there))
    assert gw.subscriber.gaps > gaps


def _user(sub: str, connections: int) -> dict[str, dict[str, Any]]:
    user = {"sub": sub, "name": f"Dr. {sub}", "roles": ["radiologist"], "reading": []}
    return {sub: {**user, "connections": connections}}


# ---- the cost of a storm -----------------------------------------------------------------


async def _redis_work(redis: Redis) -> tuple[int, int]:
    """(bytes Redis has sent to its clients, commands it has run) so far."""
    stats = await redis.info("stats")
    commands = await redis.info("commandstats")
    calls = sum(int(v["calls"]) for v in commands.values() if isinstance(v, dict))
    return int(stats["total_net_output_bytes"]), calls


async def _storm(urls: list[str], tokens: list[str], n: int, redis: Redis) -> tuple[float, float]:
    """n sessions join at once (both nodes, ten users), everyone sees them, all leave at
    once; Redis bytes sent and commands run per session over the whole storm."""
    bytes0, calls0 = await _redis_work(redis)
    limit = asyncio.Semaphore(40)

    async def open_one(i: int) -> Viewer:
        async with limit:
            client = await WsClient.open(urls[i % 2], tokens[i % len(tokens)])
        return Viewer(client, f"cost-{i % len(tokens)}", ())

    online = list(await asyncio.gather(*(open_one(i) for i in range(n))))
    await everyone_converges(online, {}, timeout=30)
    await asyncio.gather(*(v.client.close() for v in online))
    loop = asyncio.get_running_loop()
    deadline = loop.time() + 30 * UNIT
    while await redis.hlen(keys.presence(TENANT)):
        assert loop.time() < deadline, "sessions left, their presence did not"
        await asyncio.sleep(0.05)
    await asyncio.sleep(0.3)  # the last announcements' re-reads (debounced) are done
    bytes1, calls1 = await _redis_work(redis)
    return (bytes1 - bytes0) / n, (calls1 - calls0 - 2) / n


async def test_a_storm_costs_redis_the_same_per_session_at_four_times_the_size(
    stack: Stack, second_node: Node, redis: Redis
) -> None:
    tokens = [token(f"cost-{i}", name=f"Dr. cost-{i}") for i in range(10)]
    urls = [stack.ws_url, second_node.ws_url]
    await _storm(urls, tokens, 10, redis)  # warm: both nodes know the tenant
    small_bytes, small_calls = await _storm(urls, tokens, 30, redis)
    big_bytes, big_calls = await _storm(urls, tokens, 120, redis)
    print(
        f"per session: {small_bytes:.0f} -> {big_bytes:.0f} bytes, "
        f"{small_calls:.1f} -> {big_calls:.1f} commands"
    )
    # O(N) per storm: what each session costs stays put as the storm grows (each join
    # re-reading the whole hash made it grow with N: O(N^2) per storm).
    # (Commands are printed only: batching makes them fewer than one per session, so a
    # heartbeat landing in one storm and not the other moves them by more than 1.5x.)
    assert big_bytes < 1.5 * small_bytes, (small_bytes, big_bytes)
