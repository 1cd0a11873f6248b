"""Fakes for the hub's unit tests: a writer and transport that record what the hub
wrote (and can be paused), a client subscribed to the whole northwind feed, and feed
messages of one exam."""

from __future__ import annotations

from typing import Any

import orjson

from gateway.hub import Client, Hub
from gateway.routing import Subscription
from gateway.wire import encode_text
from worklist_cache.views import Scope, View


def text_of(frame: bytes) -> str:
    """The text of one server text frame (`gateway.wire.encode_text`'s inverse)."""
    assert frame[0] == 0x81, frame[:2]
    n, at = frame[1], 2
    if n == 126:
        n, at = int.from_bytes(frame[2:4], "big"), 4
    elif n == 127:
        n, at = int.from_bytes(frame[2:10], "big"), 10
    assert len(frame) == at + n
    return frame[at:].decode()


class FakeTransport:
    """Where the hub hands shared bytes straight (`DirectWriter.transport`)."""

    def __init__(self, writer: FakeWriter) -> None:
        self.writer = writer

    def write(self, frame: bytes) -> None:
        assert not self.writer.paused
        self.writer.wires.append(frame)
        self.writer.written.append(text_of(frame))


class FakeWriter:
    """A transport that can be paused, recording what was written."""

    plain = True
    kept = False  # (`ready` is asked, not a protocol's `live` flag)

    def __init__(self) -> None:
        self.paused = False
        self.written: list[str] = []
        self.wires: list[bytes] = []  # the bytes handed straight to the transport
        self.transport = FakeTransport(self)

    def ready(self) -> bool:
        return not self.paused

    def write(self, text: str, wire: bytes | None = None) -> None:
        assert wire is None or wire == encode_text(text)
        self.written.append(text)


def raw(exam_id: str, version: int, offset: str, op: str = "upsert") -> tuple[str, dict[str, Any]]:
    """A feed message of one northwind exam (its text, and its row parsed)."""
    row = {
        "op": op,
        "tenant": "northwind",
        "site": "NW-GEN",
        "exam_id": exam_id,
        "version": version,
        "status": "COMPLETED",
        "priority": "STAT",
        "modality": "CT",
        "subspecialty": "neuro",
    }
    raw = '{"epoch":"e1","offset":"' + offset + '","delta":' + orjson.dumps(row).decode() + "}"
    return raw, row


def hub_client(hub: Hub) -> tuple[Client, FakeWriter, list[Client]]:
    """A client on `hub` with one whole-feed northwind subscription (`s1`), its writer,
    and the list it lands in when evicted."""
    evicted: list[Client] = []
    client = Client(5, evicted.append, hub=hub)
    writer = FakeWriter()
    client.writer = writer  # type: ignore[assignment]
    sub = Subscription(
        "s1",
        "northwind",
        View(statuses=[]),
        View(statuses=[]).matcher(),
        Scope("northwind"),
        "e1",
        pending=None,
    )
    client.subs["s1"] = sub
    hub.attach(client, "northwind")
    return client, writer, evicted
