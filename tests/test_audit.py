"""The audit trail: every change of DynamoDB's stream lands in PostgreSQL exactly once,
across replays, cancellations, kill -9, a PostgreSQL outage and the Lambda path."""

from __future__ import annotations

import asyncio
import json
import os
import random
import sys
from typing import Any

import httpx
import psycopg
import pytest
from psycopg_pool import AsyncConnectionPool
from redis.asyncio import Redis

from audit.lambda_handler import handler
from audit.migrate import migrate, migrations
from audit.writer import write_batch
from devstack import free_port
from devstack.postgres import PostgresCluster
from devstack.procs import ManagedProcess
from devstack.services import ROOT
from dynamo.claims import Claims
from dynamo.client import streams_client
from dynamo.review import ReviewStore
from dynamo.settings import DynamoSettings
from dynamo.states import ExamStatus, Priority
from dynamo.store import ExamStore
from relay.checkpoints import RedisCheckpoints
from relay.stream import StreamRelay
from tests.conftest import UNIT
from tests.support.audit import (
    PATH,
    _true,
    consumer,
    read_stream,
    wait_for,
)
from tests.support.exams import exam_bundle
from worklist_cache import WorklistFeed, keys

TABLES = ("exam_event", "lock_break", "review_event", "exam", "reading", "review", "staff")


# ---- helpers -------------------------------------------------------------------------


def as_lambda_event(records: list[dict[str, Any]], arn: str) -> dict[str, Any]:
    """What Lambda's event source mapping delivers: the records as JSON, times as epoch
    seconds, each naming its stream."""
    plain = json.loads(json.dumps(records, default=lambda d: d.timestamp()))
    for r in plain:
        r.update(eventSource="aws:dynamodb", eventSourceARN=f"{arn}")
    return {"Records": plain}


async def counts(url: str) -> dict[str, int]:
    async with await psycopg.AsyncConnection.connect(url) as conn:
        out = {}
        for table in TABLES:
            cur = await conn.execute(f"SELECT count(*) FROM {table}")
            row = await cur.fetchone()
            assert row is not None
            out[table] = int(row[0])
        return out


async def exam_versions(url: str) -> list[tuple[str, int]]:
    async with await psycopg.AsyncConnection.connect(url) as conn:
        cur = await conn.execute(
            "SELECT accession, version FROM exam_event WHERE event_name <> 'REMOVE'"
            " ORDER BY accession, version"
        )
        return [(str(a), int(v)) for a, v in await cur.fetchall()]


async def walk_exams(store: ExamStore, n: int, seed: int) -> set[tuple[str, int]]:
    """Create exams and walk them to COMPLETED, a reader claiming and signing each;
    interleaved. Returns every (accession, version) written."""
    rng = random.Random(seed)
    claims = Claims(store)
    written: set[tuple[str, int]] = set()

    async def one(i: int) -> None:
        exam, order, profile = exam_bundle("northwind")
        await store.create_exam(exam, order, profile)
        written.add((exam.accession, 1))
        for status in PATH:
            await asyncio.sleep(rng.random() * 0.03)
            new = await store.transition(exam.patient_id, exam.accession, status)
            written.add((exam.accession, new.version))
        claim = await claims.claim(exam.patient_id, exam.accession, f"dr-{i % 3}", f"Dr {i % 3}")
        written.add((exam.accession, claim.exam.version))
        signed = await claims.sign(
            exam.patient_id, exam.accession, f"dr-{i % 3}", claim.token, ExamStatus.FINAL
        )
        written.add((exam.accession, signed.version))

    await asyncio.gather(*(one(i) for i in range(n)))
    return written


def assert_no_gap_no_duplicate(rows: list[tuple[str, int]], written: set[tuple[str, int]]) -> None:
    assert len(rows) == len(set(rows)), "an exam change was recorded twice"
    assert set(rows) == written, f"missing: {sorted(written - set(rows))[:5]}"


# ---- the schema ------------------------------------------------------------------------


