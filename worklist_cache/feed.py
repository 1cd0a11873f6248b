"""Apply deltas to the materialized worklists, append them to the tenant's history and
publish them, in one atomic step per delta; read consistent snapshots back.

Idempotent by version: a delta whose version is not newer than the cached one changes
nothing and is neither recorded nor published, so replays and duplicate relays are
harmless and an exam never moves backwards.
"""

from __future__ import annotations

import secrets
from collections.abc import Sequence
from dataclasses import dataclass
from typing import Any

import orjson
from redis.asyncio.cluster import ClusterPipeline
from redis.commands.core import AsyncScript

from dynamo.deltas import DirectoryChange, ExamDelta, ReviewDelta
from dynamo.models import now_ms
from dynamo.states import OPEN_STATES, PRIORITY_RANK, ExamStatus
from worklist_cache import keys
from worklist_cache.connection import Client
from worklist_cache.scripts import APPLY, APPLY_REVIEW, PRUNE, SNAPSHOT
from worklist_cache.settings import CacheSettings
from worklist_cache.views import View

_RANK = {p.value: r for p, r in PRIORITY_RANK.items()}
_CLOSED = ",".join(s.value for s in ExamStatus if s not in OPEN_STATES)
# Expired closed exams each apply prunes: more than one, so a backlog drains while
# deltas flow; few, so an apply stays cheap. The maintenance prunes in larger batches.
_PRUNE_PER_APPLY = 8
_PRUNE_BATCH = 1_000


def urgency_score(priority: str, tat_due_at: int) -> int:
    """The index score: STAT first, then the nearest turnaround deadline (exact in a
    double: rank * 1e13 + epoch ms stays far below 2**53)."""
    return _RANK.get(priority, 9) * 10_000_000_000_000 + tat_due_at


def new_epoch() -> str:
    return secrets.token_hex(6)


@dataclass(frozen=True)
class Missed:
    """The deltas after a position, or `reset` when history cannot say."""

    reset: bool
    epoch: str
    entries: list[tuple[str, bytes]]  # (offset, delta JSON), in feed order


async def _run(script: AsyncScript, keys_: list[str], args: list[Any], client: Any) -> Any:
    """Call a registered script, on a pipeline too. redis-py loads scripts before a
    standalone pipeline runs, never before a cluster pipeline, and a cluster master that
    restarted has forgotten them: there the script's text goes with each call (EVAL;
    Redis caches the compiled script by its digest, so only the bytes cost)."""
    if isinstance(client, ClusterPipeline):
        text = script.script if isinstance(script.script, str) else bytes(script.script).decode()
        return client.eval(text, len(keys_), *keys_, *args)
    return await script(keys=keys_, args=args, client=client)


def _text(value: object) -> str:
    return value.decode() if isinstance(value, bytes) else str(value)


def feed_message(epoch: str, offset: str, delta_json: bytes | str) -> str:
    """A feed message's text, as the apply script publishes it (`scripts.APPLY` builds
    the same bytes in Lua): `{"epoch":..,"offset":..,"delta":{..}}`. History entries are
    turned into it for resume, so one routing rule (`gateway.routing.route`) reads both."""
    delta = delta_json.decode() if isinstance(delta_json, bytes) else delta_json
    return '{"epoch":"' + epoch + '","offset":"' + offset + '","delta":' + delta + "}"


def offset_key(offset: str) -> tuple[int, int]:
    """Redis stream IDs (\"ms-seq\") in feed order."""
    ms, _, seq = offset.partition("-")
    return int(ms), int(seq or 0)


@dataclass(frozen=True)
class ScopeMark:
    """A person's scope (`Scope.fingerprint`) and the feed position from which their
    worklists were served under it."""

    scope: str
    epoch: str
    offset: str
    # It replaced a mark of another scope: a scope change writes nothing to the feed, so
    # the very position it took effect at may have been earned under the scope before.
    changed: bool = False

    def covers(self, scope: str, epoch: str, offset: str) -> bool:
        """Whether a client's position (`epoch`, `offset`) was earned under `scope` as
        it is now: the same scope and, when that scope replaced another, a position
        after the one at which it took effect. (The person's first recorded scope is
        the only one known: any position holds under it.)"""
        if scope != self.scope:
            return False
        if not self.changed or epoch != self.epoch:
            return True  # another epoch: the resume is a reset anyway, or all is later
        return offset_key(offset) > offset_key(self.offset)


