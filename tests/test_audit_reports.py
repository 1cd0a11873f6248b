"""The audit's reports, CLI and HTTP routes: the figures a coordinator reads agree with
the same figures computed from DynamoDB, stay inside the caller's tenant, export to CSV."""

from __future__ import annotations

import asyncio
import csv
import io
import math
import sys
from collections import defaultdict
from collections.abc import AsyncIterator
from datetime import UTC, date, datetime, timedelta
from typing import Any
from zoneinfo import ZoneInfo

import httpx
import pytest
from psycopg_pool import AsyncConnectionPool
from starlette.applications import Starlette

from audit.db import open_pool
from audit.reports import run_report, to_csv
from audit.settings import AuditSettings
from devstack.services import ROOT
from dynamo.claims import Claims
from dynamo.client import streams_client
from dynamo.directory import DirectoryStore
from dynamo.models import Exam
from dynamo.review import ReviewStore
from dynamo.settings import DynamoSettings
from dynamo.states import ExamStatus, Modality, Priority
from dynamo.store import ExamStore
from gateway import reports as report_routes
from gateway.auth import Authenticator, SecretVerifier
from tests.conftest import SECRET, UNIT, token
from tests.support.audit import PATH, _true, consumer, read_stream, wait_for
from tests.support.exams import exam_bundle

TZ = "America/New_York"
SHAPES = [
    ("NW-GEN", Modality.CT, Priority.STAT),
    ("NW-GEN", Modality.CT, Priority.STAT),
    ("NW-GEN", Modality.CT, Priority.STAT),
    ("NW-GEN", Modality.MR, Priority.ROUTINE),
    ("NW-ORT", Modality.XR, Priority.ROUTINE),
    ("NW-ORT", Modality.XR, Priority.ROUTINE),
]
READERS = ("dr-ana", "dr-bo")
NAMES = {"dr-ana": "DR-ANA", "dr-bo": "DR-BO", "dr-cy": "Dr Cy"}


def percentile_cont(values: list[float], q: float) -> float:
    """PostgreSQL's percentile_cont: linear interpolation between the closest ranks."""
    ordered = sorted(values)
    pos = q * (len(ordered) - 1)
    lo, hi = math.floor(pos), math.ceil(pos)
    return ordered[lo] + (ordered[hi] - ordered[lo]) * (pos - lo)


def local_day(ms: int) -> date:
    return datetime.fromtimestamp(ms / 1000, tz=UTC).astimezone(ZoneInfo(TZ)).date()


async def seed_day(store: ExamStore) -> list[Exam]:
    """A small day: exams read and signed by two readers (one after a break-lock, one
    after a lapsed claim), reviews scored, and a lakeside exam nobody of northwind sees."""
    claims = Claims(store, lease_seconds=90)
    finals: list[Exam] = []
    for i, (site, modality, priority) in enumerate(SHAPES):
        exam, order, profile = exam_bundle("northwind", site, modality=modality, priority=priority)
        await store.create_exam(exam, order, profile)
        for status in PATH:
            await store.transition(exam.patient_id, exam.accession, status)
        reader = READERS[i % 2]
        if i == 0:  # someone else held it; an admin broke the lock
            await claims.claim(exam.patient_id, exam.accession, "dr-cy", "Dr Cy")
            await claims.break_lock(exam.patient_id, exam.accession, "admin-1", "out sick")
        if i == 1:  # a claim that lapsed, taken over by the reader
            await claims.claim(exam.patient_id, exam.accession, "dr-cy", "Dr Cy", lease_ms=1)
            await asyncio.sleep(0.01)
        await asyncio.sleep(0.02 * (i + 1))  # different turnarounds
        claim = await claims.claim(exam.patient_id, exam.accession, reader, reader.upper())
        await claims.sign(
            exam.patient_id,
            exam.accession,
            reader,
            claim.token,
            ExamStatus.FINAL,
            user_name=reader.upper(),
        )
        finals.append(await store.get_exam(exam.patient_id, exam.accession))
    reviews = ReviewStore(store)
    for exam, score in zip(finals[:4], ("1", "2b", "3a", "1"), strict=True):
        await reviews.pool("northwind", exam.accession)
        original = (await reviews.get("northwind", exam.accession)).original_reader
        reviewer = next(r for r in ("dr-ana", "dr-bo", "dr-cy") if r != original)
        await reviews.assign("northwind", exam.accession, reviewer, NAMES[reviewer], due_at=0)
        _, t = await reviews.claim("northwind", exam.accession, reviewer)
        await reviews.score("northwind", exam.accession, reviewer, t, score, "see comment")
    other, order, profile = exam_bundle("lakeside", "LK-MED")
    await store.create_exam(other, order, profile)
    for status in PATH:
        await store.transition(other.patient_id, other.accession, status)
    c = await claims.claim(other.patient_id, other.accession, "dr-lk", "Dr Lk")
    await claims.sign(other.patient_id, other.accession, "dr-lk", c.token, ExamStatus.FINAL)
    return finals


