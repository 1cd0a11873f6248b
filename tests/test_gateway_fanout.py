"""The fan-out's fast path: frames written straight to the transport when nothing waits,
queued (in order, bounded) when something does; the same deltas whether a client
negotiated compression or not."""

from __future__ import annotations

import asyncio
import random
import time
from typing import Any

import orjson
import pytest
from redis.asyncio import Redis
from websockets.asyncio.client import connect
from websockets.frames import Frame, Opcode

from dynamo.deltas import ExamDelta
from gateway.hub import Client, Hub
from gateway.routing import Subscription
from gateway.wire import encode_text
from loadtest import fanout_cost
from tests.conftest import UNIT, Stack, token
from tests.support.exams import exam_bundle
from tests.support.hubfakes import FakeTransport, FakeWriter
from tests.support.hubfakes import hub_client as _client
from tests.support.hubfakes import raw as _raw
from tests.support.wsclient import WsClient
from worklist_cache import WorklistFeed
from worklist_cache.views import Scope, View, scope_view


@pytest.mark.parametrize("size", [0, 1, 125, 126, 65535, 65536, 70000])
def test_a_frame_built_once_is_the_frame_websockets_would_send(size: int) -> None:
    text = ("é" * size)[: max(0, size // 2)] + "x" * (size - size // 2)
    assert encode_text(text) == Frame(Opcode.TEXT, text.encode()).serialize(mask=False)


def _deliver(hub: Hub, n: int, version: int = 1) -> None:
    raw, _ = _raw(f"A{n}", version, f"{n}-{version}")
    hub.on_message("northwind", raw.encode())


def _queued(client: Client) -> list[str]:
    return [client.queue.get_nowait()[1] for _ in range(client.queue.qsize())]


def test_frames_go_straight_out_until_the_transport_pauses_then_queue_in_order() -> None:
    hub = Hub()
    client, writer, evicted = _client(hub)
    _deliver(hub, 1)
    assert [orjson.loads(f)["delta"]["exam_id"] for f in writer.written] == ["A1"]
    assert client.queue.empty()

    writer.paused = True
    _deliver(hub, 2)
    writer.paused = False  # the transport drained, but a frame still waits in the queue:
    _deliver(hub, 3)  # this one must not overtake it
    client.send('{"type":"pong","id":"p","ts":1}')
    assert len(writer.written) == 1
    order = [orjson.loads(f).get("delta", {}).get("exam_id", "pong") for f in _queued(client)]
    assert order == ["A2", "A3", "pong"]
    assert not evicted


def test_a_client_whose_writer_holds_frames_gets_no_frame_ahead_of_them() -> None:
    hub = Hub()
    client, writer, _ = _client(hub)
    client.busy = True  # the session's writer took frames and has not written them yet
    _deliver(hub, 1)
    assert writer.written == [] and client.queue.qsize() == 1


def test_a_paused_client_that_keeps_falling_behind_is_evicted() -> None:
    hub = Hub()
    client, writer, evicted = _client(hub)
    writer.paused = True
    for n in range(6):  # the queue holds 5
        _deliver(hub, n)
    assert evicted == [client]
    assert client.writer is None, "nothing more goes straight out once it is evicted"


def test_clients_of_one_prefix_share_one_frame() -> None:
    hub = Hub()
    (_, wa, _), (_, wb, _) = _client(hub), _client(hub)
    _deliver(hub, 7)
    # One frame's bytes, built once, for both.
    assert wa.written == wb.written and wa.wires[0] is wb.wires[0]


async def test_compressed_and_plain_clients_get_the_same_deltas_in_order(
    stack: Stack, redis: Redis
) -> None:
    browser = await WsClient.open(stack.ws_url)  # negotiates permessage-deflate
    assert browser.conn.protocol.extensions, "the test client should compress"
    plain = WsClient(await connect(stack.ws_url, compression=None, open_timeout=10 * UNIT))
    assert (await plain.next())["type"] == "welcome"
    await plain.auth(token())
    await browser.subscribe("s", statuses=[])
    await plain.subscribe("s", statuses=[])
    gw = stack.app.state.gw
    assert all(s.client.writer is not None for s in gw.sessions), "the direct path is on"

    exam, _, _ = exam_bundle()
    base = ExamDelta.from_exam(exam)
    # Short and long frames (the three WebSocket length encodings).
    deltas = [
        base.model_copy(update={"exam_id": f"{exam.accession}-{i}", "procedure": "P" * size})
        for i, size in enumerate([1, 200, 70_000, 3, 300])
    ]
    feed = WorklistFeed(redis)
    for d in deltas:
        await feed.publish([d])
    for client in (browser, plain):
        got: list[str] = []
        while len(got) < len(deltas):
            frame = await client.next(timeout=10)
            if frame.get("type") == "delta":
                got.append(frame["delta"]["exam_id"])
                assert frame["delta"]["procedure"] == deltas[len(got) - 1].procedure
        assert got == [d.exam_id for d in deltas]
    await asyncio.gather(browser.close(), plain.close())


async def test_a_flush_window_batches_dense_deltas_and_sends_a_lone_one_at_once() -> None:
    hub = Hub(flush_s=60.0)  # a window that never ends by itself here: flushed by hand
    _, writer, _ = _client(hub)
    _deliver(hub, 1)  # after a quiet window: at once
    assert [orjson.loads(f)["delta"]["exam_id"] for f in writer.written] == ["A1"]
    _deliver(hub, 2)
    _deliver(hub, 3)
    _deliver(hub, 2, version=2)  # a newer version of A2 within the window
    assert len(writer.written) == 1, "deltas that follow closely wait for the window"
    hub.flush()
    batch = orjson.loads(writer.written[1])
    assert batch["type"] == "batch"
    got = [(f["delta"]["exam_id"], f["delta"]["version"]) for f in batch["frames"]]
    assert got == [("A3", 1), ("A2", 2)], "the newest frame per exam, in order"


class _SlowTransport(FakeTransport):
    """A write that takes 30 ms: a fan-out longer than the window (a slow, busy box)."""

    def write(self, frame: bytes) -> None:
        time.sleep(0.03)
        super().write(frame)


async def test_a_fan_out_longer_than_the_window_still_batches_the_next_delta() -> None:
    hub = Hub(flush_s=0.02)
    _, writer, _ = _client(hub)
    writer.transport = _SlowTransport(writer)
    _deliver(hub, 1)  # after a quiet window: at once, and it takes longer than the window
    _deliver(hub, 2)  # right after that fan-out ended: the window holds it
    _deliver(hub, 3)
    assert len(writer.written) == 1, "deltas right after a long fan-out wait for the window"
    await asyncio.sleep(0.1)  # the window ends by itself
    kinds = [orjson.loads(f)["type"] for f in writer.written]
    assert kinds == ["delta", "batch"], "one write for the two that waited"


async def test_a_reply_never_overtakes_deltas_held_by_the_window() -> None:
    hub = Hub(flush_s=60.0)
    client, writer, _ = _client(hub)
    _deliver(hub, 1)
    _deliver(hub, 2)
    client.send('{"type":"pong","id":"p","ts":1}')
    kinds = [orjson.loads(f).get("type") for f in writer.written]
    assert kinds == ["delta", "delta", "pong"]
    hub.flush()  # nothing left to send
    assert len(writer.written) == 3


async def test_a_window_held_for_a_paused_client_is_queued_not_lost() -> None:
    hub = Hub(flush_s=60.0)
    client, writer, _ = _client(hub)
    _deliver(hub, 1)
    _deliver(hub, 2)
    writer.paused = True
    hub.flush()
    assert [orjson.loads(f)["delta"]["exam_id"] for f in _queued(client)] == ["A2"]


def _scoped_client(
    hub: Hub, sites: frozenset[str], sub_id: str = "s1"
) -> tuple[Client, FakeWriter]:
    client = Client(50, lambda _c: None, hub=hub)
    writer = FakeWriter()
    client.writer = writer  # type: ignore[assignment]
    scope = Scope("northwind", sites=sites)
    view = scope_view(View(statuses=[]), scope)
    sub = Subscription(sub_id, "northwind", view, view.matcher(), scope, "e1", pending=None)
    client.subs[sub_id] = sub
    hub.attach(client, "northwind")
    return client, writer


def _publish(hub: Hub, row: dict[str, Any], offset: str) -> None:
    raw = '{"epoch":"e1","offset":"' + offset + '","delta":' + orjson.dumps(row).decode() + "}"
    more = hub.on_message("northwind", raw.encode())
    while more is not None:  # (a hub that fans out in slices: the rest of them)
        more = more()


def test_clients_sharing_a_sub_id_are_routed_by_their_own_scope() -> None:
    """The hub routes a message once per group of alike subscriptions: a client of
    another site, under the same sub id, must never be in the group of this one."""
    hub = Hub()
    _, gen = _scoped_client(hub, frozenset({"NW-GEN"}))
    _, east = _scoped_client(hub, frozenset({"NW-EAST"}))
    _, both = _scoped_client(hub, frozenset())
    _, row = _raw("A1", 1, "1-0")
    _publish(hub, row, "1-0")
    _publish(hub, {**row, "version": 2, "site": "NW-EAST"}, "2-0")  # moved to the other site
    seen = {
        name: [
            (f["type"], f.get("leave", False), f.get("delta", f)["version"])
            for f in map(orjson.loads, w.written)
        ]
        for name, w in (("gen", gen), ("east", east), ("both", both))
    }
    assert seen["gen"] == [("delta", False, 1), ("delta", True, 2)]
    assert seen["east"] == [("delta", False, 2)]
    assert seen["both"] == [("delta", False, 1), ("patch", False, 2)]
    leave = orjson.loads(gen.written[1])
    assert set(leave["delta"]) == {"exam_id", "version"}, "a leave carries nothing of the row"


def test_a_subscription_whose_matcher_changed_or_that_left_is_routed_as_it_is_now() -> None:
    hub = Hub()
    client, writer = _scoped_client(hub, frozenset({"NW-GEN"}))
    other, other_writer = _scoped_client(hub, frozenset({"NW-GEN"}))
    _, row = _raw("A1", 1, "1-0")
    _publish(hub, row, "1-0")
    # The tenant's rules changed this one's matcher (no re-plan asked for).
    narrow = View(statuses=[], sites=["NW-EAST"])
    client.subs["s1"].matcher = narrow.matcher()
    other.subs.pop("s1")  # unsubscribed
    hub.refresh(other, "northwind")
    _publish(hub, {**row, "version": 2}, "2-0")
    assert [orjson.loads(f).get("leave", False) for f in writer.written] == [False, True]
    assert len(other_writer.written) == 1


@pytest.mark.parametrize("seed", range(6))
async def test_grouped_fan_out_sends_what_routing_each_subscription_alone_sends(
    seed: int,
) -> None:
    """Seeded streams of changes (sites, states, removals, newer versions) to clients of
    several scopes, some paused, busy or with a snapshot on its way, with and without a
    flush window, fanned out whole or in slices: every client gets the very frames
    `Client.offer` gives it alone."""
    rng = random.Random(seed)
    windowed = seed % 2 == 1
    flush_s = 60.0 if windowed else 0.0
    hubs = [Hub(flush_s=flush_s, slice_members=5 if seed >= 2 else 0), Hub(flush_s=flush_s)]

    # The reference: every subscription routed alone, as before the hub grouped them.
    def alone(group: Any, members: Any, job: Any) -> None:
        for client, sub in members:
            args = (job.offset, job.row, job.text, job.epoch, job.memo, job.windowed, job.patch)
            client.offer(sub, *args)

    setattr(hubs[1], "_fan", alone)  # noqa: B010 (a method replaced on one instance)
    site_sets = [frozenset(), frozenset({"NW-GEN"}), frozenset({"NW-EAST"})]
    twins: list[list[tuple[Client, FakeWriter]]] = [[], []]
    for i in range(12):
        sites = site_sets[i % 3]
        for side in (0, 1):
            twins[side].append(_scoped_client(hubs[side], sites, "s1" if i % 4 else "s2"))
    for n in range(120):
        exam = f"A{rng.randrange(8)}"
        row = {
            "op": "remove" if rng.random() < 0.1 else "upsert",
            "tenant": "northwind",
            "site": rng.choice(["NW-GEN", "NW-EAST"]),
            "exam_id": exam,
            "version": n + 1,
            "status": rng.choice(["COMPLETED", "SCHEDULED"]),
            "priority": "STAT",
            "modality": "CT",
            "subspecialty": "neuro",
            "procedure": rng.choice(["CT head", "CT chest"]),
        }
        for i in rng.sample(range(12), 2):  # some clients change state, on both sides
            what = rng.choice(["pause", "resume", "busy", "idle", "snapshot", "live", "drain"])
            for side in (0, 1):
                client, writer = twins[side][i]
                sub = next(iter(client.subs.values()))
                if what in ("pause", "resume"):
                    writer.paused = what == "pause"
                elif what in ("busy", "idle"):
                    client.busy = what == "busy"
                elif what == "snapshot" and sub.pending is None:
                    sub.pending = []
                elif what == "live" and sub.pending is not None:
                    held, sub.pending = sub.pending, None
                    for pending in held:
                        client.offer(sub, *pending)
                elif what == "drain":
                    _queued(client)
        window_ends = windowed and rng.random() < 0.4
        for hub in hubs:
            _publish(hub, row, f"{n + 1}-0")
            if window_ends:
                hub.flush()
    for hub in hubs:
        hub.flush()
    for (a, wa), (b, wb) in zip(*twins, strict=True):
        assert wa.written == wb.written
        assert _queued(a) == _queued(b)
        sa, sb = next(iter(a.subs.values())), next(iter(b.subs.values()))
        assert sa.held == sb.held


def test_the_cost_harness_gives_every_client_every_message_as_the_baseline_does() -> None:
    """`loadtest.fanout_cost` compares like with like: the hub and the bare baseline
    deliver the same messages to the same clients, the hub's frames longer only by
    their prefix."""
    hub = asyncio.run(fanout_cost.run(5, 20, 0, False))
    bare = asyncio.run(fanout_cost.run_baseline(5, 20))
    assert hub["frames_out"] == 5 * 20
    prefix = len('{"type":"delta","sub":"s1",') - 1  # the message's "{" is kept
    assert hub["bytes"] - bare["bytes"] == 5 * 20 * prefix
    dense = asyncio.run(fanout_cost.run(5, 20, 4, False))
    # The first message after a quiet window at once, then one write per window of 4.
    assert dense["frames_out"] == 5 * (1 + 19 // 4 + 1)
