"""The protocol's documentation stays generated from the code."""

from __future__ import annotations

import json
from pathlib import Path
from typing import Any

import httpx
import orjson

from gateway.protocol import DeltaFrame, schema, server_frame
from tests.conftest import Stack

DOCS = Path(__file__).resolve().parent.parent / "docs"


def test_schema_file_matches_the_models() -> None:
    on_disk = json.loads((DOCS / "protocol.schema.json").read_text())
    assert on_disk == json.loads(json.dumps(schema())), (
        "docs/protocol.schema.json is stale: run `make protocol-schema`"
    )


async def test_gateway_serves_the_schema(stack: Stack) -> None:
    async with httpx.AsyncClient() as http:
        resp = await http.get(stack.http_url + "/protocol/schema.json")
    assert resp.status_code == 200
    assert resp.json()["server_to_client"] == schema()["server_to_client"]


def test_spliced_delta_frames_are_valid_protocol_frames() -> None:
    """The hub builds delta frames from bytes; they must parse as the documented model."""
    from gateway.hub import Client
    from gateway.routing import Subscription
    from worklist_cache.views import Scope, View

    raw = (
        '{"epoch":"e1","offset":"5-0","delta":{"op":"upsert","tenant":"northwind",'
        '"site":"NW-GEN","exam_id":"A1","version":3,"status":"COMPLETED","priority":"STAT",'
        '"modality":"CT","procedure":"CT head","body_part":"HEAD","subspecialty":"neuro",'
        '"mrn":"X1","patient_name":"TEST^A","scheduled_at":1,"tat_due_at":2,"updated_at":3}}'
    )
    row = json.loads(raw)["delta"]
    client = Client(10, lambda c: None)  # no transport: every frame is queued
    sub = Subscription(
        "s-1", "northwind", View(), View().matcher(), Scope("northwind"), "e1", pending=None
    )
    client.offer(sub, "5-0", row, raw, "e1")
    client.offer(sub, "6-0", {**row, "status": "FINAL", "version": 4}, raw, "e1")  # leaves
    sent = [client.queue.get_nowait()[1] for _ in range(client.queue.qsize())]
    parsed = [server_frame.validate_json(frame) for frame in sent]
    assert [type(f) for f in parsed] == [DeltaFrame, DeltaFrame]
    assert parsed[0].sub == "s-1" and not parsed[0].leave
    assert parsed[1].leave
    assert json.loads(sent[1])["delta"] == {"exam_id": "A1", "version": 4}, "no row in a leave"


async def test_a_published_message_is_what_feed_message_builds(redis: Any) -> None:
    """The Lua apply and its Python mirror (used for resume) build the same bytes."""
    from dynamo.deltas import ExamDelta
    from tests.support.exams import exam_bundle
    from worklist_cache import WorklistFeed, keys
    from worklist_cache.feed import feed_message

    exam, _, _ = exam_bundle()
    pubsub = redis.pubsub()
    await pubsub.subscribe(keys.channel(exam.tenant))
    await pubsub.get_message(timeout=1.0)  # the subscribe confirmation
    delta = ExamDelta.from_exam(exam)
    (offset,) = await WorklistFeed(redis).publish([delta])
    message = None
    while message is None:
        message = await pubsub.get_message(ignore_subscribe_messages=True, timeout=1.0)
    await pubsub.aclose()
    epoch = json.loads(message["data"])["epoch"]
    assert offset is not None
    expected = feed_message(epoch, offset, orjson.dumps(delta.model_dump(mode="json")))
    assert message["data"].decode() == expected