async def test_migrations_are_recorded_and_applied_once(audit_database_url: str) -> None:
    async with await psycopg.AsyncConnection.connect(audit_database_url) as conn:
        first = await migrate(conn)
        again = await migrate(conn)
        cur = await conn.execute("SELECT version, name FROM schema_migration ORDER BY version")
        recorded = await cur.fetchall()
    assert first == [m.version for m in migrations()] and again == []
    assert [(v, n) for v, n in recorded] == [(m.version, m.name) for m in migrations()]


async def test_no_column_holds_patient_data(audit_database_url: str) -> None:
    """The schema has no place for a patient's name, MRN, birth date or patient ID."""
    async with await psycopg.AsyncConnection.connect(audit_database_url) as conn:
        await migrate(conn)
        cur = await conn.execute(
            "SELECT table_name, column_name FROM information_schema.columns"
            " WHERE table_schema = 'public'"
        )
        columns = {f"{t}.{c}" for t, c in await cur.fetchall()}
    phi = [c for c in columns if any(w in c for w in ("mrn", "patient", "birth", "sex"))]
    assert phi == []


# ---- exactly once ----------------------------------------------------------------------


async def test_every_change_lands_once_with_who_and_why_and_a_replay_adds_nothing(
    store: ExamStore,
    dynamo_settings: DynamoSettings,
    arn: str,
    pool: AsyncConnectionPool[Any],
    audit_database_url: str,
) -> None:
    claims = Claims(store)
    reviews = ReviewStore(store)
    exam, order, profile = exam_bundle("northwind", priority=Priority.URGENT)
    await store.create_exam(exam, order, profile)
    for status in PATH:
        await store.transition(exam.patient_id, exam.accession, status)
    pid, acc = exam.patient_id, exam.accession
    first = await claims.claim(pid, acc, "dr-ana", "Dr Ana")
    await claims.renew(pid, acc, "dr-ana", first.token)
    await claims.release(pid, acc, "dr-ana", first.token)
    await claims.claim(pid, acc, "dr-bo", "Dr Bo")
    await claims.break_lock(pid, acc, "admin-cy", "reader went home")
    again = await claims.claim(pid, acc, "dr-ana", "Dr Ana")
    await claims.sign(pid, acc, "dr-ana", again.token, ExamStatus.PRELIMINARY)
    await claims.sign(pid, acc, "dr-ana", again.token, ExamStatus.FINAL)
    await reviews.pool("northwind", acc)
    await reviews.assign("northwind", acc, "dr-bo", "Dr Bo", due_at=0)
    _, rtoken = await reviews.claim("northwind", acc, "dr-bo")
    await reviews.score("northwind", acc, "dr-bo", rtoken, "2b", "missed a nodule")

    records = await read_stream(dynamo_settings, arn)
    async with streams_client(dynamo_settings) as streams:
        audit = consumer(streams, arn, pool)
        task = asyncio.create_task(audit.run())

        async def caught_up() -> bool:
            return audit.metrics.records_read >= len(records) and audit.metrics.lag_seconds() == 0

        try:
            await wait_for(caught_up, 20, "the audit to read the stream")
        finally:
            task.cancel()
            await asyncio.gather(task, return_exceptions=True)

    async with pool.connection() as conn:
        cur = await conn.execute(
            "SELECT action, actor, holder, reason, new_status FROM exam_history"
            " WHERE tenant = 'northwind' AND accession = %s ORDER BY version",
            (acc,),
        )
        history = await cur.fetchall()
        cur = await conn.execute(
            "SELECT action, new_state, score, has_comment FROM review_event"
            " WHERE accession = %s ORDER BY version",
            (acc,),
        )
        review_history = await cur.fetchall()
        cur = await conn.execute(
            "SELECT status, priority, final_at IS NOT NULL, reported_by FROM exam"
            " WHERE accession = %s",
            (acc,),
        )
        projection = await cur.fetchone()
        cur = await conn.execute(
            "SELECT reader, claimed_at IS NOT NULL, preliminary_at IS NOT NULL,"
            " final_at IS NOT NULL FROM reading WHERE accession = %s ORDER BY reader",
            (acc,),
        )
        readings = await cur.fetchall()
        cur = await conn.execute(
            "SELECT state, final_score FROM review WHERE accession = %s", (acc,)
        )
        outcome = await cur.fetchone()
    assert [h[0] for h in history] == [
        "created",
        "status",
        "status",
        "status",
        "claim",
        "renew",
        "release",
        "claim",
        "break_lock",
        "claim",
        "sign",
        "sign",
    ]
    by_action = {h[0]: h for h in history}
    assert by_action["release"][1] == "dr-ana"
    assert by_action["break_lock"][1:4] == ("admin-cy", "dr-bo", "reader went home")
    assert [h[4] for h in history if h[0] == "sign"] == ["PRELIMINARY", "FINAL"]
    assert [h[1] for h in history if h[0] == "sign"] == ["dr-ana", "dr-ana"]
    assert [(r[0], r[1]) for r in review_history] == [
        ("pooled", "POOLED"),
        ("assigned", "ASSIGNED"),
        ("claimed", "ASSIGNED"),
        ("scored", "ARBITRATION"),
    ]
    assert review_history[-1][2:] == ("2b", True)  # the comment's text is not kept
    assert projection == ("FINAL", "URGENT", True, "dr-ana")
    assert readings == [("dr-ana", True, True, True), ("dr-bo", True, False, False)]
    assert outcome == ("ARBITRATION", None)

    before = await counts(audit_database_url)
    assert before["exam_event"] == sum(
        1 for r in records if r["dynamodb"]["Keys"]["SK"]["S"].startswith("STUDY#")
    )
    # Replay the whole stream: through the writer, and through a second consumer of
    # another name reading from the start (the checkpoint of the first is its own).
    async with pool.connection() as conn:
        result = await write_batch(conn, records)
    assert result.inserted == 0
    async with streams_client(dynamo_settings) as streams:
        second = consumer(streams, arn, pool, consumer="audit-replay")
        task = asyncio.create_task(second.run())
        try:
            await wait_for(
                lambda: _true(second.metrics.records_read >= len(records)), 20, "the replay"
            )
        finally:
            task.cancel()
            await asyncio.gather(task, return_exceptions=True)
    assert await counts(audit_database_url) == before


