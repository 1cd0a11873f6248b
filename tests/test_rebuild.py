"""Rebuilds and anti-entropy against DynamoDB Local and redis-server: the cache ends equal
to DynamoDB (removals included), for every tenant with exams, and a scheduled check
meters what it repaired until the figure is back to zero."""

from __future__ import annotations

import asyncio
import sys
from typing import Any

import httpx
import orjson
from redis.asyncio import Redis

from devstack import free_port
from devstack.procs import ManagedProcess
from devstack.services import ROOT
from dynamo.claims import Claims
from dynamo.deltas import ExamDelta
from dynamo.models import Exam, now_ms
from dynamo.settings import DynamoSettings
from dynamo.states import ExamStatus
from dynamo.store import ExamStore
from relay.checkpoints import RedisCheckpoints
from relay.worker import rebuild
from tests.conftest import UNIT
from tests.support.exams import PATH_TO, exam_bundle, exam_in
from tests.support.rebuild import cached, delete_study, eventually, stream_end, truth
from worklist_cache import WorklistFeed, keys
from worklist_cache.views import View

S = ExamStatus
DAY_MS = 86_400_000


async def exam_scheduled(
    store: ExamStore, status: ExamStatus, scheduled_at: int, tenant: str = "northwind"
) -> Exam:
    exam, order, profile = exam_bundle(tenant)
    exam = exam.model_copy(update={"scheduled_at": scheduled_at, "tat_due_at": scheduled_at})
    await store.create_exam(exam, order, profile)
    for step in PATH_TO[status]:
        exam = await store.transition(exam.patient_id, exam.accession, step)
    return exam


async def test_a_rebuild_makes_the_cache_equal_dynamodb_removals_included(
    store: ExamStore, redis: Redis
) -> None:
    feed = WorklistFeed(redis)
    a = await exam_in(store, S.COMPLETED)
    b = await exam_in(store, S.ARRIVED)
    c = await exam_in(store, S.SCHEDULED)
    kept = await exam_in(store, S.IN_PROGRESS)
    done = await exam_in(store, S.FINAL)  # closed, within the retention window
    long_ago = await exam_scheduled(store, S.FINAL, now_ms() - 5 * DAY_MS)
    await rebuild(store, feed, "northwind")
    # Closed exams are restored too (views may show every state), within the window.
    assert await cached(feed) == truth(a, b, c, kept, done)
    assert long_ago.accession not in await cached(feed)

    # A gap: DynamoDB moves on while nothing relays.
    a = await store.transition(a.patient_id, a.accession, S.FINAL)
    b = await store.transition(b.patient_id, b.accession, S.CANCELLED)
    await delete_study(store, c)
    d = await exam_in(store, S.COMPLETED)

    pubsub = redis.pubsub()
    await pubsub.subscribe(keys.channel("northwind"))
    await pubsub.get_message(timeout=1.0)  # the subscribe confirmation
    await rebuild(store, feed, "northwind")
    assert await cached(feed) == truth(a, b, kept, done, d)
    assert set(await cached(feed, view=View())) == {kept.accession, d.accession}

    # Clients are told: the updates (which leave open views) and the removal.
    sent: dict[str, dict[str, Any]] = {}
    while (msg := await pubsub.get_message(timeout=0.5 * UNIT)) is not None:
        delta = orjson.loads(msg["data"])["delta"]
        sent[delta["exam_id"]] = delta
    await pubsub.aclose()
    assert (sent[a.accession]["status"], sent[a.accession]["version"]) == ("FINAL", a.version)
    assert sent[b.accession]["status"] == "CANCELLED"
    assert sent[c.accession]["op"] == "remove" and sent[c.accession]["version"] == c.version + 1
    assert set(sent) == {a.accession, b.accession, c.accession, d.accession}

    # Again: nothing differs, nothing is sent, nothing moves.
    before = await redis.xlen(keys.feed("northwind"))
    await rebuild(store, feed, "northwind")
    assert await redis.xlen(keys.feed("northwind")) == before


def _env(dynamo_settings: DynamoSettings, redis_url: str, **extra: str) -> dict[str, str]:
    return {
        "REDIS_URL": redis_url,
        "DYNAMO_ENDPOINT_URL": dynamo_settings.endpoint_url,
        "DYNAMO_TABLE": dynamo_settings.table,
        **extra,
    }


async def _faults(store: ExamStore, redis: Redis, feed: WorklistFeed) -> tuple[Exam, Exam, str]:
    """Three kinds of divergence behind the relay's back: a row lost, a row stale, a row
    for an exam DynamoDB never had. Returns (lost, moved, ghost id)."""
    lost = await exam_in(store, S.COMPLETED)
    moved = await exam_in(store, S.ARRIVED)
    await rebuild(store, feed, "northwind")
    await redis.hdel(keys.exams("northwind"), lost.accession)
    await redis.hdel(keys.versions("northwind"), lost.accession)
    moved = await store.transition(moved.patient_id, moved.accession, S.IN_PROGRESS)
    ghost_exam, _, _ = exam_bundle("northwind")
    await feed.publish([ExamDelta.from_exam(ghost_exam)])
    return lost, moved, ghost_exam.accession