@pytest.fixture
async def pool(audit_database_url: str) -> AsyncIterator[AsyncConnectionPool[Any]]:
    async with open_pool(audit_database_url, size=2) as p:
        yield p


@pytest.fixture
async def seeded(
    store: ExamStore, dynamo_settings: DynamoSettings, ddb: Any, pool: AsyncConnectionPool[Any]
) -> list[Exam]:
    from dynamo.table import stream_arn

    finals = await seed_day(store)
    arn = await stream_arn(ddb, dynamo_settings.table)
    n = len(await read_stream(dynamo_settings, arn))
    async with streams_client(dynamo_settings) as streams:
        audit = consumer(streams, arn, pool)
        task = asyncio.create_task(audit.run())
        try:
            await wait_for(lambda: _true(audit.metrics.records_read >= n), 20, "the audit")
            await wait_for(lambda: _true(audit.metrics.lag_seconds() == 0), 20, "the audit")
        finally:
            task.cancel()
            await asyncio.gather(task, return_exceptions=True)
    return finals


def today_range(finals: list[Exam]) -> tuple[date, date]:
    days = sorted({local_day(e.updated_at) for e in finals})
    return days[0], days[-1]


async def test_turnaround_and_reads_agree_with_dynamodb(
    seeded: list[Exam], pool: AsyncConnectionPool[Any]
) -> None:
    start, end = today_range(seeded)
    # From DynamoDB: the FINAL item's updated_at is its signing time (nothing wrote it since).
    minutes: dict[tuple[Any, ...], list[float]] = defaultdict(list)
    late: dict[tuple[Any, ...], int] = defaultdict(int)
    reads: dict[tuple[date, str], int] = defaultdict(int)
    for e in seeded:
        assert e.status == ExamStatus.FINAL and e.completed_at is not None
        key = (local_day(e.updated_at), e.priority.value, e.site, e.modality.value)
        minutes[key].append((e.updated_at - e.completed_at) / 60000)
        late[key] += e.updated_at > e.tat_due_at
    for i, e in enumerate(seeded):
        reads[(local_day(e.updated_at), READERS[i % 2])] += 1
    expected = [
        (
            k[0],
            k[1],
            k[2],
            k[3],
            len(v),
            round(percentile_cont(v, 0.5), 1),
            round(percentile_cont(v, 0.9), 1),
            late[k],
        )
        for k, v in sorted(minutes.items())
    ]
    async with pool.connection() as conn:
        tat = await run_report(conn, "turnaround", "northwind", start, end, TZ)
        rd = await run_report(conn, "reads", "northwind", start, end, TZ)
        before = await run_report(
            conn, "turnaround", "northwind", start - timedelta(days=9), start - timedelta(1), TZ
        )
    got = [(r[0], r[1], r[2], r[3], r[4], float(r[5]), float(r[6]), r[7]) for r in tat.rows]
    assert got == expected
    assert [(r[0], r[1], r[3]) for r in rd.rows] == [
        (d, s, n) for (d, s), n in sorted(reads.items())
    ]
    assert {r[2] for r in rd.rows} == {"DR-ANA", "DR-BO"}  # names from the claims
    assert before.rows == []  # another date range, nothing
    assert all(r[2].startswith("NW-") for r in tat.rows)  # lakeside's exam is not here


