"""Rounds of readers pressing "Next case" at once: every case handed out exactly once,
nobody handed a case their scope forbids.

    python -m loadtest.nextcase_rounds --rounds 1000 [--readers 20] [--exams 10]

starts its own Redis, DynamoDB Local, relay worker and two gateway processes sharing
them; each round writes `--exams` cases ready to read (mixed sites, subspecialties and
priorities), then every reader, half of them on each gateway, presses `next` at the same
moment and keeps pressing (signing each case FINAL) until told `nothing_eligible`. A
round passes when each case went to exactly one reader who may read it and nothing else
went wrong. Prints a JSON summary; exit status 1 when any round failed.

`Round` is also what `tests/test_next_case.py` and `tests/test_next_rounds.py` play.
"""

from __future__ import annotations

import argparse
import asyncio
import contextlib
import itertools
import json
import sys
import time
import uuid
from collections import Counter
from collections.abc import Awaitable, Callable, Sequence
from dataclasses import dataclass, field
from typing import Any

import orjson

from dynamo.models import Exam, Order, PatientProfile, now_ms
from dynamo.states import ExamStatus, Modality, Priority
from dynamo.store import ExamStore

__all__ = ["Outcome", "Reader", "Round", "make_ready", "readers_for"]

TENANT = "northwind"
SITES = ("NW-GEN", "NW-ORT", "NW-IMG")
SUBSPECIALTIES = ("neuro", "body", "msk")
PRIORITIES = (Priority.ROUTINE, Priority.ROUTINE, Priority.URGENT, Priority.STAT)
_READY_PATH = (ExamStatus.ARRIVED, ExamStatus.IN_PROGRESS, ExamStatus.COMPLETED)

Request = Callable[[dict[str, Any], float], Awaitable[dict[str, Any]]]


@dataclass(frozen=True)
class Reader:
    """A radiologist of the run: all of the tenant, one site, or one subspecialty."""

    sub: str
    sites: tuple[str, ...] = ()
    subspecialties: tuple[str, ...] = ()

    def may_read(self, site: str, subspecialty: str) -> bool:
        return (not self.sites or site in self.sites) and (
            not self.subspecialties or subspecialty in self.subspecialties
        )

    def token_args(self) -> dict[str, Any]:
        return {
            "name": f"Reader {self.sub}",
            "sites": self.sites,
            "subspecialties": self.subspecialties,
        }


def readers_for(n: int, prefix: str = "nx") -> list[Reader]:
    """Half may read everything (so every case has readers), a quarter one site, a
    quarter one subspecialty."""
    out = []
    for i in range(n):
        sub = f"{prefix}-{i:02d}"
        if i % 4 == 2:
            out.append(Reader(sub, sites=(SITES[i % len(SITES)],)))
        elif i % 4 == 3:
            out.append(Reader(sub, subspecialties=(SUBSPECIALTIES[i % len(SUBSPECIALTIES)],)))
        else:
            out.append(Reader(sub))
    return out


_serial = itertools.count(1)


async def make_ready(
    store: ExamStore, layout: Sequence[tuple[str, str, Priority]], prefix: str
) -> list[Exam]:
    """Made-up cases (no real patient, ever), each moved to COMPLETED: ready to read."""
    out = []
    for site, subspecialty, priority in layout:
        n = next(_serial)
        now = now_ms()
        patient_id = f"{TENANT}#NX{prefix}{n:07d}"
        accession = f"NX{prefix}{n:07d}"
        profile = PatientProfile(
            patient_id=patient_id,
            tenant=TENANT,
            mrn=f"NX{prefix}{n:07d}",
            name="NEXTCASE^PATIENT",
            birth_date="1970-01-01",
            sex="O",
        )
        order = Order(
            order_id=f"o-{accession}",
            patient_id=patient_id,
            tenant=TENANT,
            accession=accession,
            ordering_provider="TESTDOC^ORDERING",
            procedure_code="70450",
            priority=priority,
            ordered_at=now,
        )
        exam = Exam(
            tenant=TENANT,
            site=site,
            accession=accession,
            patient_id=patient_id,
            order_id=order.order_id,
            mrn=profile.mrn,
            patient_name=profile.name,
            modality=Modality.CT,
            procedure_code="70450",
            procedure="CT head without contrast",
            body_part="HEAD",
            subspecialty=subspecialty,
            priority=priority,
            scheduled_at=now,
            tat_due_at=now + 3_600_000,
        )
        exam = await store.create_exam(exam, order, profile)
        for step in _READY_PATH:
            exam = await store.transition(exam.patient_id, exam.accession, step)
        out.append(exam)
    return out


