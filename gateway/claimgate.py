"""The claim gate: a short Redis reservation in front of the claim's DynamoDB write.

When several readers claim one exam at once, only the first to reserve the exam here
goes on to the conditional write in DynamoDB; the others wait for its outcome (one
write's time, not a queue of them) and are answered `conflict` naming the winner,
without writing to DynamoDB themselves. One claim per node and exam speaks to Redis:
the node's other claims of that exam wait on it in memory; a claim under way on another
node is looked at again after 2 ms, doubling to 32 ms. The gate is a courtesy, never
the guarantee: the DynamoDB conditional write alone decides who holds an exam (no two
readers ever do), whatever the gate says.

- A reservation is `SET NX PX` with a short TTL (`GATEWAY_CLAIM_GATE_MS`): a holder that
  fails or dies mid-claim blocks nobody for longer than that.
- A claim that wins keeps the reservation, now naming the holder and the lease's end,
  until its TTL (never beyond the lease): claims arriving meanwhile are answered from it
  at once. A claim that loses (or fails) takes its reservation back, and those waiting
  on it try again (one of them goes on to DynamoDB, which gives the true answer).
- Whatever ends a claim through the gateway (release, a FINAL report, a broken lock, a
  reassignment) clears the reservation, so the exam is claimable at once. A claim ended
  some other way (the RIS finalizes or cancels the exam over HL7) may be answered
  `conflict` for at most what is left of the TTL.
- The same user passes the gate (a second tab claims again, as DynamoDB allows).
- Redis failing or slow: the gate is skipped (logged), claims go to DynamoDB alone.

The worklist cache's row is not used to refuse a claim: the row may lag DynamoDB (the
holder released a moment ago and the change is still on its way), so a refusal read
from it could be wrong for as long as the lag, with no bound the gateway controls.
"""

from __future__ import annotations

import asyncio
import logging
import secrets
from dataclasses import dataclass
from typing import Any

import orjson

from dynamo.models import now_ms
from worklist_cache import keys
from worklist_cache.connection import Client

__all__ = ["ClaimGate", "Holder", "Ticket"]

log = logging.getLogger("gateway.claims")

# KEYS: gate   ARGV: value, ttl ms. Reserves a free gate (returns false), or returns the
# reservation that stands.
_ENTER = """
local held = redis.call('GET', KEYS[1])
if held then
  return held
end
redis.call('SET', KEYS[1], ARGV[1], 'PX', ARGV[2])
return false
"""

# KEYS: gate   ARGV: nonce, new value ('' deletes), ttl ms. Only the reservation that
# starts with `nonce|` is changed: one that expired and was taken since is left alone.
_SETTLE = """
local held = redis.call('GET', KEYS[1])
if not held or string.sub(held, 1, string.len(ARGV[1]) + 1) ~= ARGV[1] .. '|' then
  return 0
end
if ARGV[2] == '' then
  redis.call('DEL', KEYS[1])
else
  redis.call('SET', KEYS[1], ARGV[2], 'PX', ARGV[3])
end
return 1
"""


@dataclass(frozen=True)
class Ticket:
    """This claim's reservation (settle it with `won` or `lost`, or `abandon` it)."""

    tenant: str
    exam_id: str
    nonce: str
    sub: str


@dataclass(frozen=True)
class Holder:
    """Who holds the gate: claiming now (`lease_expires_at` None) or holding the claim
    (`enter` answers only the latter)."""

    sub: str
    name: str | None
    lease_expires_at: int | None


