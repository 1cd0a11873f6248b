"""The claim gate (`gateway.claimgate`): concurrent claims of one exam are answered
`conflict` at once from a short Redis reservation, while DynamoDB's conditional write
stays the one guarantee of a single reader."""

from __future__ import annotations

import asyncio
from typing import Any

import httpx
import orjson
import pytest
from redis.asyncio import Redis

from dynamo.deltas import ExamDelta
from dynamo.models import now_ms
from dynamo.states import ExamStatus
from dynamo.store import ExamStore
from gateway.claimgate import ClaimGate
from tests.conftest import UNIT, Stack, token
from tests.support.exams import exam_in
from tests.support.wsclient import WsClient
from worklist_cache import WorklistFeed, keys

S = ExamStatus


@pytest.fixture
def gateway_overrides() -> dict[str, Any]:
    # Long enough that every claim of a test arrives while the reservation stands.
    return {"claim_gate_ms": 10_000}


async def _metric(stack: Stack, name: str) -> float:
    async with httpx.AsyncClient() as http:
        text = (await http.get(f"{stack.http_url}/metrics", timeout=5)).text
    for line in text.splitlines():
        if line.startswith(f"gateway_{name}_total "):
            return float(line.split()[1])
    return 0.0


async def test_concurrent_claims_one_wins_the_others_hear_conflict_from_the_gate(
    stack: Stack, store: ExamStore
) -> None:
    readers = [
        await WsClient.open(stack.ws_url, token(f"t-r{i}", name=f"Dr. R{i}")) for i in range(8)
    ]
    exam = await exam_in(store, S.COMPLETED)
    replies = await asyncio.gather(
        *(r.request({"type": "claim", "exam_id": exam.accession}) for r in readers)
    )
    won = [r for r, reply in zip(readers, replies, strict=True) if reply["type"] == "claimed"]
    assert len(won) == 1, replies
    winner = won[0].user
    assert winner is not None
    lost = [reply for reply in replies if reply["type"] != "claimed"]
    assert {reply["code"] for reply in lost} == {"conflict"}
    assert all(reply["detail"]["holder"]["sub"] == winner["sub"] for reply in lost)
    # The losers never reached DynamoDB: one write, the winner's.
    assert await _metric(stack, "claims_gated") == len(lost)
    assert (await store.get_exam(exam.patient_id, exam.accession)).version == exam.version + 1


async def test_a_release_opens_the_gate_at_once(stack: Stack, store: ExamStore) -> None:
    ana = await WsClient.open(stack.ws_url, token("t-ana", name="Dr. Ana"))
    ben = await WsClient.open(stack.ws_url, token("t-ben", name="Dr. Ben"))
    adm = await WsClient.open(stack.ws_url, token("t-adm", name="Jo Admin", roles=("admin",)))
    exam = await exam_in(store, S.COMPLETED)
    assert (await ana.request({"type": "claim", "exam_id": exam.accession}))["type"] == "claimed"
    assert (await ben.request({"type": "claim", "exam_id": exam.accession}))["code"] == "conflict"
    assert (await ana.request({"type": "release", "exam_id": exam.accession}))["type"] == (
        "released"
    )
    assert (await ben.request({"type": "claim", "exam_id": exam.accession}))["type"] == "claimed"
    # A broken lock opens it too.
    broken = await adm.request({"type": "break_lock", "exam_id": exam.accession, "reason": "x"})
    assert broken["type"] == "lock_broken"
    assert (await ana.request({"type": "claim", "exam_id": exam.accession}))["type"] == "claimed"


async def test_the_holder_claims_again_from_another_tab(stack: Stack, store: ExamStore) -> None:
    first = await WsClient.open(stack.ws_url, token("t-ana", name="Dr. Ana"))
    second = await WsClient.open(stack.ws_url, token("t-ana", name="Dr. Ana"))
    exam = await exam_in(store, S.COMPLETED)
    assert (await first.request({"type": "claim", "exam_id": exam.accession}))["type"] == "claimed"
    again = await second.request({"type": "claim", "exam_id": exam.accession})
    assert again["type"] == "claimed"


async def test_a_refused_claim_takes_its_reservation_back(stack: Stack, store: ExamStore) -> None:
    """The first claimer is refused by DynamoDB: those waiting on its reservation try
    again and get DynamoDB's true answer, never a `conflict` naming nobody's claim."""
    readers = [await WsClient.open(stack.ws_url, token(f"t-r{i}")) for i in range(5)]
    exam = await exam_in(store, S.IN_PROGRESS)  # not ready to read
    replies = await asyncio.gather(
        *(r.request({"type": "claim", "exam_id": exam.accession}, timeout=10) for r in readers)
    )
    assert {reply.get("code") for reply in replies} == {"invalid_transition"}, replies


async def test_a_dead_holders_reservation_blocks_only_until_its_ttl(
    stack: Stack, store: ExamStore, redis: Redis
) -> None:
    ben = await WsClient.open(stack.ws_url, token("t-ben"))
    exam = await exam_in(store, S.COMPLETED)
    gate = keys.claim_gate("northwind", exam.accession)
    # A node that won a claim and died before the release cleared its reservation ...
    ghost = {"sub": "t-ghost", "name": "Dr. Ghost", "lease_expires_at": now_ms() + 60_000}
    await redis.set(gate, "dead|" + orjson.dumps(ghost).decode(), px=int(400 * UNIT))
    blocked = await ben.request({"type": "claim", "exam_id": exam.accession})
    assert blocked["code"] == "conflict"
    assert blocked["detail"]["holder"] == {"sub": "t-ghost", "name": "Dr. Ghost"}
    await asyncio.sleep(max(0, int(await redis.pttl(gate))) / 1000 + 0.05)
    assert not await redis.exists(gate), "lapsed on its own"
    assert (await ben.request({"type": "claim", "exam_id": exam.accession}))["type"] == "claimed"
    # ... or died mid-claim: the claim waits for it to lapse, then goes on.
    other = await exam_in(store, S.COMPLETED)
    midway = {"sub": "t-ghost", "name": "Dr. Ghost", "lease_expires_at": None}
    await redis.set(
        keys.claim_gate("northwind", other.accession),
        "dead|" + orjson.dumps(midway).decode(),
        px=int(400 * UNIT),
    )
    got = await ben.request({"type": "claim", "exam_id": other.accession}, timeout=10)
    assert got["type"] == "claimed"


async def test_a_stale_cache_row_never_refuses_a_claim(
    stack: Stack, store: ExamStore, redis: Redis
) -> None:
    """The cache says someone holds the exam; DynamoDB says nobody does: DynamoDB wins."""
    ben = await WsClient.open(stack.ws_url, token("t-ben"))
    exam = await exam_in(store, S.COMPLETED)
    held = exam.model_copy(
        update={
            "version": exam.version + 1,
            "claimed_by": "t-ghost",
            "claimed_by_name": "Dr. Ghost",
            "lease_expires_at": now_ms() + 60_000,
        }
    )
    await WorklistFeed(redis).publish([ExamDelta.from_exam(held)])
    assert (await ben.request({"type": "claim", "exam_id": exam.accession}))["type"] == "claimed"


async def test_without_redis_the_gate_steps_aside() -> None:
    """Redis unreachable: no reservation, no refusal; the claim goes to DynamoDB."""
    dead = Redis.from_url("redis://127.0.0.1:1/0", socket_connect_timeout=0.2)
    try:
        gate = ClaimGate(dead, 2000)
        assert await gate.enter("northwind", "X1", "t-ana", "Dr. Ana") is None
        await gate.clear("northwind", "X1")  # logged, not raised
    finally:
        await dead.aclose()