async def test_a_consumer_cancelled_mid_stream_and_restarted_leaves_no_gap_or_duplicate(
    store: ExamStore,
    dynamo_settings: DynamoSettings,
    arn: str,
    pool: AsyncConnectionPool[Any],
    audit_database_url: str,
) -> None:
    async with streams_client(dynamo_settings) as streams:
        writer = asyncio.create_task(walk_exams(store, 15, seed=1))
        for _ in range(4):  # start, cancel at an arbitrary point (mid-batch too), again
            task = asyncio.create_task(consumer(streams, arn, pool, batch_limit=7).run())
            await asyncio.sleep((0.2 + random.random() * 0.4) * UNIT)
            task.cancel()
            await asyncio.gather(task, return_exceptions=True)
        written = await writer
        task = asyncio.create_task(consumer(streams, arn, pool).run())
        try:
            await wait_for(
                lambda: _has(audit_database_url, len(written)), 30, "the audit to catch up"
            )
        finally:
            task.cancel()
            await asyncio.gather(task, return_exceptions=True)
    assert_no_gap_no_duplicate(await exam_versions(audit_database_url), written)


async def _has(url: str, n: int) -> bool:
    try:
        return len(await exam_versions(url)) >= n
    except (psycopg.errors.UndefinedTable, psycopg.OperationalError):
        return False  # not migrated yet, or the database is (still) down


def _worker_env(settings: DynamoSettings, url: str, name: str, **extra: str) -> dict[str, str]:
    return {
        "DYNAMO_ENDPOINT_URL": settings.endpoint_url,
        "DYNAMO_TABLE": settings.table,
        "AUDIT_DATABASE_URL": url,
        "AUDIT_POLL_INTERVAL": "0.05",
        "AUDIT_DISCOVER_INTERVAL": "0.3",
        # The killed worker's lease must run out before its successor reads the shard.
        "AUDIT_LEASE_SECONDS": "2",
        "AUDIT_BATCH_LIMIT": "10",
        "AUDIT_NODE_NAME": name,
        **extra,
    }


