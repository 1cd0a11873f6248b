"""Live behaviour through a real gateway: claims seen by others, presence, resume after a
drop, tenant isolation under a random workload, slow-client eviction, batching."""

from __future__ import annotations

import asyncio
import random
from typing import Any

import pytest
from redis.asyncio import Redis

from dynamo.deltas import ExamDelta
from dynamo.states import ExamStatus
from dynamo.store import ExamStore
from tests.conftest import Stack, token
from tests.support.exams import exam_bundle, exam_in
from tests.support.wsclient import Frame, StalledClient, WsClient
from worklist_cache import WorklistFeed

S = ExamStatus


def delta_of(exam_id: str, version: int | None = None) -> Any:
    def match(f: Frame) -> bool:
        d = f.get("delta") or {}
        return d.get("exam_id") == exam_id and (version is None or d.get("version") == version)

    return match


async def settled(client: WsClient, exam: Any) -> None:
    """Wait until the client saw `exam` at its current version (snapshot or delta)."""
    for frame in client.frames:
        for row in frame.get("rows", []):
            if row["exam_id"] == exam.accession and row["version"] >= exam.version:
                return
    await client.until(delta_of(exam.accession, exam.version), timeout=10)


# ---- claims ------------------------------------------------------------------------------


async def test_a_claim_is_seen_by_everyone_and_its_token_by_nobody_else(
    stack: Stack, store: ExamStore
) -> None:
    ana = await WsClient.open(stack.ws_url, token("t-ana", name="Dr. Ana"))
    ben = await WsClient.open(stack.ws_url, token("t-ben", name="Dr. Ben"))
    await ana.subscribe("s")
    await ben.subscribe("s")
    exam = await exam_in(store, S.COMPLETED)
    await settled(ben, exam)

    claimed = await ana.request({"type": "claim", "exam_id": exam.accession})
    assert claimed["type"] == "claimed" and claimed["version"] == exam.version + 1
    seen = await ben.until(delta_of(exam.accession, claimed["version"]))
    assert seen["delta"]["claimed_by"] == "t-ana"
    assert seen["delta"]["claimed_by_name"] == "Dr. Ana"

    conflict = await ben.request({"type": "claim", "exam_id": exam.accession})
    assert conflict["code"] == "conflict"
    assert conflict["detail"]["holder"] == {"sub": "t-ana", "name": "Dr. Ana"}
    stolen = await ben.request(
        {"type": "release", "exam_id": exam.accession, "token": claimed["token"]}
    )
    assert stolen["code"] == "stale_token", "a token is bound to its holder"
    secret = claimed["token"].split(".")[1]
    assert not any(secret in str(f) for f in ben.frames)

    signed = await ana.request({"type": "sign", "exam_id": exam.accession, "status": "FINAL"})
    assert signed["type"] == "signed" and signed["status"] == "FINAL"
    gone = await ben.until(delta_of(exam.accession, signed["version"]))
    assert gone["leave"] is True  # FINAL leaves the default (open) view


async def test_release_puts_the_exam_back_for_others(stack: Stack, store: ExamStore) -> None:
    ana = await WsClient.open(stack.ws_url, token("t-ana"))
    ben = await WsClient.open(stack.ws_url, token("t-ben"))
    await ben.subscribe("s")
    exam = await exam_in(store, S.COMPLETED)
    await settled(ben, exam)
    await ana.request({"type": "claim", "exam_id": exam.accession})
    released = await ana.request({"type": "release", "exam_id": exam.accession})
    assert released["type"] == "released"
    back = await ben.until(delta_of(exam.accession, released["version"]))
    assert back["delta"]["claimed_by"] is None
    assert (await ben.request({"type": "claim", "exam_id": exam.accession}))["type"] == "claimed"


