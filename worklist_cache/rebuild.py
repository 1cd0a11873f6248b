"""Make a tenant's cache equal to DynamoDB: rebuilds, anti-entropy, and the relay's guard.

What a tenant's cache must hold (its *scope*): every exam in an open state, and the closed
ones (FINAL, AMENDED, CANCELLED) scheduled within the retention window
(`closed_retention_ms`, `RELAY_CLOSED_RETENTION_HOURS`). DynamoDB's side is read from the
indexes only, never a Scan: GSI1 per open state, and GSI2 per modality from the window's
start for the closed states, so the cost follows the window, not all history.

The cache keeps the same window: closed exams scheduled before it are pruned as deltas
are applied (`WorklistFeed`) and by every repairing comparison here
(`WorklistFeed.prune_closed`), so what a rebuild restores and what the cache keeps agree.

`Rebuilder.reconcile` compares the cache with it and names three kinds of difference:

    missing   in DynamoDB's scope, not in the cache
    stale     cached at an older version than DynamoDB holds
    extra     cached (open, or closed within the window) but no longer in DynamoDB's
              scope: deleted, or moved on while the cache missed it

Every difference is confirmed by a strongly consistent read of the item before it counts
or is repaired (an index lags its table; a change may be on its way through the relay).
Repairs go through the same idempotent apply as the relay (`WorklistFeed.publish`): an
upsert at DynamoDB's version, or, for a deleted exam, a remove one version past the
cached one. So nothing ever moves an exam backwards, and the gateway routes each repair
like any delta (a row that left a view gets its `leave`, a deleted one its `remove`).
"""

from __future__ import annotations

import asyncio
import logging
from collections.abc import Awaitable, Callable, Sequence
from dataclasses import dataclass, field
from typing import Any, Protocol

from pydantic import ValidationError

from dynamo.deltas import DirectoryChange, ExamDelta, ReviewDelta
from dynamo.models import Exam, exam_from_item, now_ms
from dynamo.states import OPEN_STATES, ExamStatus, Modality
from dynamo.store import ExamStore
from worklist_cache.exceptions import RebuildIncomplete
from worklist_cache.feed import WorklistFeed

__all__ = ["Divergence", "RebuildIncomplete", "Rebuilder", "TenantGuard", "in_scope"]

log = logging.getLogger("worklist_cache.rebuild")

CLOSED_STATES: list[ExamStatus] = [s for s in ExamStatus if s not in OPEN_STATES]
_OPEN = frozenset(s.value for s in OPEN_STATES)
_CHUNK = 200  # deltas per publish pipeline
_READS = 16  # consistent point reads in flight


class Sink(Protocol):
    async def publish(self, deltas: Sequence[ExamDelta | ReviewDelta]) -> object: ...


def in_scope(status: str, scheduled_at: int, cutoff_ms: int) -> bool:
    """Whether the cache holds an exam: open, or closed and scheduled within the window."""
    return status in _OPEN or scheduled_at >= cutoff_ms


@dataclass
class Divergence:
    """What one comparison of a tenant's cache with DynamoDB found (exam ids)."""

    tenant: str
    missing: list[str] = field(default_factory=list)
    stale: list[str] = field(default_factory=list)
    extra: list[str] = field(default_factory=list)
    unreadable: int = 0  # items in the indexes that do not parse (skipped)
    repaired: int = 0
    compared: int = 0  # exams in DynamoDB's scope
    built: bool = False  # a rebuild marked the tenant built

    @property
    def total(self) -> int:
        return len(self.missing) + len(self.stale) + len(self.extra)


