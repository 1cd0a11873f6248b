"""A resume does not take the client's word: a position earned under another scope (a
site revoked or granted since, live or while the client was away) is answered with a
reset snapshot of the scope as it is now, never with the old membership; a resume under
an unchanged scope is still a resume."""

from __future__ import annotations

import asyncio
import time

import jwt

from dynamo.states import ExamStatus
from dynamo.store import ExamStore
from tests.conftest import SECRET, UNIT, Stack, register, token
from tests.support.exams import exam_in
from tests.support.wsclient import Frame, WsClient, closed_with
from worklist_cache.feed import ScopeMark

S = ExamStatus
BOTH = ("NW-GEN", "NW-ORT")


def _bare(sub: str) -> str:
    """A token that proves only who (the directory says what)."""
    now = int(time.time())
    return jwt.encode({"sub": sub, "tenant": "northwind", "exp": now + 600}, SECRET, "HS256")


async def resume_from(stack: Stack, sub: str, position: dict[str, str]) -> tuple[WsClient, Frame]:
    client = await WsClient.open(stack.ws_url, _bare(sub))
    await client.send({"type": "subscribe", "id": "s", "view": {"statuses": []}, "since": position})
    return client, await client.until(lambda f: f.get("id") == "s")


def position(frame: Frame) -> dict[str, str]:
    return {"epoch": frame["epoch"], "offset": frame["offset"]}


def sites_of(frame: Frame) -> set[str]:
    return {r["site"] for r in frame["rows"]}


async def both_sites(client: WsClient) -> Frame:
    for _ in range(int(50 * UNIT)):
        snap = await client.subscribe("s", statuses=[])
        if snap["type"] == "snapshot" and sites_of(snap) == set(BOTH):
            return snap
        await asyncio.sleep(0.1)
    raise AssertionError("the exams of both sites never reached the worklist")


async def test_a_resume_after_a_scope_change_is_a_reset_snapshot(
    stack: Stack, store: ExamStore
) -> None:
    await exam_in(store, S.COMPLETED, site="NW-GEN")
    ort = await exam_in(store, S.COMPLETED, site="NW-ORT")
    client = await WsClient.open(stack.ws_url, token("t-rs", sites=BOTH))
    await both_sites(client)
    gen = await exam_in(store, S.COMPLETED, site="NW-GEN")
    seen = await client.until(lambda f: (f.get("delta") or {}).get("exam_id") == gen.accession)
    before = position(seen)  # a position after the scope took effect

    # Unchanged scope: a resume is a resume.
    await client.close()
    again, answer = await resume_from(stack, "t-rs", before)
    assert answer["type"] == "resumed", answer
    await again.close()

    # Revoked live: the session closes (4005); a resume from before is a reset snapshot
    # of what the person may read now.
    live = await WsClient.open(stack.ws_url, _bare("t-rs"))
    snap = await live.subscribe("s", statuses=[])
    assert snap["type"] == "snapshot", snap
    register("t-rs", sites=("NW-GEN",))
    assert await closed_with(live, timeout=3.0) == 4005
    back, answer = await resume_from(stack, "t-rs", position(snap))
    assert answer["type"] == "snapshot" and answer["reset"] is True, answer
    assert sites_of(answer) == {"NW-GEN"}
    assert ort.accession not in {r["exam_id"] for r in answer["rows"]}
    narrowed = position(answer)

    # Granted back while the client is away: its position was earned under the narrower
    # scope, so it gets a reset snapshot that shows the site again (a resume would
    # never mention NW-ORT's unchanged exam).
    await back.close()
    register("t-rs", sites=BOTH)
    wider, answer = await resume_from(stack, "t-rs", narrowed)
    assert answer["type"] == "snapshot" and answer["reset"] is True, answer
    assert ort.accession in {r["exam_id"] for r in answer["rows"]}

    # A stale tab's position from before the revocation, under today's (equal) scope:
    # still earned before the scope took effect, so a reset.
    stale, answer = await resume_from(stack, "t-rs", before)
    assert answer["type"] == "snapshot" and answer["reset"] is True, answer
    for c in (wider, stale):
        await c.close()


def test_a_scope_mark_covers_only_positions_earned_under_it() -> None:
    first = ScopeMark("gen+ort", "e1", "100-0")  # the person's first known scope
    assert first.covers("gen+ort", "e1", "50-0")
    assert not first.covers("gen", "e1", "200-0")
    changed = ScopeMark("gen", "e1", "100-0", changed=True)
    assert not changed.covers("gen", "e1", "99-9")
    assert not changed.covers("gen", "e1", "100-0")  # the feed cannot tell which scope
    assert changed.covers("gen", "e1", "100-1")
    assert changed.covers("gen", "e2", "1-0")  # another epoch: recover decides
    assert not changed.covers("gen+ort", "e1", "200-0")