async def test_peer_review_and_lock_breaks(
    seeded: list[Exam], pool: AsyncConnectionPool[Any], store: ExamStore
) -> None:
    start, end = today_range(seeded)
    # From DynamoDB: the tenant's reviews and their scores.
    expected: dict[tuple[str, str], list[int]] = defaultdict(lambda: [0, 0])
    for r in await ReviewStore(store).all("northwind"):
        key = (r.site, r.modality)
        expected[key][0] += 1
        expected[key][1] += (r.final_score or r.score) in ("2b", "3a", "3b")
    async with pool.connection() as conn:
        pr = await run_report(conn, "peer_review", "northwind", start, end, TZ)
        lb = await run_report(conn, "lock_breaks", "northwind", start, end, TZ)
    assert [(r[0], r[1], r[2], r[3], float(r[4])) for r in pr.rows] == [
        (s, m, n, d, round(d / n, 3)) for (s, m), (n, d) in sorted(expected.items())
    ]
    assert [(r[1], r[2], r[3]) for r in lb.rows] == [("NW-GEN", 1, 1)]
    text = to_csv(pr)
    assert text.splitlines()[0] == "site,modality,reviews,discrepant,discrepancy_rate"
    assert len(list(csv.reader(io.StringIO(text)))) == len(pr.rows) + 1


async def test_the_cli_answers_who_claimed_released_signed_and_broke_the_lock(
    seeded: list[Exam], audit_database_url: str
) -> None:
    accession = seeded[0].accession
    env = {"AUDIT_DATABASE_URL": audit_database_url}

    async def cli(*args: str) -> tuple[int, str]:
        proc = await asyncio.create_subprocess_exec(
            sys.executable,
            "-m",
            "audit.cli",
            *args,
            cwd=ROOT,
            env=_env(env),
            stdout=asyncio.subprocess.PIPE,
            stderr=asyncio.subprocess.PIPE,
        )
        out, _ = await asyncio.wait_for(proc.communicate(), 30 * UNIT)
        return proc.returncode or 0, out.decode()

    code, out = await cli("exam", accession, "--tenant", "northwind")
    assert code == 0
    actions = [line.split()[2] for line in out.splitlines()]
    assert actions == [
        "created",
        "status",
        "status",
        "status",
        "claim",
        "break_lock",
        "claim",
        "sign",
    ]
    lines = out.splitlines()
    assert "Dr Cy (dr-cy)" in lines[4]
    assert "admin-1" in lines[5] and "holder dr-cy" in lines[5] and "out sick" in lines[5]
    assert "DR-ANA (dr-ana)" in lines[7] and "COMPLETED -> FINAL" in lines[7]
    assert "TESTPATIENT" not in out and seeded[0].mrn not in out  # no patient data
    code, _ = await cli("exam", accession, "--tenant", "lakeside")
    assert code == 1  # another tenant's exam is not found
    start, end = today_range(seeded)
    code, out = await cli(
        "report",
        "reads",
        "--tenant",
        "northwind",
        "--from",
        str(start),
        "--to",
        str(end),
        "--tz",
        TZ,
    )
    assert code == 0 and out.splitlines()[0] == "day,reader,reader_name,reads,late"


def _env(extra: dict[str, str]) -> dict[str, str]:
    import os

    return {**os.environ, **extra}


