"""The cycle collector in a long-lived gateway: what grows with connections stays out of
its reach (a full collection stops every client's deliveries for as long as it walks),
and its pauses are on /metrics."""

from __future__ import annotations

import gc
import re

import httpx
import orjson

from gateway.collector import Pauses
from gateway.hub import Client, Hub
from gateway.routing import Subscription
from tests.conftest import Stack
from tests.support.wsclient import WsClient
from worklist_cache.views import Scope, View


class _Transport:
    def __init__(self) -> None:
        self.out: list[bytes] = []

    def write(self, data: bytes) -> None:
        self.out.append(data)

    def is_closing(self) -> bool:
        return False


class _Writer:
    plain = False  # (frames reach `write` as text)
    kept = False

    def __init__(self) -> None:
        self.transport = _Transport()
        self.texts: list[str] = []

    def ready(self) -> bool:
        return True

    def write(self, text: str) -> None:
        self.texts.append(text)


def _message(exam_id: str, version: int, offset: str, op: str = "upsert") -> bytes:
    row = {"op": op, "tenant": "northwind", "exam_id": exam_id, "version": version}
    row |= {"status": "COMPLETED", "modality": "CT", "priority": "STAT", "site": "NW-GEN"}
    row |= {"subspecialty": "neuro"}
    return orjson.dumps({"epoch": "e1", "offset": offset, "delta": row})


def test_a_subscriptions_holds_grow_without_growing_what_a_collection_walks() -> None:
    hub = Hub()
    client = Client(100, lambda _: None, hub=hub)
    writer = client.writer = _Writer()  # type: ignore[assignment]
    view = View(statuses=[])
    sub = Subscription("s1", "northwind", view, view.matcher(), Scope("northwind"), "e1")
    sub.pending = None
    client.subs["s1"] = sub
    hub.attach(client, "northwind")
    for n in range(2000):
        hub.on_message("northwind", _message(f"X{n:05d}", 1, f"{n + 1}-0"))
    hub.on_message("northwind", _message("X00007", 2, "3000-0", op="remove"))
    assert len(sub.held) == 1999, "every exam sent is held, the removed one is not"
    assert sub.held["X00008"] == 1
    # One str -> int dict: CPython leaves it untracked, so a full collection does not
    # walk its entries (a set per subscription cost 4 M entries a walk at 1,000 clients).
    assert not gc.is_tracked(sub.held)
    assert len(writer.texts) == 2001
    leave = orjson.loads(writer.texts[-1])
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