async def test_my_reads_view_follows_my_claims(stack: Stack, store: ExamStore) -> None:
    ana = await WsClient.open(stack.ws_url, token("t-ana"))
    snap = await ana.subscribe("mine", claimed_by_me=True)
    assert snap["rows"] == []
    exam = await exam_in(store, S.COMPLETED)
    other = await exam_in(store, S.COMPLETED)
    claimed = await ana.request({"type": "claim", "exam_id": exam.accession})
    entered = await ana.until(delta_of(exam.accession, claimed["version"]))
    assert entered["sub"] == "mine" and not entered.get("leave")
    await ana.request({"type": "release", "exam_id": exam.accession})
    left = await ana.until(lambda f: f.get("sub") == "mine" and f.get("leave") is True)
    assert left["delta"]["exam_id"] == exam.accession
    assert not any(f.get("delta", {}).get("exam_id") == other.accession for f in ana.frames)


async def test_an_admin_breaks_a_lock_and_the_holder_is_told_why(
    stack: Stack, store: ExamStore
) -> None:
    ana = await WsClient.open(stack.ws_url, token("t-ana", name="Dr. Ana"))
    admin = await WsClient.open(stack.ws_url, token("t-adm", name="Jo Admin", roles=("admin",)))
    exam = await exam_in(store, S.COMPLETED)
    await ana.request({"type": "claim", "exam_id": exam.accession})
    broken = await admin.request(
        {"type": "break_lock", "exam_id": exam.accession, "reason": "reader went home"}
    )
    assert broken["type"] == "lock_broken" and broken["previous_holder"] == "Dr. Ana"
    lost = await ana.until(lambda f: f["type"] == "claim_lost")
    assert (lost["exam_id"], lost["reason"], lost["by"]) == (exam.accession, "broken", "Jo Admin")
    assert lost["message"] == "reader went home"
    assert (await ana.request({"type": "release", "exam_id": exam.accession}))["code"] in (
        "stale_token"
    )


async def test_a_reconnecting_holder_claims_again_and_keeps_the_exam(
    stack: Stack, store: ExamStore
) -> None:
    exam = await exam_in(store, S.COMPLETED)
    tab = await WsClient.open(stack.ws_url, token("t-ana"))
    await tab.request({"type": "claim", "exam_id": exam.accession})
    await tab.close()  # a reload: the claim is not released
    assert (await store.get_exam(exam.patient_id, exam.accession)).claimed_by == "t-ana"
    again = await WsClient.open(stack.ws_url, token("t-ana"))
    assert (await again.request({"type": "claim", "exam_id": exam.accession}))["type"] == "claimed"
    ben = await WsClient.open(stack.ws_url, token("t-ben"))
    assert (await ben.request({"type": "claim", "exam_id": exam.accession}))["code"] == "conflict"


# ---- presence ----------------------------------------------------------------------------


async def test_presence_shows_who_is_online_and_what_they_read(
    stack: Stack, store: ExamStore
) -> None:
    ana = await WsClient.open(stack.ws_url, token("t-ana", name="Dr. Ana"))
    ana_tab2 = await WsClient.open(stack.ws_url, token("t-ana", name="Dr. Ana"))
    ben = await WsClient.open(stack.ws_url, token("t-ben", name="Dr. Ben"))
    lake = await WsClient.open(stack.ws_url, token("t-lk", tenant="lakeside"))
    state = await ben.request({"type": "presence"})
    users = {u["sub"]: u for u in state["users"]}
    assert set(users) == {"t-ana", "t-ben"}, "other tenants are not visible"
    assert users["t-ana"]["connections"] == 2  # two tabs, one presence

    exam = await exam_in(store, S.COMPLETED)
    await ana.request({"type": "claim", "exam_id": exam.accession})
    reading = await ben.until(
        lambda f: (
            f["type"] == "presence_diff"
            and any(u["sub"] == "t-ana" and u["reading"] == [exam.accession] for u in f["joins"])
        )
    )
    assert reading["leaves"] == []

    await ana.close()
    await ana_tab2.close()
    left = await ben.until(lambda f: f["type"] == "presence_diff" and "t-ana" in f["leaves"])
    assert left is not None
    lake_state = await lake.request({"type": "presence"})
    assert [u["sub"] for u in lake_state["users"]] == ["t-lk"]


# ---- resume ------------------------------------------------------------------------------


