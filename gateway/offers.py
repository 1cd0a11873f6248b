"""STAT offers: a STAT ready to read goes at once to ONE eligible online reader, the one
with the lowest STAT load (`orchestration.choose_reader`), for `stat_offer_seconds`;
declined or lapsed, it goes to the next (those who passed are excluded). No eligible
reader online, or a STAT waiting longer than `stat_alert_minutes`, alerts the tenant's
coordinators and admins (those whose scope allows the row) at once.

One gateway node drives a tenant's offers at a time: the holder of the tenant's lease in
Redis (`SET NX PX`, renewed every tick; another node takes over within the lease when it
dies). Offers live in Redis (`keys.offers`), so a reader's accept or decline is answered
by whichever node holds their session, and the offer itself reaches them on whichever
node through presence's notices. Every offer, acceptance, decline, lapse and escalation
is recorded (`Orchestrator.record`).
"""

from __future__ import annotations

import asyncio
import logging
from collections.abc import Mapping
from typing import TYPE_CHECKING, Any, cast

import orjson

from orchestration import Candidate, ReaderLoad, choose_reader
from orchestration.policy import Allows
from worklist_cache import keys
from worklist_cache.scripts import LEASE_ACQUIRE

if TYPE_CHECKING:
    from gateway.context import Gateway

__all__ = ["OfferDesk"]

log = logging.getLogger("gateway.offers")

TICK_S = 0.5
LEASE_MS = 3_000
ALERT_ROLES = ("coordinator", "admin")


