"""One delta to thousands of clients is fanned out in slices (`GATEWAY_FANOUT_SLICE`
subscriptions per turn of the event loop), so a claim or a reply waits behind a slice,
not a whole fan-out: every client still gets every delta once, in order, and a client
that leaves between two slices gets nothing more."""

from __future__ import annotations

import asyncio
import re
import time

import httpx
import orjson
import pytest
from pydantic import ValidationError
from redis.asyncio import Redis

from dynamo.deltas import ExamDelta
from gateway.hub import Hub
from gateway.settings import GatewaySettings
from tests.conftest import Stack
from tests.support.exams import exam_bundle
from tests.support.hubfakes import FakeWriter, hub_client, raw
from tests.support.wsclient import WsClient
from worklist_cache import WorklistFeed
from worklist_cache.subscriber import More


def _exams(writer: FakeWriter) -> list[str]:
    return [orjson.loads(f)["delta"]["exam_id"] for f in writer.written]


def _finish(more: More | None) -> int:
    """Run the rest of a fan-out to its end; returns how many more slices it took."""
    slices = 0
    while more is not None:
        slices += 1
        more = more()
    return slices


def test_a_fan_out_larger_than_a_slice_reaches_every_client_once_in_order() -> None:
    hub = Hub(slice_members=3)
    writers = [hub_client(hub)[1] for _ in range(8)]
    more = hub.on_message("northwind", raw("A1", 1, "1-0")[0].encode())
    assert sum(len(w.written) for w in writers) == 3, "one slice in the first turn"
    assert _finish(more) == 2, "8 subscriptions in slices of 3"
    assert _finish(hub.on_message("northwind", raw("A2", 1, "2-0")[0].encode())) == 2
    assert all(_exams(w) == ["A1", "A2"] for w in writers)


def test_a_client_gone_between_slices_gets_nothing_and_a_new_one_waits_for_the_next() -> None:
    hub = Hub(slice_members=2)
    clients = [hub_client(hub)[:2] for _ in range(5)]
    more = hub.on_message("northwind", raw("A1", 1, "1-0")[0].encode())
    waiting = [(c, w) for c, w in clients if not w.written]
    assert len(waiting) == 3
    gone, gone_writer = waiting[0]
    hub.detach(gone)
    _, newcomer, _ = hub_client(hub)  # (it gets its snapshot: this delta is in it)
    _finish(more)
    assert gone_writer.written == [] and newcomer.written == []
    assert sum(len(w.written) for _, w in clients) == 4
    _finish(hub.on_message("northwind", raw("A2", 1, "2-0")[0].encode()))
    assert _exams(newcomer) == ["A2"] and gone_writer.written == []


async def test_a_windowed_fan_out_in_slices_still_batches_one_text_per_delta() -> None:
    hub = Hub(flush_s=60.0, slice_members=2)  # a window flushed by hand
    writers = [hub_client(hub)[1] for _ in range(5)]
    _finish(hub.on_message("northwind", raw("A0", 1, "1-0")[0].encode()))  # quiet: at once
    for n in (1, 2):  # close behind it: held by the window
        _finish(hub.on_message("northwind", raw(f"A{n}", 1, f"{n + 1}-0")[0].encode()))
    assert all(len(w.written) == 1 for w in writers)
    hub.flush()
    assert all(len(w.written) == 2 for w in writers)
    batches = [orjson.loads(w.written[1]) for w in writers]
    assert all([d["delta"]["exam_id"] for d in b["frames"]] == ["A1", "A2"] for b in batches)
    # One batch built and its bytes shared, whatever slice a client was in.
    assert len({id(w.wires[1]) for w in writers}) == 1


async def test_clients_of_a_gateway_slicing_every_two_get_every_delta_in_order(
    stack: Stack, redis: Redis
) -> None:
    """Through the real subscriber, Redis and sockets, with a slice of two subscriptions."""
    hub = stack.app.state.gw.hub
    hub.slice_members = 2
    clients = [await WsClient.open(stack.ws_url) for _ in range(5)]
    for client in clients:
        await client.subscribe("s", statuses=[])
    exam, _, _ = exam_bundle()
    base = ExamDelta.from_exam(exam)
    deltas = [base.model_copy(update={"exam_id": f"{exam.accession}-{i}"}) for i in range(6)]
    feed = WorklistFeed(redis)
    for delta in deltas:
        await feed.publish([delta])
    for client in clients:
        got: list[str] = []
        while len(got) < len(deltas):
            frame = await client.next(timeout=10)
            if frame.get("type") == "delta":
                got.append(frame["delta"]["exam_id"])
            elif frame.get("type") == "batch":
                got += [f["delta"]["exam_id"] for f in frame["frames"]]
        assert got == [d.exam_id for d in deltas]
    await asyncio.gather(*(c.close() for c in clients))


