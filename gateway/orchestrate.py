"""Orchestration on the live system: the tenant's rules (from the directory), the board
the rules weigh (waiting cases and each reader's load, read from the worklist cache), and
the records of what was decided. The rules themselves are `orchestration` (pure); the
claim that makes an assignment real is `dynamo.claims` (the one guarantee of a single
reader).

Loads are counted from what is shared, never from one node's memory, so every gateway
node counts the same: a reader's open claims and the patients they hold are the cached
rows they hold (`COMPLETED` or `PRELIMINARY`, lease running); their RVUs this shift are
the RVUs they signed FINAL this shift (a Redis hash per UTC day) plus those they hold.
"""

from __future__ import annotations

import asyncio
import logging
from collections.abc import Callable, Mapping
from dataclasses import dataclass, field
from datetime import UTC, datetime
from typing import TYPE_CHECKING, Any

import orjson

from dynamo.exceptions import StoreError
from dynamo.models import now_ms
from dynamo.states import ExamStatus
from orchestration import Candidate, Decision, ReaderLoad, Rules, rvu_of
from worklist_cache import keys
from worklist_cache.connection import Client
from worklist_cache.views import View

if TYPE_CHECKING:
    from dynamo.directory import DirectoryStore
    from worklist_cache import WorklistFeed

__all__ = ["Board", "Orchestrator"]

log = logging.getLogger("gateway.orchestration")

# Rows a reader may be handed (ready to read) or may hold (open claims).
_READY = ExamStatus.COMPLETED.value
_HELD = (ExamStatus.COMPLETED.value, ExamStatus.PRELIMINARY.value)
_BOARD_VIEW = View(statuses=[ExamStatus.COMPLETED, ExamStatus.PRELIMINARY])
_BOARD_LIMIT = 5000
# How long a "next" reservation keeps concurrent presses off a case it is claiming.
RESERVE_MS = 3000
_DECISIONS_KEPT = 10_000
_LEDGER_TTL_S = 2 * 24 * 3600


def shift_of(ms: int) -> str:
    """The shift a moment belongs to: its UTC day."""
    return datetime.fromtimestamp(ms / 1000, UTC).strftime("%Y-%m-%d")


def _held_by(row: Mapping[str, Any], now: int) -> str | None:
    holder = row.get("claimed_by")
    if not holder or row.get("status") not in _HELD:
        return None
    lease = row.get("lease_expires_at")
    return None if lease is not None and int(lease) <= now else str(holder)


@dataclass
class Board:
    """One tenant's cases and loads at one moment (what `next` and offers weigh)."""

    rules: Rules
    rows: list[dict[str, Any]]
    ledger: dict[str, float]  # sub -> RVUs signed this shift
    now: int = field(default_factory=now_ms)

    def waiting(self) -> list[dict[str, Any]]:
        """Rows ready to read that nobody holds, most urgent first."""
        return [r for r in self.rows if r["status"] == _READY and _held_by(r, self.now) is None]

    def holder(self, exam_id: str) -> str | None:
        """Who holds a case now (None: nobody, or it is not on the board)."""
        return next((_held_by(r, self.now) for r in self.rows if r["exam_id"] == exam_id), None)

    def load(self, sub: str, allows: Callable[[Mapping[str, Any]], bool] | None) -> ReaderLoad:
        held = [r for r in self.rows if _held_by(r, self.now) == sub]
        overrides = self.rules.rvu_overrides
        return ReaderLoad(
            sub=sub,
            open_claims=len(held),
            stat_claims=sum(1 for r in held if r["priority"] == "STAT"),
            rvu_shift=self.ledger.get(sub, 0.0)
            + sum(rvu_of(str(r.get("procedure_code") or ""), overrides) for r in held),
            patients=frozenset(str(r["mrn"]) for r in held if r.get("mrn")),
            allows=allows,
        )

    def mean_rvu(self) -> float:
        subs = set(self.ledger) | {h for r in self.rows if (h := _held_by(r, self.now))}
        if not subs:
            return 0.0
        total = sum(self.load(s, None).rvu_shift for s in subs)
        return total / len(subs)

    def candidates_for(self, sub: str) -> list[Candidate]:
        """The waiting cases, less those of a patient someone else holds a related study
        of (ready within `group_patient_minutes` of it): those go to that reader."""
        window = self.rules.group_patient_minutes * 60_000
        others: dict[str, list[int]] = {}
        for r in self.rows:
            holder = _held_by(r, self.now)
            if holder and holder != sub and r.get("mrn"):
                ready = int(r.get("completed_at") or r.get("updated_at") or 0)
                others.setdefault(str(r["mrn"]), []).append(ready)
        out = []
        for row in self.waiting():
            c = Candidate.from_row(row)
            near = others.get(c.patient, ())
            if window and any(abs(c.ready_at - t) <= window for t in near):
                continue
            out.append(c)
        return out