class Rebuilder:
    """Reconciles tenants' caches with DynamoDB; one per process.

    `publisher` is where repairs are published (the worker passes its review `Sampler`,
    so an exam finalized during a gap is still sampled); the feed by default.
    """

    def __init__(
        self,
        store: ExamStore,
        feed: WorklistFeed,
        *,
        publisher: Sink | None = None,
        closed_retention_ms: int = 48 * 3_600_000,
    ) -> None:
        self._store = store
        self._feed = feed
        self._publisher: Sink = publisher or feed
        # Never wider than what the cache keeps (both read RELAY_CLOSED_RETENTION_HOURS
        # in a deployment): a wider window would restore exams the next apply prunes.
        self.closed_retention_ms = min(closed_retention_ms, feed.closed_retention_ms)
        self._locks: dict[str, asyncio.Lock] = {}
        self.rebuilds = 0

    def _lock(self, tenant: str) -> asyncio.Lock:
        return self._locks.setdefault(tenant, asyncio.Lock())

    # ---- entry points -----------------------------------------------------------------

    async def ensure_built(self, tenant: str) -> Divergence | None:
        """Rebuild the tenant unless this Redis holds it built; None when it did."""
        if await self._feed.is_built(tenant):
            return None
        async with self._lock(tenant):
            return await self._build_locked(tenant)

    async def rebuild(self, tenant: str) -> Divergence:
        """Rebuild the tenant now, built or not (readers keep being served meanwhile)."""
        async with self._lock(tenant):
            result = await self._rebuild_once(tenant)
            if not result.built:
                return await self._build_locked(tenant, force=True) or result
            return result

    async def after_gap(self, tenants: Sequence[str]) -> int:
        """History was lost: per tenant, hold readers and start a new epoch (every
        client resets), then rebuild. Returns how many rows the rebuilds changed."""
        changed = 0
        for tenant in tenants:
            async with self._lock(tenant):
                await self._feed.invalidate(tenant)
                result = await self._build_locked(tenant, force=True)
                changed += result.repaired if result else 0
        return changed

    async def check(self, tenant: str, *, repair: bool, grace: float = 2.0) -> Divergence:
        """Anti-entropy: compare, wait `grace` seconds for what is in flight, confirm by
        strongly consistent reads, and (with `repair`) apply what is still different."""
        return await self.reconcile(tenant, repair=repair, grace=grace)

    async def _build_locked(self, tenant: str, *, force: bool = False) -> Divergence | None:
        for _ in range(3):
            if not force and await self._feed.is_built(tenant):
                return None
            force = False
            result = await self._rebuild_once(tenant)
            if result.built:
                return result
        raise RebuildIncomplete(tenant)

    async def _rebuild_once(self, tenant: str) -> Divergence:
        token = await self._feed.begin_rebuild(tenant)
        result = await self.reconcile(tenant, repair=True)
        # Built only now, and only if this Redis saw the whole rebuild.
        result.built = await self._feed.finish_rebuild(tenant, token)
        self.rebuilds += 1
        log.info(
            "rebuilt %s from DynamoDB: %d in scope, %d missing, %d stale, %d extra%s",
            tenant,
            result.compared,
            len(result.missing),
            len(result.stale),
            len(result.extra),
            "" if result.built else " (Redis restarted meanwhile: again)",
        )
        return result

    # ---- the comparison -----------------------------------------------------------------

    async def read_scope(self, tenant: str, cutoff: int) -> tuple[dict[str, Exam], int]:
        """DynamoDB's side: the tenant's exams in scope (newest version seen per
        accession), and how many index items did not parse."""
        found: dict[str, Exam] = {}
        unreadable = 0
        sources = [self._store.open_study_items(tenant, s) for s in OPEN_STATES]
        sources += [
            self._store.scheduled_study_items(tenant, m, cutoff, CLOSED_STATES) for m in Modality
        ]
        for source in sources:
            async for item in source:
                exam = _parse(item)
                if exam is None:
                    unreadable += 1
                    continue
                have = found.get(exam.accession)
                if have is None or have.version < exam.version:
                    found[exam.accession] = exam
        return found, unreadable

    async def reconcile(self, tenant: str, *, repair: bool, grace: float = 0.0) -> Divergence:
        cutoff = now_ms() - self.closed_retention_ms
        truth, unreadable = await self.read_scope(tenant, cutoff)
        rows = await self._feed.cached_rows(tenant)
        if repair:
            # Retention: closed rows outside the window leave the cache (those cached
            # before the closed index existed included); the feed re-checks each one.
            expired = {
                acc
                for acc, row in rows.items()
                if not in_scope(row["status"], int(row["scheduled_at"]), cutoff)
            }
            if expired:
                await self._feed.prune_closed(tenant, cutoff, exam_ids=sorted(expired))
                rows = {acc: row for acc, row in rows.items() if acc not in expired}
        result = Divergence(tenant, unreadable=unreadable, compared=len(truth))
        candidates: set[str] = set()
        for acc, exam in truth.items():
            row = rows.get(acc)
            if row is None or int(row["version"]) < exam.version:
                candidates.add(acc)
        for acc, row in rows.items():
            if acc not in truth and in_scope(row["status"], int(row["scheduled_at"]), cutoff):
                candidates.add(acc)
        if not candidates:
            return result
        if grace > 0:
            await asyncio.sleep(grace)
            rows = {**rows, **await self._rows(tenant, candidates)}
        fresh = await self._consistent(tenant, candidates, truth)
        repairs: list[ExamDelta] = []
        for acc in sorted(candidates):
            kind, delta = _decide(fresh.get(acc), rows.get(acc), cutoff)
            if kind is None:
                continue
            getattr(result, kind).append(acc)
            if delta is not None:
                repairs.append(delta)
        if repair and repairs:
            for start in range(0, len(repairs), _CHUNK):
                await self._publisher.publish(repairs[start : start + _CHUNK])
            result.repaired = len(repairs)
        return result

    async def _rows(self, tenant: str, exam_ids: set[str]) -> dict[str, Any]:
        """The cache's rows now (None for a row that is gone)."""
        ids = sorted(exam_ids)
        got = await asyncio.gather(*(self._feed.row(tenant, e) for e in ids))
        return dict(zip(ids, got, strict=True))

    async def _consistent(
        self, tenant: str, exam_ids: set[str], truth: dict[str, Exam]
    ) -> dict[str, Exam | None]:
        """The items as DynamoDB holds them now (strongly consistent reads)."""
        known = [(truth[a].patient_id, a) for a in exam_ids if a in truth]
        items = await self._store.study_items_consistent(known)
        out: dict[str, Exam | None] = {a: _parse(i) for a, i in items.items() if a in exam_ids}
        # Not at the key the index named (merged into another patient, or deleted), or
        # only in the cache: find it by its accession pointer.
        lookups = sorted(a for a in exam_ids if a not in out)
        gate = asyncio.Semaphore(_READS)

        async def lookup(acc: str) -> Exam | None:
            async with gate:
                item = await self._store.study_item_by_accession(tenant, acc)
            return None if item is None else _parse(item)

        found = await asyncio.gather(*(lookup(a) for a in lookups))
        out.update(zip(lookups, found, strict=True))
        return out