async def _antientropy(env: dict[str, str], *args: str) -> tuple[int, str]:
    proc = await asyncio.create_subprocess_exec(
        sys.executable,
        "-m",
        "relay.antientropy",
        *args,
        env={"PATH": "/usr/bin:/bin", **env},
        cwd=ROOT,
        stdout=asyncio.subprocess.PIPE,
        stderr=asyncio.subprocess.STDOUT,
    )
    out, _ = await asyncio.wait_for(proc.communicate(), 60 * UNIT)
    return proc.returncode or 0, out.decode()


async def test_the_antientropy_command_reports_missing_stale_extra_and_repairs(
    store: ExamStore, redis: Redis, redis_url: str, dynamo_settings: DynamoSettings
) -> None:
    feed = WorklistFeed(redis)
    lost, moved, ghost = await _faults(store, redis, feed)
    env = _env(dynamo_settings, redis_url)

    code, out = await _antientropy(env, "--grace", "0")
    assert code == 1, out
    assert "northwind:" in out and "missing 1, stale 1, extra 1" in out, out
    assert f"missing: {lost.accession}" in out and f"stale: {moved.accession}" in out, out
    assert f"extra: {ghost}" in out, out
    assert lost.accession not in await cached(feed), "a report alone changes nothing"

    code, out = await _antientropy(env, "--grace", "0", "--repair")
    assert code == 0 and "repaired 3" in out, out
    code, out = await _antientropy(env, "--grace", "0")
    assert code == 0 and "missing 0, stale 0, extra 0" in out, out
    rows = await cached(feed)
    assert rows[lost.accession] == ("COMPLETED", lost.version)
    assert rows[moved.accession] == ("IN_PROGRESS", moved.version)
    assert ghost not in rows


async def _metric(http: httpx.AsyncClient, name: str) -> int | None:
    try:
        text = (await http.get("/metrics")).text
    except httpx.HTTPError:
        return None
    for line in text.splitlines():
        if line.startswith(name + " "):
            return int(line.split()[1])
    return None


async def test_the_worker_meters_divergence_repairs_it_and_the_figure_returns_to_zero(
    store: ExamStore, redis: Redis, redis_url: str, dynamo_settings: DynamoSettings
) -> None:
    feed = WorklistFeed(redis)
    lost, moved, ghost = await _faults(store, redis, feed)
    # The relay starts at the stream's end, or its replay would repair two of the three.
    arn, shard, last = await stream_end(dynamo_settings)
    await RedisCheckpoints(redis, arn).set(shard, last)
    port = free_port()
    worker = ManagedProcess(
        "relay",
        [sys.executable, "-m", "relay"],
        env=_env(
            dynamo_settings,
            redis_url,
            RELAY_POLL_INTERVAL="0.02",
            RELAY_DISCOVER_INTERVAL="0.3",
            RELAY_ANTIENTROPY_INTERVAL=str(0.7 * UNIT),
            RELAY_ANTIENTROPY_GRACE="0.2",
            RELAY_METRICS_PORT=str(port),
            RELAY_REAP_INTERVAL="0.3",
        ),
        cwd=ROOT,
    )
    seen: list[int] = []
    try:
        async with httpx.AsyncClient(base_url=f"http://127.0.0.1:{port}", timeout=2) as http:

            async def metered(want_zero: bool) -> bool:
                value = await _metric(http, "relay_antientropy_divergent_rows_sum")
                passes = await _metric(http, "relay_antientropy_passes_total")
                if value is None or not passes:
                    return False
                seen.append(value)
                return value == 0 if want_zero else value > 0

            await eventually(lambda: metered(False), 30, "a pass that found the divergence")
            await eventually(lambda: metered(True), 30, "the figure back at zero")
            assert await _metric(http, "relay_antientropy_repaired_total") >= 2  # type: ignore[operator]
    finally:
        worker.stop()
    assert max(seen) == 3
    rows = await cached(feed)
    assert rows[lost.accession] == ("COMPLETED", lost.version)
    assert rows[moved.accession] == ("IN_PROGRESS", moved.version)
    assert ghost not in rows


async def test_maintenance_covers_every_tenant_with_exams_not_only_the_demos(
    store: ExamStore, redis: Redis, redis_url: str, dynamo_settings: DynamoSettings
) -> None:
    """A deployment's own tenant: its expired claims are released and its cache is
    built, from a registry the relay fills (and a one-off backfill of older exams)."""
    exam = await exam_in(store, S.COMPLETED, tenant="acme", site="AC-1")
    claim = await Claims(store).claim(exam.patient_id, exam.accession, "u-ana", "Ana", lease_ms=300)
    feed = WorklistFeed(redis)
    worker = ManagedProcess(
        "relay",
        [sys.executable, "-m", "relay"],
        env=_env(
            dynamo_settings,
            redis_url,
            RELAY_POLL_INTERVAL="0.02",
            RELAY_DISCOVER_INTERVAL="0.3",
            RELAY_REAP_INTERVAL="0.3",
        ),
        cwd=ROOT,
    )

    async def released() -> bool:
        row = await feed.row("acme", exam.accession)
        return bool(row) and row["claimed_by"] is None and await feed.is_built("acme")

    try:
        await eventually(released, 30, "acme's expired claim released")
    finally:
        worker.stop()
    row = await feed.row("acme", exam.accession)
    assert row is not None and row["version"] == claim.exam.version + 1
    assert (await store.tenants())[0] == ["acme"]
