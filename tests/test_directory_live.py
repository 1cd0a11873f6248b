"""The gateway trusts the directory: a person not in it is refused, an onboarded tenant's
radiologists see only their sites, and a revoked privilege or a deactivated person ends
their live sessions (4005) within the documented bound."""

from __future__ import annotations

import asyncio
import io
import re
import time
from pathlib import Path
from typing import Any

import jwt

from dynamo.directory import DirectoryStore, cli
from dynamo.states import ExamStatus
from dynamo.store import ExamStore
from gateway.auth import mint_token
from tests.conftest import SECRET, UNIT, Stack, register, token
from tests.support.exams import exam_in
from tests.support.wsclient import WsClient, closed_with

HARBOR_CSV = Path(__file__).parent / "fixtures" / "directory_harbor.csv"
BOUND_S = 3.0  # documented: about a second; allow for a loaded machine


def _bare(sub: str, tenant: str) -> str:
    """A token that proves only who: no sites, subspecialties or name claims."""
    now = int(time.time())
    return jwt.encode({"sub": sub, "tenant": tenant, "exp": now + 600}, SECRET, "HS256")


async def test_a_token_for_someone_not_in_the_directory_is_refused(stack: Stack) -> None:
    forged = mint_token(SECRET, sub="nobody", name="X", tenant="northwind", roles=["admin"])
    client = await WsClient.open(stack.ws_url, None)
    await client.send({"type": "auth", "id": "a1", "token": forged})
    reply = await client.until(lambda f: f.get("id") == "a1")
    assert reply["code"] == "unauthorized"
    assert await closed_with(client) == 4003


async def test_an_onboarded_tenant_reads_only_its_sites(stack: Stack, store: ExamStore) -> None:
    d = DirectoryStore(store)
    await cli.run(["--actor", "ops", "import", str(HARBOR_CSV)], d, io.StringIO())
    for site in ("HB-MAIN", "HB-EAST", "HB-MAIN"):
        await exam_in(store, ExamStatus.COMPLETED, tenant="harbor", site=site)
    quinn = await WsClient.open(stack.ws_url, _bare("hb-quinn", "harbor"))
    assert quinn.user is not None and quinn.user["sites"] == ["HB-MAIN"]
    assert quinn.user["name"] == "Dr. Ada Quinn"
    osei = await WsClient.open(stack.ws_url, _bare("hb-osei", "harbor"))
    moreau = await WsClient.open(stack.ws_url, _bare("hb-moreau", "harbor"))

    async def sites_seen(c: WsClient) -> set[str]:
        for _ in range(int(50 * UNIT)):
            snap = await c.subscribe("s", statuses=[])
            if snap["type"] == "snapshot" and snap["total"] >= 1:
                return {r["site"] for r in snap["rows"]}
            await asyncio.sleep(0.1)
        raise AssertionError("no rows")

    assert await sites_seen(quinn) == {"HB-MAIN"}
    assert await sites_seen(osei) == {"HB-EAST"}
    assert await sites_seen(moreau) == {"HB-MAIN", "HB-EAST"}


async def test_a_revoked_site_stops_rows_and_closes_the_session(
    stack: Stack, store: ExamStore
) -> None:
    client = await WsClient.open(
        stack.ws_url, token("t-rev", sites=("NW-GEN", "NW-ORT"), subspecialties=())
    )
    snap = await client.subscribe("s", statuses=[])
    assert snap["type"] == "snapshot", snap
    loop = asyncio.get_running_loop()
    started = loop.time()
    register("t-rev", sites=("NW-GEN",))  # the operator revokes NW-ORT
    code = await closed_with(client, timeout=BOUND_S)
    took = loop.time() - started
    assert code == 4005
    assert took < BOUND_S * UNIT, took
    print(f"revocation took {took:.3f}s")
    # Rows of NW-ORT written after the revocation never reached the old session...
    late = await exam_in(store, ExamStatus.COMPLETED, site="NW-ORT")
    await asyncio.sleep(0.5 * UNIT)
    assert not any(f.get("exam_id") == late.accession for f in client.frames)
    # ... and the reconnected session is scoped afresh.
    again = await WsClient.open(stack.ws_url, _bare("t-rev", "northwind"))
    assert again.user is not None and again.user["sites"] == ["NW-GEN"]


async def test_a_deactivated_person_is_closed_and_refused(stack: Stack) -> None:
    tok = token("t-gone")
    a = await WsClient.open(stack.ws_url, tok)
    b = await WsClient.open(stack.ws_url, tok)
    register("t-gone", active=False)
    assert await closed_with(a, timeout=BOUND_S) == 4005
    assert await closed_with(b, timeout=BOUND_S) == 4005
    client = await WsClient.open(stack.ws_url, None)
    await client.send({"type": "auth", "id": "a1", "token": tok})
    reply = await client.until(lambda f: f.get("id") == "a1")
    assert reply["code"] == "unauthorized"
    assert await closed_with(client) == 4003


def test_no_production_module_imports_the_demo_data() -> None:
    root = Path(__file__).parent.parent
    offenders: list[Any] = []
    for pkg in ("gateway", "relay", "dynamo", "worklist_cache", "hl7_ingest", "audit", "service"):
        for path in (root / pkg).rglob("*.py"):
            for line in path.read_text().splitlines():
                if re.match(r"\s*(from|import) (devstack|gateway\.demo_users|dynamo\.sites)", line):
                    offenders.append((str(path.relative_to(root)), line.strip()))
    assert offenders == []


def test_the_seed_file_is_generated_from_the_demo_data() -> None:
    from devstack.seed import SEED, render

    assert SEED.read_text() == render(), "run `python -m devstack.seed`"