@dataclass
class Outcome:
    handed: list[tuple[str, str]] = field(default_factory=list)  # (reader, exam_id)
    problems: list[str] = field(default_factory=list)
    next_ms: list[float] = field(default_factory=list)
    nothing: int = 0


@dataclass
class Round:
    exams: Sequence[Exam]
    readers: Sequence[Reader]
    outcome: Outcome = field(default_factory=Outcome)

    @staticmethod
    def layout(count: int, n: int) -> list[tuple[str, str, Priority]]:
        """Round `n`'s cases: a spread of sites, subspecialties and priorities."""
        return [
            (
                SITES[(n + i) % len(SITES)],
                SUBSPECIALTIES[(n * 7 + i * 5) % len(SUBSPECIALTIES)],
                PRIORITIES[(n + i * 3) % len(PRIORITIES)],
            )
            for i in range(count)
        ]

    async def play(self, requests: Sequence[Request], timeout: float = 30.0) -> Outcome:
        """Every reader presses `next` at once, and again after signing each case, until
        nothing is eligible."""

        async def reader(person: Reader, request: Request) -> None:
            for _ in range(len(self.exams) + 2):
                t0 = time.perf_counter()
                reply = await request({"type": "next"}, timeout)
                self.outcome.next_ms.append((time.perf_counter() - t0) * 1000)
                if reply.get("type") == "claimed":
                    self.outcome.handed.append((person.sub, reply["exam_id"]))
                    signed = await request(
                        {"type": "sign", "exam_id": reply["exam_id"], "status": "FINAL"}, timeout
                    )
                    if signed.get("type") != "signed":
                        self.outcome.problems.append(f"{person.sub}: sign {signed.get('code')}")
                    continue
                if reply.get("code") == "nothing_eligible":
                    self.outcome.nothing += 1
                    return
                self.outcome.problems.append(f"{person.sub}: next {reply.get('code')}")
                return
            self.outcome.problems.append(f"{person.sub}: handed more than there was")

        await asyncio.gather(*(reader(p, r) for p, r in zip(self.readers, requests, strict=True)))
        return self.outcome

    def violations(self) -> list[str]:
        by_id = {e.accession: e for e in self.exams}
        people = {r.sub: r for r in self.readers}
        out = list(self.outcome.problems)
        counts = Counter(exam_id for _, exam_id in self.outcome.handed)
        out += [f"{e} handed out {n} times" for e, n in counts.items() if n != 1]
        out += [f"{e} never handed out" for e in by_id if e not in counts]
        out += [f"{e} was not this round's" for e in counts if e not in by_id]
        for sub, exam_id in self.outcome.handed:
            exam = by_id.get(exam_id)
            if exam is not None and not people[sub].may_read(exam.site, exam.subspecialty):
                out.append(f"{sub} was handed {exam_id}, outside their scope")
        return out

    def check(self) -> None:
        problems = self.violations()
        assert not problems, problems


# ---- the standalone run: its own stack, two gateway processes ------------------------------


async def _request_on(conn: Any) -> Request:
    ids = itertools.count(1)

    async def request(frame: dict[str, Any], timeout: float) -> dict[str, Any]:
        rid = f"q{next(ids)}"
        await conn.send(orjson.dumps({**frame, "id": rid}).decode())
        while True:
            reply: dict[str, Any] = orjson.loads(await asyncio.wait_for(conn.recv(), timeout))
            if reply.get("id") == rid:
                return reply

    return request


async def _cached(redis: Any, exams: Sequence[Exam], timeout: float = 30.0) -> None:
    from worklist_cache import keys

    deadline = time.monotonic() + timeout
    for exam in exams:
        while True:
            version = await redis.hget(keys.versions(exam.tenant), exam.accession)
            if version is not None and int(version) >= exam.version:
                break
            if time.monotonic() > deadline:
                raise TimeoutError(f"{exam.accession} never reached the cache")
            await asyncio.sleep(0.01)


