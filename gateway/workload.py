"""The coordinator's live workload board: per reader (online state, open claims, STATs,
RVUs this shift, offers pending), the unassigned queue by priority and age, turnaround
breaches as they happen, and the latest assignment decisions.

Everything is read from what every node shares (the board of `gateway.orchestrate`,
presence, the offers and decisions in Redis), so any node shows the same. Each node
pushes a fresh `board` to its own watching sessions when what they may see changed,
checked every `PUSH_S` by one supervised loop; each viewer's copy passes their scope
(the one rule) row by row.
"""

from __future__ import annotations

import asyncio
import logging
from typing import TYPE_CHECKING, Any

import orjson

from dynamo.states import PRIORITY_RANK
from orchestration import Candidate

if TYPE_CHECKING:
    from gateway.context import Gateway
    from gateway.handlers import Connection
    from gateway.orchestrate import Board

__all__ = ["WorkloadBoard"]

log = logging.getLogger("gateway.workload")

PUSH_S = 1.0
_LIMIT = 200
_RANK = {p.value: r for p, r in PRIORITY_RANK.items()}


class _Shared:
    """One tenant's figures at one moment, before any viewer's scope is applied."""

    def __init__(
        self,
        board: Board,
        users: dict[str, dict[str, Any]],
        offers: dict[str, dict[str, Any]],
        decisions: list[dict[str, Any]],
    ) -> None:
        self.board = board
        self.users = users
        self.offers = offers
        self.decisions = decisions


class WorkloadBoard:
    def __init__(self, gw: Gateway) -> None:
        self.gw = gw
        self.watchers: dict[str, Connection] = {}  # conn_id -> session
        self._sent: dict[str, bytes] = {}  # conn_id -> the last board sent (sans `at`)

    def watch(self, session: Connection) -> None:
        self.watchers[session.conn_id] = session

    async def shared(self, tenant: str) -> _Shared:
        gw = self.gw
        board = await gw.orchestrator.board(tenant)
        users = await gw.presence.users(tenant)
        offers = await gw.offers.all(tenant)
        decisions = await gw.orchestrator.decisions(tenant, 200)
        return _Shared(board, users, offers, decisions)

    def frame(self, shared: _Shared, session: Connection, request_id: str | None) -> dict[str, Any]:
        """The board as this viewer may see it."""
        p = session.principal
        assert p is not None
        board, now = shared.board, shared.board.now
        rows = [r for r in board.rows if p.scope.allows(r)]
        live_offers = {
            e: s for e, s in shared.offers.items() if s.get("reader") and s["expires_at"] > now
        }
        names = {sub: u["name"] for sub, u in shared.users.items()}
        for r in board.rows:
            if r.get("claimed_by") and r.get("claimed_by_name"):
                names.setdefault(str(r["claimed_by"]), str(r["claimed_by_name"]))
        readers = {
            sub for sub, u in shared.users.items() if "radiologist" in u.get("roles", ())
        } | {h for r in board.rows if (h := _holder(r, now))}
        pending: dict[str, int] = {}
        for s in live_offers.values():
            pending[s["reader"]] = pending.get(s["reader"], 0) + 1
        reader_list = []
        for sub in sorted(readers, key=lambda s: names.get(s, s)):
            load = board.load(sub, None)
            reader_list.append(
                {
                    "sub": sub,
                    "name": names.get(sub, sub),
                    "online": sub in shared.users,
                    "open_claims": load.open_claims,
                    "stat_claims": load.stat_claims,
                    "rvu_shift": round(load.rvu_shift, 2),
                    "offers": pending.get(sub, 0),
                    "holding": [r["exam_id"] for r in rows if _holder(r, now) == sub],
                }
            )
        waiting = [r for r in board.waiting() if p.scope.allows(r)]
        waiting.sort(key=lambda r: (_RANK.get(r["priority"], 9), Candidate.from_row(r).ready_at))
        queue = [
            {
                **_brief(r),
                "ready_at": Candidate.from_row(r).ready_at,
                "offered_to": names.get(live_offers[r["exam_id"]]["reader"])
                if r["exam_id"] in live_offers
                else None,
            }
            for r in waiting[:_LIMIT]
        ]
        breaches = [
            {**_brief(r), "status": r["status"], "claimed_by_name": r.get("claimed_by_name")}
            for r in rows
            if int(r["tat_due_at"]) < now
        ][:_LIMIT]
        visible = {r["exam_id"] for r in rows}
        decisions = [d for d in shared.decisions if d.get("exam_id") in visible][:20]
        return {
            "type": "board",
            "id": request_id,
            "at": now,
            "readers": reader_list,
            "queue": queue,
            "breaches": breaches,
            "decisions": decisions,
        }

    async def send(self, session: Connection, request_id: str | None) -> None:
        assert session.principal is not None
        frame = self.frame(await self.shared(session.principal.tenant), session, request_id)
        self._sent[session.conn_id] = _key(frame)
        session.send(frame)

    async def run(self) -> None:
        """Supervised: push each watching session a fresh board when theirs changed."""
        while True:
            await asyncio.sleep(PUSH_S)
            live = {s.conn_id for s in self.gw.sessions}
            for conn_id in [c for c in self.watchers if c not in live]:
                self.watchers.pop(conn_id, None)
                self._sent.pop(conn_id, None)
            tenants: dict[str, list[Connection]] = {}
            for session in self.watchers.values():
                if session.principal is not None:
                    tenants.setdefault(session.principal.tenant, []).append(session)
            for tenant, sessions in tenants.items():
                try:
                    shared = await self.shared(tenant)
                except asyncio.CancelledError:
                    raise
                except Exception as exc:
                    self.gw.metrics["board_errors"] += 1
                    log.warning("workload board read failed (%s)", type(exc).__name__)
                    continue
                for session in sessions:
                    frame = self.frame(shared, session, None)
                    key = _key(frame)
                    if self._sent.get(session.conn_id) != key:
                        self._sent[session.conn_id] = key
                        session.send(frame)


def _holder(row: dict[str, Any], now: int) -> str | None:
    lease = row.get("lease_expires_at")
    if not row.get("claimed_by") or (lease is not None and int(lease) <= now):
        return None
    return str(row["claimed_by"])


def _brief(row: dict[str, Any]) -> dict[str, Any]:
    """What the board shows of a case (worklist fields; no patient)."""
    return {
        k: row.get(k)
        for k in (
            "exam_id",
            "priority",
            "modality",
            "procedure",
            "site",
            "subspecialty",
            "tat_due_at",
        )
    }


def _key(frame: dict[str, Any]) -> bytes:
    return orjson.dumps({k: v for k, v in frame.items() if k not in ("at", "id")})
