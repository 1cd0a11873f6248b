"""The presence heartbeat on a real Redis, with more sessions than one page of its work
(`gateway.presence._CHUNK`): every session's entry is written with its heartbeat, the
mirror holds every user, and an entry this node left behind (its deletion never reached
Redis) is pruned once its heartbeat is old, although it names this node."""

from __future__ import annotations

import orjson
from redis.asyncio import Redis

from gateway import presence as presence_module
from gateway.presence import STALE_MS, Presence
from loadtest.presence_beat_cost import TENANT, QuietFeed, StandInSession
from worklist_cache import keys


async def test_a_beat_writes_every_entry_and_prunes_this_nodes_leftover(redis: Redis) -> None:
    n = presence_module._CHUNK * 2 + 7
    presence = Presence(redis, QuietFeed(), "beat")  # type: ignore[arg-type]
    sessions = [StandInSession(i) for i in range(n)]
    try:
        presence._local[TENANT] = set(sessions)  # type: ignore[arg-type]
        mirror = await presence._mirror(TENANT)
        # A connection of this node that went away while Redis was unreachable: its
        # entry stayed, with a heartbeat older than STALE_MS.
        leftover = {
            **presence._entry(sessions[0]),  # type: ignore[arg-type]
            "seen": presence_module._now_ms() - STALE_MS - 1_000,
        }
        await redis.hset(keys.presence(TENANT), "gone-conn", orjson.dumps(leftover))

        await presence._beat_tenant(TENANT, presence._local[TENANT])

        stored = await redis.hgetall(keys.presence(TENANT))
        assert {k.decode() for k in stored} == {s.conn_id for s in sessions}
        now = presence_module._now_ms()
        assert all(now - orjson.loads(v)["seen"] < STALE_MS for v in stored.values())
        assert set(mirror.entries) == {s.conn_id for s in sessions}
        assert set(mirror.users) == {s.principal.sub for s in sessions}
        users = await presence.users(TENANT)
        assert sum(u["connections"] for u in users.values()) == n
    finally:
        await presence.aclose()


async def test_a_claim_during_a_beat_is_not_undone_by_it(redis: Redis) -> None:
    """A session's entry changed while the beat was under way: the mirror keeps the
    new entry, not the one the beat built before the change."""
    presence = Presence(redis, QuietFeed(), "beat")  # type: ignore[arg-type]
    sessions = [StandInSession(i) for i in range(presence_module._CHUNK + 3)]
    try:
        presence._local[TENANT] = set(sessions)  # type: ignore[arg-type]
        mirror = await presence._mirror(TENANT)
        reader = sessions[-1]
        real_read = presence._read

        async def read_then_claim(*args: object, **kwargs: object) -> object:
            out = await real_read(*args, **kwargs)  # type: ignore[arg-type]
            # The reader claims an exam between the beat's build and its mirror update.
            reader.claims["EXAM-1"] = "token"
            presence._change(TENANT, mirror, reader.conn_id, presence._entry(reader))  # type: ignore[arg-type]
            return out

        presence._read = read_then_claim  # type: ignore[method-assign,assignment]
        await presence._beat_tenant(TENANT, presence._local[TENANT])
        assert [r["exam_id"] for r in mirror.entries[reader.conn_id]["reading"]] == ["EXAM-1"]
        users = await presence.users(TENANT)
        assert [r["exam_id"] for r in users[reader.principal.sub]["reading"]] == ["EXAM-1"]
    finally:
        await presence.aclose()
