"""The benchmark's HL7 phase: `python -m hl7_ingest` as its own process, orders and
status changes sent over several MLLP connections, every ACK timed.

Each exam is a new order (ORM NW) then three status moves (ARRIVED, IN_PROGRESS,
COMPLETED), sent in order on one connection; the connections run side by side. ACK
latency is send -> ACK received, which includes the durable DynamoDB write.
"""

from __future__ import annotations

import asyncio
import sys
import time
from collections.abc import Mapping
from typing import Any

import numpy as np

from devstack.procs import ManagedProcess, free_port, wait_for_port
from devstack.sites import DEMO_TENANTS
from dynamo.client import dynamodb_client
from dynamo.directory import DirectoryStore, Site, Tenant
from dynamo.settings import DynamoSettings
from dynamo.states import ExamStatus
from dynamo.store import ExamStore
from hl7_ingest.mapping import SiteMapping, load_mappings
from loadtest.hl7.builder import MessageBuilder
from loadtest.hl7.client import MllpClient
from loadtest.plan import PlannedExam, exam_now

_MOVES = (ExamStatus.ARRIVED, ExamStatus.IN_PROGRESS, ExamStatus.COMPLETED)


def _exam(n: int) -> PlannedExam:
    return exam_now(DEMO_TENANTS[0], "NW-GEN", f"HB{n:08d}", 900_000 + n)


async def _connection(
    port: int, builder: MessageBuilder, exams: list[PlannedExam], latencies: list[float]
) -> tuple[int, int]:
    ok = refused = 0
    async with MllpClient("127.0.0.1", port, timeout=60.0) as client:
        for exam in exams:
            messages = [builder.new_order(exam)]
            messages += [m for s in _MOVES if (m := builder.status_update(exam, s))]
            for message in messages:
                started = time.perf_counter()
                ack = await client.send(message)
                latencies.append((time.perf_counter() - started) * 1000)
                if ack.code == "AA":
                    ok += 1
                else:
                    refused += 1
    return ok, refused


async def _bind_in_directory(env: Mapping[str, str], mapping: SiteMapping, site: str) -> None:
    """The directory binds the facility to its site (the listener refuses it otherwise)."""
    settings = DynamoSettings(endpoint_url=env["DYNAMO_ENDPOINT_URL"], table=env["DYNAMO_TABLE"])
    async with dynamodb_client(settings) as client:
        d = DirectoryStore(ExamStore(client, settings.table))
        if await d.tenant(mapping.tenant) is None:
            await d.add(Tenant(code=mapping.tenant, name=mapping.tenant), actor="bench")
        bound = Site(tenant=mapping.tenant, code=site, name=site, hl7_facility=mapping.sender)
        current = await d.site(mapping.tenant, site)
        if current is None:
            await d.add(bound, actor="bench")
        elif current.hl7_facility != mapping.sender or not current.active:
            await d.update(
                current.model_copy(update={"hl7_facility": mapping.sender, "active": True}),
                actor="bench",
            )


async def hl7_phase(
    env: Mapping[str, str], messages: int, connections: int, log_dir: Any
) -> dict[str, Any]:
    """Run the phase; the figures for bench.json."""
    port = free_port()
    log = (log_dir / "hl7-ingest.log").open("ab")
    proc = ManagedProcess(
        "hl7-ingest",
        [sys.executable, "-m", "hl7_ingest"],
        env={**env, "HL7_PORT": str(port), "HL7_LOG_LEVEL": "WARNING"},
        log=log,
    )
    try:
        await asyncio.to_thread(wait_for_port, port, 60, proc)
        mapping = load_mappings().for_site("northwind", "NW-GEN")
        assert mapping is not None
        await _bind_in_directory(env, mapping, "NW-GEN")
        builder = MessageBuilder(mapping)
        exams = [_exam(n) for n in range(max(1, messages // (1 + len(_MOVES))))]
        shares = [exams[i::connections] for i in range(connections)]
        latencies: list[float] = []
        started = time.perf_counter()
        results = await asyncio.gather(
            *(_connection(port, builder, share, latencies) for share in shares if share)
        )
        elapsed = time.perf_counter() - started
    finally:
        await asyncio.to_thread(proc.stop)
        log.close()
    values = np.array(latencies)
    return {
        "hl7_messages": len(latencies),
        "hl7_connections": connections,
        "hl7_accepted": sum(ok for ok, _ in results),
        "hl7_refused": sum(refused for _, refused in results),
        "hl7_messages_per_s": round(len(latencies) / elapsed, 1),
        "hl7_ack_p50_ms": round(float(np.percentile(values, 50)), 1),
        "hl7_ack_p99_ms": round(float(np.percentile(values, 99)), 1),
    }