async def test_resume_after_a_drop_gets_exactly_what_was_missed(
    stack: Stack, store: ExamStore
) -> None:
    first = await exam_in(store, S.SCHEDULED)
    client = await WsClient.open(stack.ws_url)
    await client.subscribe("s")
    await settled(client, first)
    last = [f for f in client.frames if f["type"] in ("snapshot", "delta")][-1]
    position = {"epoch": last["epoch"], "offset": last["offset"]}
    await client.close()

    # While away: one exam moves on, one arrives, one leaves the open view.
    moved = await store.transition(first.patient_id, first.accession, S.ARRIVED)
    new = await exam_in(store, S.SCHEDULED)
    done = await exam_in(store, S.FINAL)
    watcher = await WsClient.open(stack.ws_url)
    await watcher.subscribe("w", statuses=[])
    await settled(watcher, done)

    back = await WsClient.open(stack.ws_url)
    await back.send({"type": "subscribe", "id": "s", "since": position})
    resumed = await back.until(lambda f: f.get("id") == "s")
    assert resumed["type"] == "resumed", resumed
    missed = [await back.next() for _ in range(resumed["missed"])]
    got = {(f["delta"]["exam_id"], f["delta"]["version"], bool(f.get("leave"))) for f in missed}
    assert (first.accession, moved.version, False) in got
    assert (new.accession, 1, False) in got
    assert (done.accession, done.version, True) in got, "left the view while away"
    assert all(f["sub"] == "s" for f in missed)
    assert len(got) == len(missed), "nothing twice"

    later = await store.transition(new.patient_id, new.accession, S.ARRIVED)
    await back.until(delta_of(new.accession, later.version))  # live again, no gap


async def test_resume_from_another_epoch_is_a_reset_snapshot(
    stack: Stack, store: ExamStore
) -> None:
    exam = await exam_in(store, S.SCHEDULED)
    client = await WsClient.open(stack.ws_url)
    await client.subscribe("w")
    await settled(client, exam)
    await client.send({"type": "subscribe", "id": "s", "since": {"epoch": "gone", "offset": "1-0"}})
    reply = await client.until(lambda f: f.get("id") == "s")
    assert reply["type"] == "snapshot" and reply["reset"] is True
    assert exam.accession in {r["exam_id"] for r in reply["rows"]}


async def test_a_trimmed_history_means_reset(stack: Stack, redis: Redis) -> None:
    feed = WorklistFeed(redis, maxlen=5)  # approximate: whole nodes of ~100 go at once
    exam, _, _ = exam_bundle()
    delta = ExamDelta.from_exam(exam)
    offsets = [
        (await feed.publish([delta.model_copy(update={"version": v})]))[0] for v in range(1, 400)
    ]
    client = await WsClient.open(stack.ws_url)
    snap = await client.subscribe("w")
    position = {"epoch": snap["epoch"], "offset": offsets[0]}
    await client.send({"type": "subscribe", "id": "s", "since": position})
    reply = await client.until(lambda f: f.get("id") == "s")
    assert reply["type"] == "snapshot" and reply["reset"] is True
    recent = {"epoch": snap["epoch"], "offset": offsets[-2]}
    await client.send({"type": "subscribe", "id": "r", "since": recent})
    resumed = await client.until(lambda f: f.get("id") == "r")
    assert (resumed["type"], resumed["missed"]) == ("resumed", 1)


# ---- isolation, load ---------------------------------------------------------------------


