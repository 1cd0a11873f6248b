"""`next` over the real WebSocket: the best case a reader may read, already claimed for
them; never one their scope forbids; caps, push mode and a patient's related studies."""

from __future__ import annotations

import asyncio
import itertools
from typing import Any

import pytest
from redis.asyncio import Redis

from dynamo.directory import DirectoryStore, TenantRules
from dynamo.models import Exam
from dynamo.states import ExamStatus, Priority
from dynamo.store import ExamStore
from loadtest.nextcase_rounds import Round, make_ready, readers_for
from tests.conftest import UNIT, Stack, token
from tests.support.exams import PATH_TO, exam_bundle, exam_in
from tests.support.wsclient import WsClient
from worklist_cache import keys

S = ExamStatus
_n = itertools.count(1)


async def cached(redis: Redis, *exams: Exam, timeout: float = 10.0) -> None:
    """Wait until the relay put these exams, in their current version, in the cache."""
    loop = asyncio.get_running_loop()
    deadline = loop.time() + timeout * UNIT
    for exam in exams:
        while True:
            version = await redis.hget(keys.versions(exam.tenant), exam.accession)
            if version is not None and int(version) >= exam.version:
                break
            assert loop.time() < deadline, f"{exam.accession} never reached the cache"
            await asyncio.sleep(0.02)


async def watcher_offer_ends(stack: Stack, exam_id: str) -> None:
    """End a live offer at once (as a lapse would, without waiting a minute)."""
    desk = stack.app.state.gw.offers
    state = await desk.get("northwind", exam_id)
    assert state is not None and state["reader"] == "t-watch"
    await desk.drop("northwind", exam_id)


async def set_rules(store: ExamStore, **rules: Any) -> None:
    d = DirectoryStore(store)
    entry = TenantRules(tenant="northwind", **rules)
    if await d.rules("northwind") is None:
        await d.add(entry, actor="tests")
    else:
        await d.update(entry, actor="tests")


async def related(store: ExamStore, first: Exam) -> Exam:
    """Another study of the same patient, ready to read."""
    exam, order, _ = exam_bundle(site=first.site, subspecialty=first.subspecialty)
    exam = exam.model_copy(
        update={"patient_id": first.patient_id, "mrn": first.mrn, "order_id": order.order_id}
    )
    order = order.model_copy(update={"patient_id": first.patient_id})
    exam = await store.create_exam(exam, order)
    for step in PATH_TO[S.COMPLETED]:
        exam = await store.transition(exam.patient_id, exam.accession, step)
    return exam


async def test_next_hands_the_most_urgent_case_in_scope_already_claimed(
    stack: Stack, store: ExamStore, redis: Redis
) -> None:
    routine_gen = await exam_in(store, S.COMPLETED, site="NW-GEN")
    stat_ort = await exam_in(store, S.COMPLETED, site="NW-ORT", priority=Priority.STAT)
    not_ready = await exam_in(store, S.IN_PROGRESS, site="NW-GEN", priority=Priority.STAT)
    await cached(redis, routine_gen, stat_ort, not_ready)
    gen_only = await WsClient.open(stack.ws_url, token("t-gen", sites=("NW-GEN",)))
    watcher = await WsClient.open(stack.ws_url, token("t-watch"))
    await watcher.subscribe("s")

    got = await gen_only.request({"type": "next"})
    assert got["type"] == "claimed", got
    # The STAT at NW-ORT is more urgent, but not theirs to read.
    assert got["exam_id"] == routine_gen.accession
    assert got["token"] and got["version"] == routine_gen.version + 1
    assert got["decision"]["rule"] == "most-urgent" and got["decision"]["reader"] == "t-gen"
    seen = await watcher.until(
        lambda f: f.get("type") == "delta" and f["delta"]["exam_id"] == routine_gen.accession
    )
    assert seen["delta"]["claimed_by"] == "t-gen" and "token" not in str(seen)
    # The claim is an ordinary one: the holder signs under it.
    signed = await gen_only.request({"type": "sign", "exam_id": got["exam_id"], "status": "FINAL"})
    assert signed["type"] == "signed", signed

    nothing = await gen_only.request({"type": "next"})
    assert nothing["type"] == "error" and nothing["code"] == "nothing_eligible", nothing
    assert stat_ort.accession not in str(nothing)

    # The STAT is offered to the watcher (the one reader online who may read it), and
    # theirs to answer: nobody else is handed it meanwhile. (t-any comes online only
    # once the offer is out: on a fast box it could otherwise be offered to t-any, whose
    # sub sorts first among equal STAT loads.)
    if not [f for f in watcher.frames if f.get("type") == "offer"]:  # not read past yet
        await watcher.until(lambda f: f.get("type") == "offer", 10)
    anyone = await WsClient.open(stack.ws_url, token("t-any"))
    held_back = await anyone.request({"type": "next"})
    assert held_back["code"] == "nothing_eligible", held_back
    await watcher.close()  # gone: the offer lapses to t-any in time; `next` need not wait
    await watcher_offer_ends(stack, stat_ort.accession)
    stat = await anyone.request({"type": "next"})
    assert stat["type"] == "claimed" and stat["exam_id"] == stat_ort.accession, stat
    assert stat["decision"]["priority"] == "STAT"
    # The decision is recorded for the coordinator.
    recorded = await stack.app.state.gw.orchestrator.decisions("northwind")
    assert [(d["exam_id"], d["reader"]) for d in recorded if d["how"] == "next"] == [
        (stat_ort.accession, "t-any"),
        (routine_gen.accession, "t-gen"),
    ]
    for c in (gen_only, anyone):
        await c.close()