@dataclass(frozen=True)
class Snapshot:
    epoch: str
    offset: str
    total: int  # rows matching the view, also those beyond the limit
    rows: list[dict[str, Any]]
    # The walk stopped at its cap (`scan_limit`): `total` counts only the matches found
    # before it (a lower bound), and `rows` may hold fewer than the limit.
    total_capped: bool = False


@dataclass(frozen=True)
class Recovery:
    """What a resume needs, read in one atomic step: the deltas after the client's
    position (`missed`), and which exams match the view at the end of them (`members`,
    at most `limit`), at feed position `offset`."""

    missed: Missed
    offset: str
    members: set[str]


class WorklistFeed:
    """The write side (used by the relay) and snapshot side (used by the gateway).

    Closed exams stay cached for `closed_retention_ms` after they were scheduled (the
    rebuild's window; `RELAY_CLOSED_RETENTION_HOURS` when not given), then each apply
    prunes a few of the expired ones and `prune_closed` the rest. A filtered snapshot
    walks at most `scan_limit` index entries (`CACHE_SNAPSHOT_SCAN_LIMIT`).
    """

    def __init__(
        self,
        redis: Client,
        *,
        maxlen: int = 100_000,
        sharded: bool = False,
        closed_retention_ms: int | None = None,
        scan_limit: int | None = None,
    ) -> None:
        if closed_retention_ms is None or scan_limit is None:
            settings = CacheSettings()  # one process, one setting: the rebuild reads it too
            if closed_retention_ms is None:
                closed_retention_ms = settings.closed_retention_ms
            if scan_limit is None:
                scan_limit = settings.snapshot_scan_limit
        self.closed_retention_ms: int = closed_retention_ms
        self.scan_limit: int = scan_limit
        self._redis = redis
        self._maxlen = maxlen
        # Sharded pub/sub (SPUBLISH, Redis 7) keeps a tenant's messages on its shard.
        self._publish = "SPUBLISH" if sharded else "PUBLISH"
        self._apply = redis.register_script(APPLY)
        self._snapshot = redis.register_script(SNAPSHOT)
        self._apply_review = redis.register_script(APPLY_REVIEW)
        self._prune = redis.register_script(PRUNE)

    async def publish(self, deltas: Sequence[ExamDelta | ReviewDelta]) -> list[str | None]:
        """Apply and publish deltas in order; returns each one's offset (None if stale;
        "review" for an applied peer-review delta, which has no offset)."""
        if not deltas:
            return []
        cutoff = now_ms() - self.closed_retention_ms
        async with self._redis.pipeline(transaction=False) as pipe:
            for d in deltas:
                if isinstance(d, ReviewDelta):
                    await _run(
                        self._apply_review,
                        [keys.review_versions(d.tenant), keys.reviews(d.tenant)],
                        [
                            d.exam_id,
                            d.version,
                            orjson.dumps(d.model_dump(mode="json")),
                            keys.review_channel(d.tenant),
                            self._publish,
                        ],
                        pipe,
                    )
                    continue
                await _run(
                    self._apply,
                    [
                        keys.versions(d.tenant),
                        keys.exams(d.tenant),
                        keys.feed(d.tenant),
                        keys.epoch(d.tenant),
                        keys.sites(d.tenant),
                        keys.closed(d.tenant),
                    ],
                    [
                        d.exam_id,
                        d.version,
                        d.op,
                        orjson.dumps(d.model_dump(mode="json")),
                        self._maxlen,
                        new_epoch(),
                        keys.channel(d.tenant),
                        keys.tenant_prefix(d.tenant),
                        d.status.value,
                        d.site,
                        urgency_score(d.priority.value, d.tat_due_at),
                        self._publish,
                        cutoff,
                        _PRUNE_PER_APPLY,
                        d.scheduled_at,
                        "0" if d.status in OPEN_STATES else "1",
                    ],
                    pipe,
                )
            results = await pipe.execute()
        return [
            "review" if r == 1 else (r.decode() if isinstance(r, bytes) else r) for r in results
        ]

    async def snapshot(
        self, tenant: str, view: View | None = None, *, me: str = "", limit: int = 500
    ) -> Snapshot:
        """A view's rows, most urgent first (at most `limit`), how many match in all, and
        the feed position they are consistent with; one round trip.

        Only the (status, site) indexes the view names are read, never every exam, and
        of those at most `scan_limit` entries (then `total_capped`).
        """
        result = await self._snapshot_call(tenant, view or View(), me, limit, ids_only=False)
        epoch, offset, total, capped, *rows = result
        return Snapshot(
            epoch=_text(epoch),
            offset=_text(offset),
            total=int(total),
            rows=[orjson.loads(r) for r in rows],
            total_capped=bool(int(capped)),
        )

    def _snapshot_call(
        self, tenant: str, view: View, me: str, limit: int, *, ids_only: bool, client: Any = None
    ) -> Any:
        statuses = view.statuses or list(ExamStatus)
        return _run(
            self._snapshot,
            [keys.exams(tenant), keys.epoch(tenant), keys.feed(tenant), keys.sites(tenant)],
            [
                new_epoch(),
                keys.tenant_prefix(tenant),
                limit,
                ",".join(s.value for s in statuses),
                ",".join(view.sites),
                ",".join(m.value for m in view.modalities),
                ",".join(p.value for p in view.priorities),
                ",".join(view.subspecialties),
                orjson.dumps(me).decode() if view.claimed_by_me else "",
                "1" if ids_only else "0",
                self.scan_limit,
            ],
            client,
        )

    async def recover(
        self,
        tenant: str,
        view: View,
        epoch: str,
        offset: str,
        *,
        me: str = "",
        limit: int = 10_000,
        members: int = 5_000,
    ) -> Recovery:
        """The deltas after (`epoch`, `offset`) and the view's members after them, in one
        MULTI: no change can fall between the history and the membership it ends in."""
        feed = keys.feed(tenant)
        async with self._redis.pipeline(transaction=True) as pipe:
            pipe.get(keys.epoch(tenant))
            pipe.exists(feed)
            pipe.xrange(feed, min=f"({offset}", max="+", count=limit + 1)
            await self._snapshot_call(tenant, view, me, members, ids_only=True, client=pipe)
            current, exists, entries, snap = await pipe.execute()
        missed = await self._missed(feed, epoch, offset, limit, current, exists, entries)
        _epoch, at, _total, _capped, *ids = snap
        return Recovery(missed, _text(at), {_text(i) for i in ids})

    async def since(self, tenant: str, epoch: str, offset: str, limit: int = 10_000) -> Missed:
        """Exactly the deltas after (`epoch`, `offset`), or a reset.

        A reset when the epoch changed (Redis restarted, cache rebuilt), when history was
        trimmed past the offset (Redis records the highest trimmed ID), or when more than
        `limit` deltas were missed (a snapshot is cheaper then).
        """
        feed = keys.feed(tenant)
        async with self._redis.pipeline(transaction=True) as pipe:
            pipe.get(keys.epoch(tenant))
            pipe.exists(feed)
            pipe.xrange(feed, min=f"({offset}", max="+", count=limit + 1)
            current, exists, entries = await pipe.execute()
        return await self._missed(feed, epoch, offset, limit, current, exists, entries)

    async def _missed(
        self,
        feed: str,
        epoch: str,
        offset: str,
        limit: int,
        current: Any,
        exists: Any,
        entries: Any,
    ) -> Missed:
        current = current.decode() if isinstance(current, bytes) else current
        if current is None or current != epoch:
            return Missed(True, current or "", [])
        if exists and await self._trimmed_past(feed, offset):
            return Missed(True, current, [])
        if len(entries) > limit:
            return Missed(True, current, [])
        out = []
        for entry_id, fields in entries:
            eid = entry_id.decode() if isinstance(entry_id, bytes) else entry_id
            out.append((eid, fields[b"d"]))
        return Missed(False, current, out)

    async def _trimmed_past(self, feed: str, offset: str) -> bool:
        """Whether entries after `offset` may have been trimmed away.

        MAXLEN trimming drops the oldest entries; Redis records the first entry left and
        how many were ever added. If some were dropped and the first one left comes after
        `offset`, what lay between is gone (conservatively: the client may have seen the
        last dropped one, and then a reset costs one snapshot, never a lost delta).
        """
        info = await self._redis.xinfo_stream(feed)
        deleted = _text(info.get("max-deleted-entry-id") or "0-0")
        if offset_key(deleted) > offset_key(offset):
            return True
        trimmed = int(info.get("entries-added", 0)) > int(info.get("length", 0))
        first = _text(info.get("recorded-first-entry-id") or "0-0")
        return trimmed and offset_key(first) > offset_key(offset)

    async def prune_closed(
        self, tenant: str, cutoff_ms: int | None = None, *, exam_ids: Sequence[str] = ()
    ) -> int:
        """Drop every cached closed exam scheduled before `cutoff_ms` (by default now
        minus the retention); returns how many went. `exam_ids` names rows to check too
        (the rebuild passes the closed rows outside its window: rows cached before the
        closed index existed). Batched, so Redis is never blocked for long."""
        cutoff = now_ms() - self.closed_retention_ms if cutoff_ms is None else cutoff_ms
        pending, pruned = list(exam_ids), 0
        while True:
            batch, pending = pending[:_PRUNE_BATCH], pending[_PRUNE_BATCH:]
            gone = await self._prune(
                keys=[keys.exams(tenant), keys.closed(tenant)],
                args=[keys.tenant_prefix(tenant), cutoff, _PRUNE_BATCH, _CLOSED, *batch],
            )
            pruned += int(gone)
            if int(gone) < _PRUNE_BATCH and not pending:
                return pruned

    async def is_built(self, tenant: str) -> bool:
        """Whether this Redis holds a tenant's worklists rebuilt since it last started."""
        return bool(await self._redis.exists(keys.built(tenant)))

    async def mark_built(self, tenant: str) -> None:
        await self._redis.set(keys.built(tenant), "1")

    async def scope_mark(self, tenant: str, person: str) -> ScopeMark | None:
        """The scope `person` was last served under, and the feed position since which."""
        raw = await self._redis.hget(keys.scope_marks(tenant), person)
        if raw is None:
            return None
        data = orjson.loads(raw)
        return ScopeMark(data["scope"], data["epoch"], data["offset"], bool(data.get("changed")))

    async def mark_scope(self, tenant: str, person: str, mark: ScopeMark) -> None:
        """Record that `person` is served under `mark.scope` from `mark`'s position on,
        unless that scope is already recorded (its earlier position stands)."""
        current = await self.scope_mark(tenant, person)
        if current is not None and current.scope == mark.scope:
            return
        value = orjson.dumps(
            {
                "scope": mark.scope,
                "epoch": mark.epoch,
                "offset": mark.offset,
                "changed": current is not None,
            }
        )
        await self._redis.hset(keys.scope_marks(tenant), person, value)

    async def row(self, tenant: str, exam_id: str) -> dict[str, Any] | None:
        """One exam's cached worklist row, if the cache holds it."""
        raw = await self._redis.hget(keys.exams(tenant), exam_id)
        return None if raw is None else dict(orjson.loads(raw))

    async def announce(self, notices: Sequence[DirectoryChange]) -> None:
        """Publish directory change notices, each on its tenant's directory channel."""
        async with self._redis.pipeline(transaction=False) as pipe:
            for n in notices:
                payload = orjson.dumps(n.model_dump(mode="json"))
                await pipe.execute_command(self._publish, keys.directory_channel(n.tenant), payload)
            await pipe.execute()

    async def heartbeat(self, ttl_ms: int = 15_000) -> None:
        """The relay is alive and reading (for the gateway's readiness)."""
        await self._redis.set(keys.relay_alive(), "1", px=ttl_ms)

    async def relay_alive(self) -> bool:
        return bool(await self._redis.exists(keys.relay_alive()))

    async def reviews(self, tenant: str) -> list[dict[str, Any]]:
        """Every cached peer review of a tenant (a few per day: read whole)."""
        return [dict(orjson.loads(v)) for v in await self._redis.hvals(keys.reviews(tenant))]

    # ---- rebuilds: the marker the gateway reads, and what a rebuild compares -----------

    async def begin_rebuild(self, tenant: str) -> str:
        """Start a rebuild of a tenant's worklists; returns its token for `finish_rebuild`.
        Does not clear `built` (see `invalidate` for a rebuild that must hold readers)."""
        token = secrets.token_hex(8)
        await self._redis.set(keys.rebuilding(tenant), token)
        return token

    async def finish_rebuild(self, tenant: str, token: str) -> bool:
        """Mark the tenant built if `token` is still the newest rebuild's: False when Redis
        restarted meanwhile (it holds only part of the rebuild) or a newer rebuild runs."""
        done = await self._redis.eval(
            _FINISH_REBUILD, 2, keys.rebuilding(tenant), keys.built(tenant), token
        )
        return bool(done)

    async def invalidate(self, tenant: str) -> str:
        """History cannot be trusted (a gap in the stream): drop `built`, so readers wait
        for the rebuild, and start a new epoch, so every client resets. Returns it."""
        epoch = new_epoch()
        async with self._redis.pipeline(transaction=True) as pipe:
            pipe.delete(keys.built(tenant))
            pipe.set(keys.epoch(tenant), epoch)
            await pipe.execute()
        return epoch

    async def rebuild_state(self, tenant: str) -> str:
        """ "built", "rebuilding" (a rebuild was started and has not finished) or
        "absent" (this Redis never held the tenant's worklists)."""
        async with self._redis.pipeline(transaction=False) as pipe:
            pipe.exists(keys.built(tenant))
            pipe.exists(keys.rebuilding(tenant))
            built, rebuilding = await pipe.execute()
        return "built" if built else "rebuilding" if rebuilding else "absent"

    async def request_build(self, tenant: str) -> None:
        """Ask the worker to build a tenant that is not built (one with no exams yet is
        built by nothing else); the worker's maintenance takes requests every round."""
        await self._redis.sadd(keys.build_requests(), tenant)

    async def build_requests(self) -> list[str]:
        return sorted(_text(t) for t in await self._redis.smembers(keys.build_requests()))

    async def build_request_done(self, tenant: str) -> None:
        await self._redis.srem(keys.build_requests(), tenant)

    async def cached_rows(self, tenant: str) -> dict[str, dict[str, Any]]:
        """Every cached row of a tenant (HSCAN, so Redis is never blocked by a big hash)."""
        out: dict[str, dict[str, Any]] = {}
        async for exam_id, raw in self._redis.hscan_iter(keys.exams(tenant), count=1000):
            out[_text(exam_id)] = dict(orjson.loads(raw))
        return out

    async def cached_versions(self, tenant: str, exam_ids: Sequence[str]) -> dict[str, int]:
        """The newest applied version of some exams (tombstones of removed ones too)."""
        if not exam_ids:
            return {}
        values = await self._redis.hmget(keys.versions(tenant), list(exam_ids))
        return {e: int(v) for e, v in zip(exam_ids, values, strict=True) if v is not None}


# KEYS: rebuilding, built   ARGV: token.
_FINISH_REBUILD = """
if redis.call('GET', KEYS[1]) ~= ARGV[1] then return 0 end
redis.call('SET', KEYS[2], '1')
redis.call('DEL', KEYS[1])
return 1
"""