async def test_the_worker_killed_with_sigkill_and_restarted_leaves_no_gap_or_duplicate(
    store: ExamStore, dynamo_settings: DynamoSettings, audit_database_url: str
) -> None:
    def spawn(name: str) -> ManagedProcess:
        env = _worker_env(dynamo_settings, audit_database_url, name)
        return ManagedProcess(name, [sys.executable, "-m", "audit"], env=env, cwd=ROOT)

    writer = asyncio.create_task(walk_exams(store, 15, seed=2))
    worker = spawn("audit-a")
    try:
        await wait_for(lambda: _has(audit_database_url, 20), 30, "the first worker to write")
        worker.kill()  # SIGKILL: mid-stream, no chance to clean up
        worker = spawn("audit-b")
        written = await writer
        await wait_for(lambda: _has(audit_database_url, len(written)), 40, "the successor")
        # The successor takes the killed worker's shard once its lease runs out, even when
        # the first worker had written everything before it died (a quiet box).
        await wait_for(
            lambda: _owners_are(audit_database_url, ["audit-b"]), 30, "the successor's lease"
        )
    finally:
        worker.stop()
    assert_no_gap_no_duplicate(await exam_versions(audit_database_url), written)
    # Stopped, it handed the shard back (or its lease stands until it runs out).
    assert await _owners_are(audit_database_url, [None]) or await _owners_are(
        audit_database_url, ["audit-b"]
    )


async def _owners_are(url: str, owners: list[str | None]) -> bool:
    async with await psycopg.AsyncConnection.connect(url) as conn:
        cur = await conn.execute("SELECT owner FROM consumer_shard")
        return [r[0] for r in await cur.fetchall()] == owners


# ---- PostgreSQL away -------------------------------------------------------------------


@pytest.fixture
def private_cluster() -> Any:
    """A cluster of this test's own, which it may stop and start."""
    cluster = PostgresCluster()
    cluster.start()
    try:
        yield cluster
    finally:
        cluster.destroy()


async def test_postgres_stopped_under_writes_the_worklist_goes_on_and_the_audit_catches_up(
    store: ExamStore,
    dynamo_settings: DynamoSettings,
    arn: str,
    redis: Redis,
    private_cluster: PostgresCluster,
) -> None:
    url = private_cluster.url
    port = free_port()
    env = _worker_env(dynamo_settings, url, "audit-o", AUDIT_METRICS_PORT=str(port))
    env["AUDIT_RETRY_MAX_SECONDS"] = "0.5"
    worker = ManagedProcess("audit-o", [sys.executable, "-m", "audit"], env=env, cwd=ROOT)
    metrics_url = f"http://127.0.0.1:{port}/metrics"
    lags: list[float] = []

    async def lag() -> float | None:
        try:
            async with httpx.AsyncClient() as http:
                text = (await http.get(metrics_url, timeout=2)).text
        except httpx.HTTPError:
            return None
        for line in text.splitlines():
            if line.startswith("audit_lag_seconds "):
                return float(line.split()[1])
        return None

    async with streams_client(dynamo_settings) as streams:
        relay = StreamRelay(
            streams, arn, WorklistFeed(redis), RedisCheckpoints(redis, arn), poll_interval=0.02
        )
        relay_task = asyncio.create_task(relay.run())
        try:
            before = await walk_exams(store, 4, seed=3)
            await wait_for(lambda: _has(url, len(before)), 30, "the audit before the outage")
            await asyncio.to_thread(private_cluster.stop, "fast")
            during = await walk_exams(store, 6, seed=4)
            # The live worklist does not wait for PostgreSQL: the relay delivers it all.
            await wait_for(
                lambda: _feed_has(redis, len(before | during)), 20, "the relay during the outage"
            )
            await asyncio.sleep(1.5 * UNIT)
            value = await lag()
            assert value is not None and value > 0, "the lag shows the audit behind"
            lags.append(value)
            await asyncio.to_thread(private_cluster.start)
            written = before | during

            async def caught_up() -> bool:
                value = await lag()
                if value is not None:
                    lags.append(value)
                return await _has(url, len(written)) and value == 0

            await wait_for(caught_up, 40, "the audit to catch up after the outage")
        finally:
            worker.stop()
            relay_task.cancel()
            await asyncio.gather(relay_task, return_exceptions=True)
    assert_no_gap_no_duplicate(await exam_versions(url), written)
    assert lags[0] > 0 and lags[-1] == 0