async def test_caps_push_mode_and_coordinators(
    stack: Stack, store: ExamStore, redis: Redis
) -> None:
    await set_rules(store, mode="push", max_open_claims=2)
    exams = [await exam_in(store, S.COMPLETED) for _ in range(4)]
    await cached(redis, *exams)
    reader = await WsClient.open(stack.ws_url, token("t-cap"))

    hand = await reader.request({"type": "claim", "exam_id": exams[0].accession})
    assert hand["type"] == "error" and hand["code"] == "assignment_only", hand
    got = [await reader.request({"type": "next"}) for _ in range(3)]
    assert [g["type"] for g in got[:2]] == ["claimed", "claimed"], got
    assert got[2]["code"] == "at_cap", got[2]
    assert got[2]["detail"] == {"open_claims": 2, "max_open_claims": 2}
    # Finishing one frees a place.
    await reader.request({"type": "sign", "exam_id": got[0]["exam_id"], "status": "FINAL"})
    again = await reader.request({"type": "next"})
    assert again["type"] == "claimed", again

    coordinator = await WsClient.open(stack.ws_url, token("t-coord", roles=("coordinator",)))
    refused = await coordinator.request({"type": "next"})
    assert refused["code"] == "forbidden", refused

    # A change of the rules applies live (the directory's notice reaches the gateway).
    await set_rules(store, mode="free", max_open_claims=2)
    loop = asyncio.get_running_loop()
    deadline = loop.time() + 10 * UNIT
    while True:
        left = [e for e in exams if e.accession not in {g.get("exam_id") for g in [*got, again]}]
        reply = await reader.request({"type": "claim", "exam_id": left[0].accession})
        if reply.get("code") != "assignment_only":
            break
        assert loop.time() < deadline, "the rules change never applied"
        await asyncio.sleep(0.1)
    assert reply["type"] == "claimed", reply
    await reader.close()
    await coordinator.close()


async def test_a_patients_related_studies_go_to_the_same_reader(
    stack: Stack, store: ExamStore, redis: Redis
) -> None:
    first = await exam_in(store, S.COMPLETED, priority=Priority.URGENT)
    await cached(redis, first)
    ana = await WsClient.open(stack.ws_url, token("t-ana"))
    ben = await WsClient.open(stack.ws_url, token("t-ben"))
    assert (await ana.request({"type": "next"}))["exam_id"] == first.accession

    second = await related(store, first)  # URGENT is not asked: the same patient's study
    other = await exam_in(store, S.COMPLETED, priority=Priority.ROUTINE)
    await cached(redis, second, other)
    # Ben is handed the other case, never Ana's patient's second study...
    assert (await ben.request({"type": "next"}))["exam_id"] == other.accession
    assert (await ben.request({"type": "next"}))["code"] == "nothing_eligible"
    # ...which Ana gets, by the same-patient rule.
    got = await ana.request({"type": "next"})
    assert got["exam_id"] == second.accession and got["decision"]["rule"] == "same-patient"
    await ana.close()
    await ben.close()


@pytest.mark.parametrize("rounds", [3])
async def test_concurrent_presses_hand_each_case_once(
    stack: Stack, store: ExamStore, redis: Redis, rounds: int
) -> None:
    """One gateway here; `tests/test_next_rounds.py` races two gateway processes."""
    people = readers_for(12)
    clients = [await WsClient.open(stack.ws_url, token(p.sub, **p.token_args())) for p in people]
    for n in range(rounds):
        exams = await make_ready(store, Round.layout(8, n), f"c{n}")
        await cached(redis, *exams)
        rnd = Round(exams, people)
        await rnd.play([c.request for c in clients])
        assert rnd.violations() == [], f"round {n}"
        assert len(rnd.outcome.handed) == len(exams)
    for c in clients:
        await c.close()