class OfferDesk:
    """The offer loop of one gateway node, and the offers' shared state."""

    def __init__(self, gw: Gateway) -> None:
        self.gw = gw
        self.redis = gw.redis
        self._lease = gw.redis.register_script(LEASE_ACQUIRE)

    # ---- the shared state ----------------------------------------------------------------

    async def get(self, tenant: str, exam_id: str) -> dict[str, Any] | None:
        raw = await self.redis.hget(keys.offers(tenant), exam_id)
        return None if raw is None else dict(orjson.loads(raw))

    async def put(self, tenant: str, state: Mapping[str, Any]) -> None:
        await self.redis.hset(keys.offers(tenant), state["exam_id"], orjson.dumps(state))

    async def drop(self, tenant: str, exam_id: str) -> None:
        await self.redis.hdel(keys.offers(tenant), exam_id)

    async def all(self, tenant: str) -> dict[str, dict[str, Any]]:
        raw = await self.redis.hgetall(keys.offers(tenant))
        return {_text(k): dict(orjson.loads(v)) for k, v in raw.items()}

    # ---- the loop ------------------------------------------------------------------------

    async def run(self) -> None:
        """Supervised: every tick, drive the offers of each tenant with a session here
        whose lease this node holds."""
        while True:
            await asyncio.sleep(TICK_S)
            for tenant in self.gw.presence.local_tenants():
                try:
                    if await self._lease(
                        keys=[keys.offer_lease(tenant)], args=[self.gw.node, LEASE_MS]
                    ):
                        await self.tick(tenant)
                except asyncio.CancelledError:
                    raise
                except Exception as exc:
                    self.gw.metrics["offer_tick_errors"] += 1
                    log.warning("offer round failed (%s); next tick retries", type(exc).__name__)

    async def tick(self, tenant: str) -> None:
        gw = self.gw
        # The offers before the board: an accept shows the claim in the cache, then drops
        # its offer, so a case read here with no offer is one the board sees as it is
        # (read the other way round, an accept in between made it look waiting, unoffered).
        offers = await self.all(tenant)
        board = await gw.orchestrator.board(tenant)
        rules = board.rules
        now = board.now
        stats = {r["exam_id"]: r for r in board.waiting() if r["priority"] == "STAT"}
        # Offers of cases no longer waiting (someone took it, or it moved on) end; the
        # reader who holds it now (who accepted it) is not told it was taken.
        for exam_id, gone in offers.items():
            if exam_id in stats:
                continue
            await self.drop(tenant, exam_id)
            if gone.get("reader") and board.holder(exam_id) != gone["reader"]:
                await self._ended(tenant, gone["reader"], exam_id, "taken")
        if not stats:
            return  # (who is online matters only to a STAT waiting)
        scopes = await gw.presence.readers(tenant)
        busy = {s["reader"] for s in offers.values() if s.get("reader")}
        for exam_id, row in stats.items():
            found = offers.get(exam_id)
            before = dict(found) if found else None
            state = found or {
                "exam_id": exam_id,
                "ready_at": Candidate.from_row(row).ready_at or now,
                "reader": None,
                "declined": [],
                "escalated": False,
                "alerted": False,
            }
            reader = state.get("reader")
            if reader and now >= state["expires_at"]:
                state["declined"] = [*state["declined"], reader]
                state["reader"] = None
                busy.discard(reader)
                await gw.orchestrator.record(
                    tenant, {"exam_id": exam_id, "reader": reader}, how="offer-lapsed"
                )
                await self._ended(tenant, reader, exam_id, "lapsed")
            if not state.get("reader"):
                await self._offer(tenant, row, state, board, scopes, busy)
            waited = now - int(state["ready_at"])
            if not state["alerted"] and waited >= rules.stat_alert_minutes * 60_000:
                state["alerted"] = True
                minutes = waited // 60_000
                await self._alert(tenant, "waiting", row, waited, f"STAT waiting {minutes} min")
            if state != before:
                await self.put(tenant, state)

    async def _offer(
        self,
        tenant: str,
        row: dict[str, Any],
        state: dict[str, Any],
        board: Any,
        scopes: Mapping[str, Any],
        busy: set[str],
    ) -> None:
        gw = self.gw
        rules = board.rules
        readers: list[ReaderLoad] = [
            board.load(sub, cast(Allows, scope.allows)) for sub, scope in scopes.items()
        ]
        # One offer at a time per reader: those holding one are passed over for now.
        decision = choose_reader(
            Candidate.from_row(row), readers, rules, exclude=[*state["declined"], *busy]
        )
        if decision is None:
            if not state["escalated"]:
                state["escalated"] = True
                waited = board.now - int(state["ready_at"])
                await gw.orchestrator.record(
                    tenant,
                    {"exam_id": row["exam_id"], "declined": state["declined"]},
                    how="offer-escalated",
                )
                await self._alert(tenant, "no_reader", row, waited, "STAT with no reader online")
            return
        expires = board.now + rules.stat_offer_seconds * 1000
        state.update(reader=decision.reader, expires_at=expires, decision=decision.explain())
        busy.add(decision.reader)
        gw.metrics["offers_made"] += 1
        await gw.orchestrator.record(tenant, decision, how="offer")
        await gw.presence.notify(
            tenant,
            decision.reader,
            {
                "type": "offer",
                "exam_id": row["exam_id"],
                "row": row,
                "expires_at": expires,
                "decision": decision.explain(),
            },
            row=row,
        )

    async def _ended(self, tenant: str, reader: str, exam_id: str, reason: str) -> None:
        frame = {"type": "offer_ended", "exam_id": exam_id, "reason": reason}
        await self.gw.presence.notify(tenant, reader, frame)

    async def _alert(
        self, tenant: str, kind: str, row: dict[str, Any], waited: int, message: str
    ) -> None:
        self.gw.metrics[f"offer_alerts_{kind}"] += 1
        frame = {
            "type": "alert",
            "kind": kind,
            "exam_id": row["exam_id"],
            "row": row,
            "waiting_ms": max(0, waited),
            "message": message,
        }
        await self.gw.presence.notify(tenant, None, frame, roles=ALERT_ROLES, row=row)


def _text(value: object) -> str:
    return value.decode() if isinstance(value, bytes) else str(value)