async def _feed_has(redis: Redis, n: int) -> bool:
    return int(await redis.xlen(keys.feed("northwind"))) >= n


# ---- the Lambda path -------------------------------------------------------------------


async def test_the_lambda_handler_writes_what_the_worker_writes(
    store: ExamStore,
    dynamo_settings: DynamoSettings,
    arn: str,
    pool: AsyncConnectionPool[Any],
    audit_database_url: str,
    postgres_url: str,
) -> None:
    await walk_exams(store, 3, seed=5)
    exam, order, profile = exam_bundle("northwind")
    await store.create_exam(exam, order, profile)
    for status in PATH:
        await store.transition(exam.patient_id, exam.accession, status)
    await Claims(store).claim(exam.patient_id, exam.accession, "dr-x", "Dr X")
    await Claims(store).break_lock(exam.patient_id, exam.accession, "admin", "stuck")
    records = await read_stream(dynamo_settings, arn)
    event = as_lambda_event(records, arn)

    # The worker's rows, in one database ...
    async with streams_client(dynamo_settings) as streams:
        audit = consumer(streams, arn, pool)
        task = asyncio.create_task(audit.run())
        try:
            await wait_for(
                lambda: _true(audit.metrics.records_read >= len(records)), 20, "the worker"
            )
            await wait_for(lambda: _true(audit.metrics.lag_seconds() == 0), 20, "the worker")
        finally:
            task.cancel()
            await asyncio.gather(task, return_exceptions=True)

    # ... and the Lambda handler's, in another; in two invocations (a retried batch).
    lambda_db = f"lambda_{os.getpid()}_{random.randrange(10**6)}"
    async with await psycopg.AsyncConnection.connect(postgres_url, autocommit=True) as admin:
        await admin.execute(f'CREATE DATABASE "{lambda_db}"')
    from psycopg.conninfo import make_conninfo

    lambda_url = make_conninfo(postgres_url, dbname=lambda_db)
    try:
        os.environ["AUDIT_DATABASE_URL"] = lambda_url
        try:
            half = {"Records": event["Records"][: len(records) // 2]}
            assert await asyncio.to_thread(handler, half, None) == {"batchItemFailures": []}
            assert await asyncio.to_thread(handler, event, None) == {"batchItemFailures": []}
        finally:
            del os.environ["AUDIT_DATABASE_URL"]
        assert await _rows(lambda_url) == await _rows(audit_database_url)
        assert await counts(lambda_url) == await counts(audit_database_url)
    finally:
        async with await psycopg.AsyncConnection.connect(postgres_url, autocommit=True) as admin:
            await admin.execute(f'DROP DATABASE IF EXISTS "{lambda_db}" WITH (FORCE)')

    # A database that cannot be reached: Lambda is told to retry from the first record.
    os.environ["AUDIT_DATABASE_URL"] = f"postgresql://postgres@127.0.0.1:{free_port()}/x"
    try:
        failed = await asyncio.to_thread(handler, event, None)
    finally:
        del os.environ["AUDIT_DATABASE_URL"]
    first = event["Records"][0]["dynamodb"]["SequenceNumber"]
    assert failed == {"batchItemFailures": [{"itemIdentifier": first}]}


async def _rows(url: str) -> list[tuple[Any, ...]]:
    async with await psycopg.AsyncConnection.connect(url) as conn:
        cur = await conn.execute(
            "SELECT event_id, accession, version, action, actor, holder, reason, changed_at"
            " FROM exam_history ORDER BY event_id"
        )
        return list(await cur.fetchall())
