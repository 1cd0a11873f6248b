"""Concurrent claimers on one exam: at the store (`dynamo.claims`) or over the gateway."""

from __future__ import annotations

import asyncio
import contextlib
import importlib
import itertools
import os
import time
from collections import Counter
from typing import Any

import httpx
import orjson

from dynamo.claims import Claims
from dynamo.exceptions import ClaimError
from dynamo.models import Exam
from dynamo.store import ExamStore
from loadtest.bench.config import CLAIMERS, TENANT
from loadtest.loadclients import (
    Conn,
    auth_available,
    mint_bench_token,
    open_session,
)

__all__ = ["Claimers", "StoreClaimers", "WsClaimers", "ws_claims_available"]


def ws_claims_available() -> bool:
    """True once the gateway takes `claim` frames (and sessions authenticate)."""
    if not auth_available():
        return False
    protocol = importlib.import_module("gateway.protocol")
    return hasattr(protocol, "ClaimRequest")


class Claimers:
    """Several readers claiming one exam at once. `round` is the one place a claim is
    made; `StoreClaimers` claims at the store, `WsClaimers` over the gateway."""

    where = ""

    def __init__(self, store: ExamStore) -> None:
        self.store = store

    async def __aenter__(self) -> Claimers:
        return self

    async def __aexit__(self, *exc: object) -> None:
        return None

    async def counters(self) -> dict[str, float]:
        """The server's claim counters (`claim_*_us`, `claims_*`), where there is one."""
        return {}

    async def round(self, exam: Exam, errors: Counter[str]) -> tuple[list[float], int]:
        """Every claimer claims `exam` at once; the winner (if any) releases it.

        Returns each claim's round trip (ms) and how many claimers won.
        """
        raise NotImplementedError


class StoreClaimers(Claimers):
    """Claims through `dynamo.claims.Claims` on the benchmark's own DynamoDB client."""

    where = "store"

    def __init__(self, store: ExamStore) -> None:
        super().__init__(store)
        self.claims = Claims(store)

    async def round(self, exam: Exam, errors: Counter[str]) -> tuple[list[float], int]:
        async def attempt(i: int) -> tuple[float, tuple[str, str] | None]:
            user = f"bench-reader-{i}"
            t0 = time.perf_counter()
            try:
                claim = await self.claims.claim(
                    exam.patient_id, exam.accession, user, f"Bench Reader {i}"
                )
            except ClaimError as exc:
                if exc.code != "conflict":
                    errors[exc.code] += 1
                return (time.perf_counter() - t0) * 1000, None
            return (time.perf_counter() - t0) * 1000, (user, claim.token)

        outcomes = await asyncio.gather(*(attempt(i) for i in range(CLAIMERS)))
        winners = [won for _, won in outcomes if won is not None]
        for user, token in winners:
            try:
                await self.claims.release(exam.patient_id, exam.accession, user, token)
            except ClaimError as exc:
                errors[f"release_{exc.code}"] += 1
        return [ms for ms, _ in outcomes], len(winners)


class WsClaimers(Claimers):
    """CLAIMERS authenticated sessions, one user each, claiming through the gateway."""

    where = "websocket"

    def __init__(self, url: str, store: ExamStore) -> None:
        super().__init__(store)
        self.url = url
        self.conns: list[Conn] = []
        self._ids = itertools.count()

    async def __aenter__(self) -> WsClaimers:
        secret = os.environ["GATEWAY_JWT_SECRET"]
        for i in range(CLAIMERS):
            token = mint_bench_token(secret, sub=f"bench-claimer-{i}", tenant=TENANT)
            self.conns.append(await open_session(self.url, token))
        return self

    async def __aexit__(self, *exc: object) -> None:
        for conn in self.conns:
            with contextlib.suppress(Exception):
                await asyncio.wait_for(conn.close(), 5)
        self.conns.clear()

    async def counters(self) -> dict[str, float]:
        url = self.url.replace("ws://", "http://", 1).rsplit("/", 1)[0] + "/metrics"
        async with httpx.AsyncClient() as http:
            text = (await http.get(url, timeout=10)).text
        out: dict[str, float] = {}
        for line in text.splitlines():
            name, _, value = line.partition(" ")
            if name.startswith(("gateway_claim_", "gateway_claims_", "gateway_requests_claim")):
                out[name.removeprefix("gateway_").removesuffix("_total")] = float(value)
        return out

    async def _request(self, conn: Conn, frame: dict[str, Any]) -> dict[str, Any]:
        await conn.send(orjson.dumps(frame).decode())
        while True:
            reply: dict[str, Any] = orjson.loads(await asyncio.wait_for(conn.recv(), 30))
            if reply.get("id") == frame["id"]:
                return reply

    async def round(self, exam: Exam, errors: Counter[str]) -> tuple[list[float], int]:
        async def attempt(conn: Conn) -> tuple[float, Conn | None]:
            request = {"type": "claim", "id": f"c{next(self._ids)}", "exam_id": exam.accession}
            t0 = time.perf_counter()
            reply = await self._request(conn, request)
            ms = (time.perf_counter() - t0) * 1000
            if reply.get("type") == "claimed":
                return ms, conn
            if reply.get("code") != "conflict":
                errors[str(reply.get("code"))] += 1
            return ms, None

        outcomes = await asyncio.gather(*(attempt(c) for c in self.conns))
        winners = [conn for _, conn in outcomes if conn is not None]
        for conn in winners:
            request = {"type": "release", "id": f"r{next(self._ids)}", "exam_id": exam.accession}
            reply = await self._request(conn, request)
            if reply.get("type") != "released":
                errors[f"release_{reply.get('code')}"] += 1
        return [ms for ms, _ in outcomes], len(winners)
