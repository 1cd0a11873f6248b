"""The cycle collector in a long-lived gateway: what grows with connections stays out of
its reach (a full collection stops every client's deliveries for as long as it walks),
and its pauses are on /metrics."""

from __future__ import annotations

import gc
import re

import httpx
import orjson

from gateway.collector import Pauses
from gateway.hub import Hub
from tests.conftest import Stack
from tests.support.hubfakes import hub_client, raw
from tests.support.wsclient import WsClient


def test_a_subscriptions_holds_grow_without_growing_what_a_collection_walks() -> None:
    hub = Hub()
    client, writer, _ = hub_client(hub)
    sub = client.subs["s1"]
    for n in range(2000):
        hub.on_message("northwind", raw(f"X{n:05d}", 1, f"{n + 1}-0")[0].encode())
    hub.on_message("northwind", raw("X00007", 2, "3000-0", op="remove")[0].encode())
    assert len(sub.held) == 1999, "every exam sent is held, the removed one is not"
    assert sub.held["X00008"] == 1
    # One str -> int dict: CPython leaves it untracked, so a full collection does not
    # walk its entries (a set per subscription cost 4 M entries a walk at 1,000 clients).
    assert not gc.is_tracked(sub.held)
    assert len(writer.written) == 2001
    leave = orjson.loads(writer.written[-1])
    assert leave["leave"] is True and leave["delta"]["exam_id"] == "X00007"


def test_collection_pauses_are_counted_per_generation() -> None:
    pauses = Pauses()
    pauses.install()
    try:
        gc.collect()
    finally:
        pauses.uninstall()
    assert pauses.collections[2] >= 1 and pauses.longest[2] > 0
    gc.collect()  # uninstalled: no longer counted
    text = "\n".join(pauses.lines())
    got = re.search(r'^gateway_gc_collections_total\{generation="2"\} (\d+)$', text, re.M)
    assert got is not None and int(got.group(1)) == pauses.collections[2]


async def test_the_gateway_reports_its_collection_pauses_on_metrics(stack: Stack) -> None:
    client = await WsClient.open(stack.ws_url)
    await client.request({"type": "ping"})
    gc.collect()  # (the in-process gateway shares the test's collector)
    async with httpx.AsyncClient(base_url=stack.http_url) as http:
        metrics = (await http.get("/metrics")).text
    gen2 = '\\{generation="2"\\}'
    full = re.search(rf"^gateway_gc_collections_total{gen2} (\d+)$", metrics, re.M)
    longest = re.search(rf"^gateway_gc_pause_max_seconds{gen2} ([0-9.]+)$", metrics, re.M)
    assert full is not None and int(full.group(1)) >= 1
    assert longest is not None and float(longest.group(1)) > 0