async def test_tenants_never_see_each_other_under_a_random_workload(
    stack: Stack, store: ExamStore
) -> None:
    rng = random.Random(11)
    nw = await WsClient.open(stack.ws_url, token("t-nw", tenant="northwind"))
    lk = await WsClient.open(stack.ws_url, token("t-lk", tenant="lakeside"))
    await nw.subscribe("s", statuses=[])
    await lk.subscribe("s", statuses=[])
    for client in (nw, lk):
        await client.request({"type": "presence"})
    written: dict[str, list[Any]] = {"northwind": [], "lakeside": []}
    for _ in range(16):
        tenant = rng.choice(["northwind", "lakeside"])
        site = "NW-GEN" if tenant == "northwind" else "LK-MED"
        exam = await exam_in(store, rng.choice(list(S)), tenant=tenant, site=site)
        written[tenant].append(exam)
    for client, tenant in ((nw, "northwind"), (lk, "lakeside")):
        for exam in written[tenant]:
            await settled(client, exam)
    for client, tenant in ((nw, "northwind"), (lk, "lakeside")):
        other = {e.accession for t, es in written.items() if t != tenant for e in es}
        for frame in client.frames:
            text = str(frame)
            assert not any(acc in text for acc in other), (tenant, frame)
            for row in [frame.get("delta"), *frame.get("rows", [])]:
                assert row is None or row["tenant"] == tenant
            own = "t-nw" if tenant == "northwind" else "t-lk"
            for user in frame.get("users", []) + frame.get("joins", []):
                assert user["sub"] == own, "presence of another tenant"


@pytest.fixture
def gateway_overrides() -> dict[str, Any]:
    return {"client_queue": 200}


async def test_a_client_that_stops_reading_is_evicted_and_others_keep_up(
    stack: Stack, redis: Redis
) -> None:
    stalled = StalledClient(stack.ws_url)
    await stalled.start()
    healthy = await WsClient.open(stack.ws_url)
    await healthy.subscribe("s", statuses=[])
    feed = WorklistFeed(redis)
    exam, _, _ = exam_bundle()
    base = ExamDelta.from_exam(exam)
    for burst in range(60):
        ids = [f"{exam.accession}-{burst}-{i}" for i in range(100)]
        await feed.publish(
            [base.model_copy(update={"exam_id": x, "procedure": "X" * 1000}) for x in ids]
        )
        await healthy.until(delta_of(ids[-1]), timeout=10)
    got = {f["delta"]["exam_id"] for f in healthy.frames if f.get("type") == "delta"}
    assert len(got) == 60 * 100, "the healthy client received every delta"
    assert await stalled.close_code() == 4001


def test_a_backed_up_queue_goes_out_as_batches_with_the_newest_frame_per_exam() -> None:
    from gateway.hub import coalesce

    items: list[tuple[str | None, str]] = [
        ("s\x00A", '{"v":"A1"}'),
        ("s\x00B", '{"v":"B1"}'),
        ("s\x00A", '{"v":"A2"}'),
        (None, '{"type":"claimed"}'),
        ("s\x00A", '{"v":"A3"}'),
    ]
    assert coalesce(items) == [
        '{"type":"batch","frames":[{"v":"B1"},{"v":"A2"}]}',
        '{"type":"claimed"}',
        '{"v":"A3"}',
    ]


async def test_coordinators_watch_but_never_claim(stack: Stack, store: ExamStore) -> None:
    coordinator = await WsClient.open(stack.ws_url, token("t-coord", roles=("coordinator",)))
    exam = await exam_in(store, S.COMPLETED)
    refused = await coordinator.request({"type": "claim", "exam_id": exam.accession})
    assert refused["code"] == "forbidden"
    assert (await store.get_exam(exam.patient_id, exam.accession)).claimed_by is None


async def test_a_live_session_keeps_renewing_its_claims(stack: Stack, store: ExamStore) -> None:
    gw = stack.app.state.gw
    gw.claims.lease_ms = 1_000  # a one-second lease ...
    gw.claim_renew_seconds = 0.3  # ... renewed three times a second
    ana = await WsClient.open(stack.ws_url, token("t-ana"))
    exam = await exam_in(store, S.COMPLETED)
    claimed = await ana.request({"type": "claim", "exam_id": exam.accession})
    await asyncio.sleep(2.5)  # well past the first lease
    held = await store.get_exam(exam.patient_id, exam.accession)
    assert held.claimed_by == "t-ana"
    assert (held.lease_expires_at or 0) > claimed["lease_expires_at"]
    ben = await WsClient.open(stack.ws_url, token("t-ben"))
    assert (await ben.request({"type": "claim", "exam_id": exam.accession}))["code"] == "conflict"