class Orchestrator:
    """A gateway node's access to the tenant's rules, board and records."""

    def __init__(
        self,
        redis: Client,
        feed: WorklistFeed,
        directory: DirectoryStore,
        *,
        rules_ttl: float = 30.0,
    ) -> None:
        self.redis = redis
        self.feed = feed
        self.directory = directory
        self.rules_ttl = rules_ttl
        self._rules: dict[str, tuple[float, Rules]] = {}

    # ---- rules ---------------------------------------------------------------------------

    async def rules(self, tenant: str) -> Rules:
        """The tenant's rules in force (cached; a directory notice drops the copy, so a
        change applies on every node within a moment, and the TTL bounds a lost notice)."""
        loop = asyncio.get_running_loop()
        cached = self._rules.get(tenant)
        if cached is not None and loop.time() - cached[0] < self.rules_ttl:
            return cached[1]
        try:
            entry = await self.directory.rules(tenant)
        except StoreError as exc:
            if cached is not None:
                log.warning("reading rules failed (%s); the last copy holds", exc.code)
                return cached[1]
            raise
        rules = entry.rules() if entry is not None else Rules()
        self._rules[tenant] = (loop.time(), rules)
        return rules

    def forget_rules(self, tenant: str | None = None) -> None:
        if tenant is None:
            self._rules.clear()
        else:
            self._rules.pop(tenant, None)

    # ---- the board -----------------------------------------------------------------------

    async def board(self, tenant: str) -> Board:
        rules = await self.rules(tenant)
        now = now_ms()
        snap = await self.feed.snapshot(tenant, _BOARD_VIEW, limit=_BOARD_LIMIT)
        raw = await self.redis.hgetall(keys.rvu_ledger(tenant, shift_of(now)))
        ledger = {_text(k): float(v) for k, v in raw.items()}
        return Board(rules, snap.rows, ledger, now)

    async def reserve(self, tenant: str, exam_id: str, node: str) -> bool:
        """Keep concurrent `next` presses (on any node) off a case being claimed now."""
        done = await self.redis.set(
            keys.next_reservation(tenant, exam_id), node, nx=True, px=RESERVE_MS
        )
        return bool(done)

    async def unreserve(self, tenant: str, exam_id: str) -> None:
        await self.redis.delete(keys.next_reservation(tenant, exam_id))

    # ---- records -------------------------------------------------------------------------

    async def record(self, tenant: str, decision: Decision | dict[str, Any], *, how: str) -> None:
        """Keep why a case went to whom, and every offer, acceptance, decline, lapse and
        escalation (the coordinator reads these); never fails what it records."""
        what = decision.explain() if isinstance(decision, Decision) else decision
        entry = {"at": now_ms(), "how": how, **what}
        try:
            await self.redis.xadd(
                keys.decisions(tenant),
                {"d": orjson.dumps(entry)},
                maxlen=_DECISIONS_KEPT,
                approximate=True,
            )
        except Exception:
            log.warning("recording an assignment decision failed")

    async def decisions(self, tenant: str, count: int = 100) -> list[dict[str, Any]]:
        """The newest decisions, newest first."""
        entries: Any = await self.redis.xrevrange(keys.decisions(tenant), count=count)
        return [orjson.loads(fields[b"d"]) for _, fields in entries or ()]

    async def credit(self, tenant: str, sub: str, procedure_code: str, rules: Rules) -> None:
        """A reader signed a case FINAL: its RVUs count toward their shift."""
        key = keys.rvu_ledger(tenant, shift_of(now_ms()))
        async with self.redis.pipeline(transaction=False) as pipe:
            pipe.hincrbyfloat(key, sub, rvu_of(procedure_code, rules.rvu_overrides))
            pipe.expire(key, _LEDGER_TTL_S)
            await pipe.execute()


def _text(value: object) -> str:
    return value.decode() if isinstance(value, bytes) else str(value)
