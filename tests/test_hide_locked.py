"""A tenant's `hide_locked`: exams someone else holds leave everyone else's worklist (on
every path: snapshot, live, resume) and come back when the claim ends; switching the rule
applies to open worklists at once."""

from __future__ import annotations

from collections.abc import Callable

from redis.asyncio import Redis

from dynamo.states import ExamStatus
from dynamo.store import ExamStore
from tests.conftest import Stack, token
from tests.support.exams import exam_in
from tests.support.wsclient import Frame, WsClient
from tests.test_next_case import cached, set_rules


def delta_of(exam_id: str, *, leave: bool, sub: str | None = None) -> Callable[[Frame], bool]:
    return lambda f: (
        f.get("type") == "delta"
        and f["delta"]["exam_id"] == exam_id
        and bool(f.get("leave")) == leave
        and (sub is None or f["sub"] == sub)
    )


async def test_locked_exams_are_hidden_from_others_and_come_back(
    stack: Stack, store: ExamStore, redis: Redis
) -> None:
    await set_rules(store, hide_locked=True)
    held = await exam_in(store, ExamStatus.COMPLETED)
    free = await exam_in(store, ExamStatus.COMPLETED)
    await cached(redis, held, free)
    ana = await WsClient.open(stack.ws_url, token("t-ana"))
    ben = await WsClient.open(stack.ws_url, token("t-ben"))
    for c in (ana, ben):
        snap = await c.subscribe("s")
        assert {r["exam_id"] for r in snap["rows"]} == {held.accession, free.accession}

    claimed = await ana.request({"type": "claim", "exam_id": held.accession})
    assert claimed["type"] == "claimed"
    left = await ben.until(delta_of(held.accession, leave=True))
    assert left["delta"] == {"exam_id": held.accession, "version": claimed["version"]}
    mine = await ana.until(delta_of(held.accession, leave=False))
    assert mine["delta"]["claimed_by"] == "t-ana"
    # A fresh snapshot leaves it out too, and counts it out.
    again = await ben.subscribe("s2")
    assert [r["exam_id"] for r in again["rows"]] == [free.accession] and again["total"] == 1

    await ana.request({"type": "release", "exam_id": held.accession})
    back = await ben.until(delta_of(held.accession, leave=False, sub="s"))
    assert back["delta"]["claimed_by"] is None

    # Switched off live: open worklists are sent afresh, held rows included.
    await ana.request({"type": "claim", "exam_id": held.accession})
    await ben.until(delta_of(held.accession, leave=True, sub="s"))
    await set_rules(store, hide_locked=False)
    await ben.until(lambda f: f.get("type") == "resync" and f["sub"] == "s", 10)
    fresh = await ben.until(lambda f: f.get("type") == "snapshot" and f["sub"] == "s", 10)
    rows = {r["exam_id"]: r for r in fresh["rows"]}
    assert rows[held.accession]["claimed_by"] == "t-ana" and fresh["reset"] is True
    for c in (ana, ben):
        await c.close()