def _stamped(n: int, late_s: float) -> bytes:
    """A feed message whose offset Redis stamped `late_s` seconds ago."""
    return raw(f"B{n}", 1, f"{int((time.time() - late_s) * 1000)}-{n}")[0].encode()


async def test_a_window_behind_a_backlog_stretches_until_the_messages_are_on_time() -> None:
    """Messages long past their offset's stamp (a backlog being read) keep the window
    open, a window at a time: one batch for all of them instead of one per window."""
    hub = Hub(flush_s=60.0)  # the window's end is called by hand here
    _, writer, _ = hub_client(hub)
    _finish(hub.on_message("northwind", _stamped(0, 0.0)))  # on time, after quiet: at once
    for n in range(1, 4):
        _finish(hub.on_message("northwind", _stamped(n, 1000.0)))
    hub._window_ends()
    assert len(writer.written) == 1 and hub.stretched == 1, "behind: the window grows"
    _finish(hub.on_message("northwind", _stamped(4, 0.0)))  # caught up
    hub._window_ends()
    assert hub.stretched == 1 and len(writer.written) == 2
    batch = orjson.loads(writer.written[1])
    assert [f["delta"]["exam_id"] for f in batch["frames"]] == ["B1", "B2", "B3", "B4"]


async def test_a_clock_that_differs_from_redis_stretches_nothing() -> None:
    """Every message equally late (Redis's clock 5 s behind this host's): the floor
    takes the difference, and the window ends on time."""
    hub = Hub(flush_s=0.01)
    _, writer, _ = hub_client(hub)
    for n in range(4):
        _finish(hub.on_message("northwind", _stamped(n, 5.0)))
    hub._window_ends()
    assert hub.stretched == 0 and len(writer.written) == 2, "one at once, then one batch"


async def test_a_late_message_with_nothing_after_it_is_not_held_past_its_window() -> None:
    hub = Hub(flush_s=0.01)
    _, writer, _ = hub_client(hub)
    _finish(hub.on_message("northwind", _stamped(0, 0.0)))
    _finish(hub.on_message("northwind", _stamped(1, 1000.0)))  # late, and the last one
    await asyncio.sleep(0.1)
    assert len(writer.written) == 2 and hub.stretched <= 1  # (a timer may fire a hair early)


async def test_how_late_the_feed_is_read_is_counted_for_operators() -> None:
    hub = Hub(flush_s=0.01)
    hub_client(hub)
    _finish(hub.on_message("northwind", _stamped(0, 0.0)))
    assert hub.late_messages == 0 and hub.lateness < 0.05
    _finish(hub.on_message("northwind", _stamped(1, 30.0)))  # read 30 s after Redis stamped it
    assert hub.late_messages == 1 and 29.0 < hub.lateness < 31.0
    _finish(hub.on_message("northwind", _stamped(2, 0.0)))
    assert hub.late_messages == 1 and hub.lateness < 0.05


async def test_a_gateway_reading_its_feed_on_time_says_so_on_metrics(
    stack: Stack, redis: Redis
) -> None:
    client = await WsClient.open(stack.ws_url)
    await client.subscribe("s", statuses=[])
    exam, _, _ = exam_bundle()
    await WorklistFeed(redis).publish([ExamDelta.from_exam(exam)])
    await client.until(lambda f: f.get("type") in ("delta", "batch"))
    async with httpx.AsyncClient(base_url=stack.http_url) as http:
        metrics = (await http.get("/metrics")).text
    late = re.search(r"^gateway_feed_late_messages_total (\d+)$", metrics, re.M)
    lateness = re.search(r"^gateway_feed_lateness_seconds ([0-9.]+)$", metrics, re.M)
    assert late is not None and int(late.group(1)) == 0
    assert lateness is not None and float(lateness.group(1)) < 1.0
    await client.close()


@pytest.mark.parametrize("env", [{"GATEWAY_FANOUT_SLICE": "-1"}, {"GATEWAY_FLUSH_MS": "-5"}])
def test_a_negative_slice_or_window_is_refused_at_start(
    env: dict[str, str], monkeypatch: pytest.MonkeyPatch
) -> None:
    for name, value in env.items():
        monkeypatch.setenv(name, value)
    with pytest.raises(ValidationError, match="greater than or equal to 0"):
        GatewaySettings()