class ClaimGate:
    """Reservations of exams being claimed, shared by every gateway node."""

    def __init__(
        self, redis: Client, ttl_ms: int, *, timeout_s: float = 1.0, poll_s: float = 0.002
    ) -> None:
        self.redis = redis
        self.ttl_ms = ttl_ms
        # A gate slower than this is skipped (the claim goes to DynamoDB alone).
        self.timeout_s = timeout_s
        # How soon a claim waiting on another node's reservation looks again (doubling
        # to 16x): a claim on this node is waited for locally, without Redis.
        self.poll_s = poll_s
        # Claims under way on this node, by (tenant, exam): their holder's sub, and the
        # outcome the others here wait for (the holder, or None: try again).
        self._flights: dict[tuple[str, str], tuple[str, asyncio.Future[Holder | None]]] = {}
        self._enter = redis.register_script(_ENTER)
        self._settle = redis.register_script(_SETTLE)

    @property
    def enabled(self) -> bool:
        return self.ttl_ms > 0

    async def enter(self, tenant: str, exam_id: str, sub: str, name: str) -> Ticket | Holder | None:
        """Reserve `exam_id` for `sub`'s claim: a `Ticket` when reserved; the `Holder`
        when someone else holds the exam (a claim under way is waited for, up to the
        TTL); None when the claim goes on to DynamoDB without the gate (disabled, Redis
        failing, `sub` holds it already, or a reservation outlived the wait)."""
        if not self.enabled:
            return None
        loop = asyncio.get_running_loop()
        deadline = loop.time() + self.ttl_ms / 1000
        key = (tenant, exam_id)
        while loop.time() < deadline:
            flight = self._flights.get(key)
            if flight is not None:
                if flight[0] == sub:
                    return None  # the same user again: DynamoDB lets a holder re-claim
                try:
                    outcome = await asyncio.wait_for(
                        asyncio.shield(flight[1]), deadline - loop.time()
                    )
                except TimeoutError:
                    self._land_flight(key, flight, None)  # stuck: forget it
                    break
                if outcome is not None:
                    return None if outcome.sub == sub else outcome  # a holder may re-claim
                continue  # that claim lost: try again
            # This claim speaks for the node: others here wait on it, not on Redis.
            mine: tuple[str, asyncio.Future[Holder | None]] = (sub, loop.create_future())
            self._flights[key] = mine
            try:
                got = await self._reserve(tenant, exam_id, sub, name, deadline)
            except BaseException:
                self._land_flight(key, mine, None)
                raise
            if not isinstance(got, Ticket):
                self._land_flight(key, mine, got)
            return got  # a Ticket keeps the flight until `won`, `lost` or `abandon`
        return None  # a reservation outlived the wait: let DynamoDB answer

    async def _reserve(
        self, tenant: str, exam_id: str, sub: str, name: str, deadline: float
    ) -> Ticket | Holder | None:
        """Reserve in Redis, waiting (polling, backing off) on another node's claim."""
        loop = asyncio.get_running_loop()
        pause = self.poll_s
        while True:
            got = await self._try(tenant, exam_id, sub, name)
            if not isinstance(got, Holder) or got.lease_expires_at is not None:
                return got
            if loop.time() >= deadline:
                return None
            await asyncio.sleep(pause)
            pause = min(pause * 2, 16 * self.poll_s)

    async def _try(self, tenant: str, exam_id: str, sub: str, name: str) -> Ticket | Holder | None:
        nonce = secrets.token_hex(8)
        value = _value(nonce, sub, name, None)
        try:
            held = await asyncio.wait_for(
                self._enter(keys=[keys.claim_gate(tenant, exam_id)], args=[value, self.ttl_ms]),
                self.timeout_s,
            )
        except asyncio.CancelledError:
            raise
        except Exception as exc:
            log.warning("claim gate unavailable (%s): claiming at the store alone", _name(exc))
            return None
        if held is None:
            return Ticket(tenant, exam_id, nonce, sub)
        holder = _holder(held)
        if holder is None or holder.sub == sub:
            return None
        return holder

    async def won(self, ticket: Ticket, sub: str, name: str, lease_expires_at: int | None) -> None:
        """The claim won: the reservation names the holder until its TTL (or the lease's
        end, if sooner)."""
        ttl = self.ttl_ms
        if lease_expires_at is not None:
            ttl = min(ttl, lease_expires_at - now_ms())
        if ttl <= 0:
            await self.lost(ticket)
            return
        self._land(ticket, Holder(sub, name, lease_expires_at))
        await self._settled(ticket, _value(ticket.nonce, sub, name, lease_expires_at), ttl)

    async def lost(self, ticket: Ticket) -> None:
        """The claim did not win (refused, or failed): take the reservation back."""
        self._land(ticket, None)
        await self._settled(ticket, "", 0)

    def abandon(self, ticket: Ticket) -> None:
        """The claim ended without an outcome (its request was cancelled): claims here
        waiting on it try again; its reservation in Redis lapses on its own."""
        self._land(ticket, None)

    def _land(self, ticket: Ticket, outcome: Holder | None) -> None:
        key = (ticket.tenant, ticket.exam_id)
        flight = self._flights.get(key)
        if flight is not None and flight[0] == ticket.sub:
            self._land_flight(key, flight, outcome)

    def _land_flight(
        self,
        key: tuple[str, str],
        flight: tuple[str, asyncio.Future[Holder | None]],
        outcome: Holder | None,
    ) -> None:
        if self._flights.get(key) is flight:
            del self._flights[key]
        if not flight[1].done():
            flight[1].set_result(outcome)

    async def clear(self, tenant: str, exam_id: str) -> None:
        """The exam's claim ended: nobody's reservation stands any more."""
        if not self.enabled:
            return
        try:
            # As long as the reservation could live: a clear that fails leaves the exam
            # answered `conflict` until the reservation's TTL.
            await asyncio.wait_for(
                self.redis.delete(keys.claim_gate(tenant, exam_id)), self.ttl_ms / 1000
            )
        except asyncio.CancelledError:
            raise
        except Exception as exc:
            log.warning("clearing a claim gate failed (%s); it lapses on its own", _name(exc))

    async def _settled(self, ticket: Ticket, value: str, ttl: int) -> None:
        gate = keys.claim_gate(ticket.tenant, ticket.exam_id)
        try:
            await asyncio.wait_for(
                self._settle(keys=[gate], args=[ticket.nonce, value, max(ttl, 1)]),
                self.ttl_ms / 1000,
            )
        except asyncio.CancelledError:
            raise
        except Exception as exc:
            log.warning("settling a claim gate failed (%s); it lapses on its own", _name(exc))


def _value(nonce: str, sub: str, name: str, lease_expires_at: int | None) -> str:
    holder = {"sub": sub, "name": name, "lease_expires_at": lease_expires_at}
    return nonce + "|" + orjson.dumps(holder).decode()


def _holder(raw: Any) -> Holder | None:
    text = raw.decode() if isinstance(raw, bytes) else str(raw)
    _, _, body = text.partition("|")
    try:
        data = orjson.loads(body)
        return Holder(str(data["sub"]), data.get("name"), data.get("lease_expires_at"))
    except (orjson.JSONDecodeError, KeyError, TypeError):
        return None  # not ours to read: let DynamoDB decide


def _name(exc: BaseException) -> str:
    return type(exc).__name__