async def _run(args: argparse.Namespace) -> dict[str, Any]:
    from redis.asyncio import Redis

    from devstack.procs import ManagedProcess, free_port, wait_for_port
    from devstack.seed import SEED
    from devstack.services import ROOT, start_dynamodb_local, start_redis
    from dynamo.client import dynamodb_client
    from dynamo.directory import DirectoryStore, Person
    from dynamo.directory.files import read as read_directory
    from dynamo.settings import DynamoSettings
    from dynamo.table import ensure_table
    from gateway.auth import mint_token
    from loadtest.loadclients import open_session

    secret = "nextcase-rounds-" + uuid.uuid4().hex
    redis_proc, redis_url = start_redis()
    ddb_proc, ddb_url = start_dynamodb_local()
    procs: list[ManagedProcess] = [redis_proc, ddb_proc]
    conns: list[Any] = []
    try:
        settings = DynamoSettings(endpoint_url=ddb_url, table=f"nx-{uuid.uuid4().hex[:8]}")
        people = readers_for(args.readers)
        async with dynamodb_client(settings) as ddb:
            await ensure_table(ddb, settings.table)
            store = ExamStore(ddb, settings.table)
            directory = DirectoryStore(store)
            entries, rows = read_directory(SEED)
            await directory.apply(entries, actor="nextcase-rounds", rows=rows)
            for p in people:
                person = Person(
                    tenant=TENANT,
                    sub=p.sub,
                    name=f"Reader {p.sub}",
                    roles=("radiologist",),
                    sites=p.sites,
                    subspecialties=p.subspecialties,
                )
                await directory.add(person, actor="nextcase-rounds")
            base = {
                "REDIS_URL": redis_url,
                "DYNAMO_ENDPOINT_URL": ddb_url,
                "DYNAMO_TABLE": settings.table,
            }
            worker_env = {**base, "RELAY_POLL_INTERVAL": "0.02", "RELAY_NODE_NAME": "nx-relay"}
            argv = [sys.executable, "-m"]
            procs.append(ManagedProcess("relay", [*argv, "relay"], env=worker_env, cwd=ROOT))
            ports = [free_port(), free_port()]
            for i, port in enumerate(ports):
                env = {
                    **base,
                    "GATEWAY_PORT": str(port),
                    "GATEWAY_HOST": "127.0.0.1",
                    "GATEWAY_JWT_SECRET": secret,
                    "GATEWAY_NODE_NAME": f"nx-gw-{i + 1}",
                }
                procs.append(ManagedProcess(f"gw{i}", [*argv, "gateway"], env=env, cwd=ROOT))
            for port in ports:
                await asyncio.to_thread(wait_for_port, port, 60)
            for i, p in enumerate(people):
                token = mint_token(
                    secret,
                    sub=p.sub,
                    name=f"Reader {p.sub}",
                    tenant=TENANT,
                    roles=["radiologist"],
                    sites=list(p.sites),
                    subspecialties=list(p.subspecialties),
                    ttl_s=24 * 3600,
                )
                url = f"ws://127.0.0.1:{ports[i % 2]}/ws"
                conns.append(await open_session(url, token))
            requests = [await _request_on(c) for c in conns]
            redis = Redis.from_url(redis_url)
            failed: list[dict[str, Any]] = []
            handed = nothing = 0
            next_ms: list[float] = []
            t0 = time.monotonic()
            try:
                for n in range(args.rounds):
                    exams = await make_ready(store, Round.layout(args.exams, n), f"{n:05d}")
                    await _cached(redis, exams)
                    rnd = Round(exams, people)
                    outcome = await rnd.play(requests)
                    handed += len(outcome.handed)
                    nothing += outcome.nothing
                    next_ms += outcome.next_ms
                    problems = rnd.violations()
                    if problems:
                        failed.append({"round": n, "problems": problems[:5]})
                    if args.progress and (n + 1) % args.progress == 0:
                        print(f"round {n + 1}: {len(failed)} failed", file=sys.stderr)
            finally:
                await redis.aclose()
            elapsed = time.monotonic() - t0
    finally:
        for c in conns:
            with contextlib.suppress(Exception):
                await asyncio.wait_for(c.close(), 2)
        for proc in reversed(procs):
            proc.stop(5)
    next_ms.sort()

    def pct(q: float) -> float:
        return round(next_ms[min(len(next_ms) - 1, int(q * len(next_ms)))], 1) if next_ms else 0

    return {
        "rounds": args.rounds,
        "readers": args.readers,
        "gateways": 2,
        "exams_per_round": args.exams,
        "handed_out": handed,
        "nothing_eligible_answers": nothing,
        "failed_rounds": len(failed),
        "failures": failed[:10],
        "next_ms_p50": pct(0.5),
        "next_ms_p99": pct(0.99),
        "seconds": round(elapsed, 1),
    }


def main(argv: list[str] | None = None) -> int:
    ap = argparse.ArgumentParser(prog="python -m loadtest.nextcase_rounds", description=__doc__)
    ap.add_argument("--rounds", type=int, default=1000)
    ap.add_argument("--readers", type=int, default=20)
    ap.add_argument("--exams", type=int, default=10, help="cases per round")
    ap.add_argument("--progress", type=int, default=100, help="report every N rounds")
    args = ap.parse_args(argv)
    summary = asyncio.run(_run(args))
    print(json.dumps(summary, indent=2))
    return 1 if summary["failed_rounds"] else 0


if __name__ == "__main__":
    sys.exit(main())