def _parse(item: dict[str, Any]) -> Exam | None:
    if item.get("entity") != "STUDY":
        return None
    try:
        return exam_from_item(item)
    except (ValidationError, KeyError, ValueError, TypeError):
        return None  # a hand-edited item: the relay parks its stream record


def _decide(
    exam: Exam | None, row: dict[str, Any] | None, cutoff: int
) -> tuple[str | None, ExamDelta | None]:
    """(kind of difference, its repair) between DynamoDB's item and the cached row."""
    if exam is None:
        if row is None:
            return None, None  # gone from both
        # Deleted in DynamoDB: a remove that outranks the cached version.
        gone = {**row, "op": "remove", "version": int(row["version"]) + 1}
        return "extra", ExamDelta.model_validate(gone)
    wanted = in_scope(exam.status.value, exam.scheduled_at, cutoff)
    if row is None:
        return ("missing", ExamDelta.from_exam(exam)) if wanted else (None, None)
    if int(row["version"]) >= exam.version:
        return None, None  # equal, or the cache is ahead of what was read
    shown = in_scope(row["status"], int(row["scheduled_at"]), cutoff)
    if not (wanted or shown):
        return None, None  # an old closed exam, outside the window on both sides
    # Newer in DynamoDB: the real state (closed long ago included) replaces the row.
    return ("stale" if wanted else "extra"), ExamDelta.from_exam(exam)


class TenantGuard:
    """The relay's sink: a tenant's deltas are applied only to a cache built from
    DynamoDB, and every tenant seen is registered (the maintenance's tenant list).

    So after Redis lost its data, the relay's replay of old records (its checkpoints
    went too) lands on a rebuilt cache and changes nothing."""

    def __init__(
        self,
        inner: Sink,
        rebuilder: Rebuilder,
        register: Callable[[str], Awaitable[None]],
    ) -> None:
        self._inner = inner
        self._rebuilder = rebuilder
        self._register = register
        self._registered: set[str] = set()

    async def publish(self, deltas: Sequence[ExamDelta | ReviewDelta]) -> object:
        for tenant in sorted({d.tenant for d in deltas}):
            if tenant not in self._registered:
                await self._register(tenant)
                self._registered.add(tenant)
            await self._rebuilder.ensure_built(tenant)
        return await self._inner.publish(deltas)

    async def announce(self, notices: Sequence[DirectoryChange]) -> None:
        """Directory change notices: not rows, so no tenant guard (a tenant's first
        people may come before its first exam)."""
        announce = getattr(self._inner, "announce", None)
        if announce is not None:
            await announce(notices)

    async def heartbeat(self) -> None:
        beat = getattr(self._inner, "heartbeat", None)
        if beat is not None:
            await beat()