async def test_report_routes_serve_coordinators_of_the_callers_tenant_only(
    seeded: list[Exam], pool: AsyncConnectionPool[Any], store: ExamStore
) -> None:
    async def get_pool() -> AsyncConnectionPool[Any]:
        return pool

    settings = AuditSettings(tenant_timezones=f"northwind={TZ},lakeside={TZ}")
    authenticator = Authenticator(SecretVerifier(SECRET), DirectoryStore(store))
    app = Starlette(
        routes=report_routes.routes(
            get_pool, settings=settings, get_authenticator=lambda r: authenticator
        )
    )
    start, end = today_range(seeded)
    query = f"from={start}&to={end}"

    def auth(sub: str, roles: tuple[str, ...], tenant: str = "northwind") -> dict[str, str]:
        return {"Authorization": f"Bearer {token(sub, roles=roles, tenant=tenant)}"}

    coordinator = auth("co-1", ("coordinator",))
    async with httpx.AsyncClient(
        transport=httpx.ASGITransport(app=app), base_url="http://gw"
    ) as http:
        assert (await http.get(f"/api/reports/reads?{query}")).status_code == 401
        denied = await http.get(f"/api/reports/reads?{query}", headers=auth("r", ("radiologist",)))
        assert denied.status_code == 403 and denied.json()["error"]["code"] == "forbidden"
        body = (await http.get(f"/api/reports/turnaround?{query}", headers=coordinator)).json()
        assert body["tenant"] == "northwind" and body["time_zone"] == TZ
        assert sum(r["exams"] for r in body["rows"]) == len(seeded)
        csv_resp = await http.get(
            f"/api/reports/turnaround?{query}&format=csv", headers=coordinator
        )
        assert csv_resp.headers["content-type"].startswith("text/csv")
        assert len(csv_resp.text.splitlines()) == len(body["rows"]) + 1
        # Lakeside's coordinator sees lakeside's exam only, whatever the query says.
        lk = auth("co-lk", ("coordinator",), tenant="lakeside")
        other = await http.get(f"/api/reports/turnaround?{query}&tenant=northwind", headers=lk)
        assert [r["site"] for r in other.json()["rows"]] == ["LK-MED"]
        history = await http.get(f"/api/reports/exam/{seeded[0].accession}", headers=coordinator)
        assert [h["action"] for h in history.json()["history"]][4:6] == ["claim", "break_lock"]
        hidden = await http.get(f"/api/reports/exam/{seeded[0].accession}", headers=lk)
        assert hidden.status_code == 404
        bad = await http.get("/api/reports/reads?from=yesterday&to=today", headers=coordinator)
        assert bad.status_code == 400


@pytest.fixture
def audit_gateway_env(audit_database_url: str, monkeypatch: pytest.MonkeyPatch) -> None:
    """The gateway the `stack` fixture starts reads the audit database under test."""
    monkeypatch.setenv("AUDIT_DATABASE_URL", audit_database_url)
    monkeypatch.setenv("AUDIT_TENANT_TIMEZONES", f"northwind={TZ},lakeside={TZ}")


@pytest.mark.slow
async def test_a_coordinator_reads_the_reports_page_in_a_browser(
    audit_gateway_env: None, seeded: list[Exam], stack: Any, page: Any
) -> None:
    from playwright.async_api import expect

    from tests.support.pages import WAIT_MS, log_in

    await log_in(page, stack.http_url, "nw-penrose")  # a northwind coordinator
    link = page.locator("#reports-link")
    await expect(link).to_be_visible()
    await link.click()
    await expect(page.locator("#report-to")).not_to_have_value("")  # the page's script ran
    start, end = today_range(seeded)
    await page.locator("#report-from").fill(start.isoformat())
    await page.locator("#report-to").fill(end.isoformat())
    await page.locator("#report-name").select_option("turnaround")
    await page.locator("#report-run").click()
    await expect(page.locator("#report-caption")).to_contain_text("northwind", timeout=WAIT_MS)
    exams = await page.evaluate(
        """() => {
          const heads = [...document.querySelectorAll('#report-table th')].map(t => t.textContent);
          const col = heads.indexOf('exams');
          return [...document.querySelectorAll('#report-table tbody tr')]
            .reduce((n, tr) => n + Number(tr.children[col].textContent), 0);
        }"""
    )
    assert exams == len(seeded), "the page shows every read exam of the day once"
    async with page.expect_download() as download:
        await page.locator("#report-csv").click()
    path = await (await download.value).path()
    rows = list(csv.DictReader(io.StringIO(await asyncio.to_thread(path.read_text))))
    assert sum(int(r["exams"]) for r in rows) == len(seeded)


@pytest.mark.slow
async def test_a_radiologist_sees_no_reports_link_and_the_api_refuses(
    audit_gateway_env: None, stack: Any, pages: Any
) -> None:
    from playwright.async_api import expect

    from tests.support.pages import log_in

    pages.expect_console_error(r"status of 403")  # the refusal the page shows
    page = await pages.new()
    await log_in(page, stack.http_url, "nw-okafor")
    await expect(page.locator("#reports-link")).to_be_hidden()
    await page.goto(stack.http_url + "/static/reports.html")
    await expect(page.locator("#report-to")).not_to_have_value("")  # the page's script ran
    await page.locator("#report-run").click()
    await expect(page.locator("#report-message")).to_contain_text("coordinators and admins")
    assert await page.locator("#report-table tbody tr").count() == 0
