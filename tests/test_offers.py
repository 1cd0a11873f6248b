"""STAT offers over the real WebSocket: one eligible online reader at a time, the lowest
STAT load first; decline or lapse passes it on; no reader alerts the coordinators; an
offer made by one gateway node is answered on another."""

from __future__ import annotations

import asyncio
from collections.abc import AsyncIterator
from typing import Any

import pytest
from redis.asyncio import Redis

from dynamo.models import now_ms
from dynamo.settings import DynamoSettings
from dynamo.states import ExamStatus, Priority
from dynamo.store import ExamStore
from tests.conftest import UNIT, Stack, gateway_node, token
from tests.support.exams import exam_in
from tests.support.wsclient import WsClient
from tests.test_next_case import cached, set_rules

S = ExamStatus


@pytest.fixture
async def second_node(
    stack: Stack, dynamo_settings: DynamoSettings, redis_url: str
) -> AsyncIterator[str]:
    """Another gateway node on the same Redis and DynamoDB (its ws URL)."""
    async with gateway_node(dynamo_settings, redis_url) as (url, _app):
        yield url


def offer_of(exam_id: str) -> Any:
    return lambda f: f.get("type") == "offer" and f["exam_id"] == exam_id


async def test_offer_decline_next_reader_accept_across_two_nodes(
    stack: Stack, second_node: str, store: ExamStore, redis: Redis
) -> None:
    ana = await WsClient.open(stack.ws_url, token("t-ana", sites=("NW-GEN",)))
    ben = await WsClient.open(second_node, token("t-ben"))
    cy = await WsClient.open(stack.ws_url, token("t-cy", sites=("NW-ORT",)))
    stat = await exam_in(store, S.COMPLETED, site="NW-GEN", priority=Priority.STAT)
    await cached(redis, stat)

    # Ana and Ben are equally loaded (nothing held): the tie goes by sub, to Ana.
    offer = await ana.until(offer_of(stat.accession), 10)
    assert offer["decision"]["rule"] == "lowest-stat-load" and offer["row"]["site"] == "NW-GEN"
    assert offer["expires_at"] > offer["row"]["updated_at"]
    assert "token" not in str(offer)
    declined = await ana.request({"type": "offer_decline", "exam_id": stat.accession})
    assert declined == {**declined, "type": "offer_ended", "reason": "declined"}, declined
    # Passed on to Ben (on the other node), never to Cy (NW-ORT only) nor back to Ana.
    offer = await ben.until(offer_of(stat.accession), 10)
    gone = await ana.request({"type": "offer_accept", "exam_id": stat.accession})
    assert gone["code"] == "offer_gone", gone
    got = await ben.request({"type": "offer_accept", "exam_id": stat.accession})
    assert got["type"] == "claimed" and got["token"], got
    assert got["decision"]["reader"] == "t-ben"
    await asyncio.sleep(1.5 * UNIT)
    assert not [f for f in cy.frames if f.get("type") == "offer"]
    assert len([f for f in ana.frames if f.get("type") == "offer"]) == 1

    recorded = await stack.app.state.gw.orchestrator.decisions("northwind")
    trail = [(d["how"], d.get("reader")) for d in reversed(recorded)]
    assert trail == [
        ("offer", "t-ana"),
        ("offer-declined", "t-ana"),
        ("offer", "t-ben"),
        ("offer-accepted", "t-ben"),
    ], trail
    for c in (ana, ben, cy):
        await c.close()


async def test_a_stat_nobody_may_read_alerts_coordinators_at_once(
    stack: Stack, store: ExamStore, redis: Redis
) -> None:
    coordinator = await WsClient.open(stack.ws_url, token("t-coord", roles=("coordinator",)))
    elsewhere = await WsClient.open(
        stack.ws_url, token("t-coord-lk", roles=("coordinator",), sites=("NW-IMG",))
    )
    reader = await WsClient.open(stack.ws_url, token("t-ort", sites=("NW-ORT",)))
    stat = await exam_in(store, S.COMPLETED, site="NW-GEN", priority=Priority.STAT)
    await cached(redis, stat)
    alert = await coordinator.until(lambda f: f.get("type") == "alert", 10)
    assert (alert["kind"], alert["exam_id"]) == ("no_reader", stat.accession), alert
    await asyncio.sleep(1 * UNIT)
    # The coordinator of another site is not told of a row they may not see.
    assert not [f for f in elsewhere.frames if f.get("type") == "alert"]
    assert not [f for f in reader.frames if f.get("type") == "offer"]
    for c in (coordinator, elsewhere, reader):
        await c.close()


async def test_an_unanswered_offer_lapses_to_the_next_reader(
    stack: Stack, store: ExamStore, redis: Redis
) -> None:
    await set_rules(store, stat_offer_seconds=5)
    ana = await WsClient.open(stack.ws_url, token("t-ana"))
    ben = await WsClient.open(stack.ws_url, token("t-ben"))
    stat = await exam_in(store, S.COMPLETED, priority=Priority.STAT)
    await cached(redis, stat)
    first = await ana.until(offer_of(stat.accession), 10)
    assert 3_000 < first["expires_at"] - now_ms() <= 5_000
    ended = await ana.until(lambda f: f.get("type") == "offer_ended", 10)
    assert ended["reason"] == "lapsed"
    await ben.until(offer_of(stat.accession), 5)
    for c in (ana, ben):
        await c.close()


async def test_a_stat_waiting_too_long_alerts_the_coordinators_once(
    stack: Stack, store: ExamStore, redis: Redis
) -> None:
    coordinator = await WsClient.open(stack.ws_url, token("t-coord", roles=("coordinator",)))
    ana = await WsClient.open(stack.ws_url, token("t-ana"))
    stat = await exam_in(store, S.COMPLETED, priority=Priority.STAT)
    await cached(redis, stat)
    await ana.until(offer_of(stat.accession), 10)
    # As if it had been ready for 11 minutes (the default alert is at 10).
    desk = stack.app.state.gw.offers
    state = await desk.get("northwind", stat.accession)
    assert state is not None and not state["alerted"]
    await desk.put("northwind", {**state, "ready_at": now_ms() - 11 * 60_000})
    alert = await coordinator.until(lambda f: f.get("type") == "alert", 10)
    assert (alert["kind"], alert["exam_id"]) == ("waiting", stat.accession), alert
    assert alert["waiting_ms"] >= 11 * 60_000 and alert["message"] == "STAT waiting 11 min"
    await asyncio.sleep(1.5 * UNIT)
    assert len([f for f in coordinator.frames if f.get("type") == "alert"]) == 1
    for c in (coordinator, ana):
        await c.close()


async def test_a_stat_is_never_offered_to_a_reader_outside_its_modality(
    stack: Stack, store: ExamStore, redis: Redis
) -> None:
    # Both read every site; t-aa reads only MR. Equal STAT loads tie by sub, so without
    # the modality in the offer desk's scope the CT STAT (and its row) would go to t-aa.
    mr_only = await WsClient.open(stack.ws_url, token("t-aa", modalities=("MR",)))
    anyone = await WsClient.open(stack.ws_url, token("t-zz"))
    stat = await exam_in(store, S.COMPLETED, priority=Priority.STAT)
    await cached(redis, stat)
    offer = await anyone.until(offer_of(stat.accession), 10)
    assert offer["decision"]["reader"] == "t-zz"
    await asyncio.sleep(1.5 * UNIT)  # three more offer ticks
    assert not [f for f in mr_only.frames if stat.accession in str(f)]
    for c in (mr_only, anyone):
        await c.close()
