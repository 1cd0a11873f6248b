"""The group's admin page and its API (`gateway.admin`): an admin edits a person's site,
subspecialty and modality privileges, deactivates or reactivates them, and the person's
open pages feel it at once; nobody else gets in. Real gateway, DynamoDB Local, Redis and
Chromium."""

from __future__ import annotations

import asyncio
from typing import Any

import httpx
import pytest

from dynamo.directory import DirectoryStore
from dynamo.states import ExamStatus, Modality
from dynamo.store import ExamStore
from tests.conftest import Stack, token
from tests.support.exams import exam_in

pytestmark = pytest.mark.slow


def _auth(tok: str) -> dict[str, str]:
    return {"Authorization": f"Bearer {tok}"}


# ---- the API -------------------------------------------------------------------------


async def test_the_api_edits_privileges_with_versions_and_audits_the_admin(
    stack: Stack, store: ExamStore
) -> None:
    boss = token("t-boss", roles=("admin",))
    token("t-rad", sites=("NW-GEN", "NW-ORT"))
    async with httpx.AsyncClient(base_url=stack.http_url, headers=_auth(boss)) as http:
        listing = (await http.get("/api/admin/people")).json()
        assert listing["tenant"] == "northwind"
        assert {"NW-GEN", "NW-ORT"} <= {s["code"] for s in listing["sites"]}
        rad = next(p for p in listing["people"] if p["sub"] == "t-rad")
        assert rad["sites"] == ["NW-GEN", "NW-ORT"] and rad["active"] is True

        bad = await http.patch(
            "/api/admin/people/t-rad", json={"version": rad["version"], "sites": ["NOPE"]}
        )
        assert bad.status_code == 400
        assert "unknown site 'NOPE'" in bad.json()["error"]["reason"]

        ok = await http.patch(
            "/api/admin/people/t-rad", json={"version": rad["version"], "sites": ["NW-GEN"]}
        )
        assert ok.status_code == 200, ok.text
        assert ok.json()["sites"] == ["NW-GEN"] and ok.json()["version"] == rad["version"] + 1

        stale = await http.patch(
            "/api/admin/people/t-rad", json={"version": rad["version"], "sites": []}
        )
        assert stale.status_code == 409 and stale.json()["error"]["code"] == "conflict"

        assert (await http.post("/api/admin/people/t-boss/deactivate")).status_code == 400
        assert (await http.post("/api/admin/people/nobody/deactivate")).status_code == 404
        gone = await http.post("/api/admin/people/t-rad/deactivate")
        assert gone.status_code == 200 and gone.json()["active"] is False
        online = await http.get("/api/admin/online")
        assert online.status_code == 200 and isinstance(online.json()["online"], list)

    person = await DirectoryStore(store).person("northwind", "t-rad")
    assert person is not None and person.sites == ("NW-GEN",) and not person.active
    changes = [c for c in await DirectoryStore(store).changes("northwind") if c.key == "t-rad"]
    assert [(c.action, c.actor) for c in changes[-2:]] == [
        ("update", "t-boss"),
        ("deactivate", "t-boss"),
    ]


async def test_the_api_limits_subspecialties_and_modalities_and_reactivates(
    stack: Stack, store: ExamStore
) -> None:
    boss = token("t-boss", roles=("admin",))
    token("t-mod")
    async with httpx.AsyncClient(base_url=stack.http_url, headers=_auth(boss)) as http:
        listing = (await http.get("/api/admin/people")).json()
        assert listing["modalities"] == ["CT", "MR", "XR", "US", "NM", "MG"]
        mod = next(p for p in listing["people"] if p["sub"] == "t-mod")
        assert (mod["subspecialties"], mod["modalities"]) == ([], [])

        bad = await http.patch(
            "/api/admin/people/t-mod", json={"version": mod["version"], "modalities": ["MRI"]}
        )
        assert bad.status_code == 400, bad.text
        assert "unknown modality 'MRI'" in bad.json()["error"]["reason"]
        ok = await http.patch(
            "/api/admin/people/t-mod",
            json={"version": mod["version"], "subspecialties": ["neuro"], "modalities": ["CT"]},
        )
        assert ok.status_code == 200, ok.text
        assert (ok.json()["subspecialties"], ok.json()["modalities"]) == (["neuro"], ["CT"])
        assert ok.json()["version"] == mod["version"] + 1  # the refused one wrote nothing

        assert (await http.post("/api/admin/people/t-mod/deactivate")).status_code == 200
        back = await http.post("/api/admin/people/t-mod/reactivate")
        assert back.status_code == 200 and back.json()["active"] is True
        assert back.json()["modalities"] == ["CT"]  # privileges kept across the pause
        assert (await http.post("/api/admin/people/nobody/reactivate")).status_code == 404

    changes = [c for c in await DirectoryStore(store).changes("northwind") if c.key == "t-mod"]
    assert [(c.action, c.actor) for c in changes[-3:]] == [
        ("update", "t-boss"),
        ("deactivate", "t-boss"),
        ("update", "t-boss"),
    ]


async def test_the_api_refuses_everyone_but_admins(stack: Stack) -> None:
    async with httpx.AsyncClient(base_url=stack.http_url) as http:
        assert (await http.get("/api/admin/people")).status_code == 401
        coordinator = _auth(token("t-coord", roles=("coordinator",)))
        for method, path in (
            ("GET", "/api/admin/people"),
            ("GET", "/api/admin/online"),
            ("PATCH", "/api/admin/people/nw-okafor"),
            ("POST", "/api/admin/people/nw-okafor/deactivate"),
            ("POST", "/api/admin/people/nw-okafor/reactivate"),
        ):
            resp = await http.request(method, path, headers=coordinator, json={"version": 1})
            assert resp.status_code == 403, (method, path)
            assert resp.json()["error"]["code"] == "forbidden"


# ---- the page ------------------------------------------------------------------------


def _sockets(page: Any) -> list[Any]:
    opened: list[Any] = []
    page.on("websocket", lambda ws: opened.append(ws))
    return opened


async def test_an_admin_removes_a_site_and_the_radiologists_page_loses_its_rows(
    stack: Stack, store: ExamStore, pages: Any
) -> None:
    from playwright.async_api import expect

    from tests.support.pages import WAIT_MS, log_in

    ortho = await exam_in(store, ExamStatus.COMPLETED, site="NW-ORT", subspecialty="msk")
    general = await exam_in(store, ExamStatus.COMPLETED, site="NW-GEN", subspecialty="msk")
    rad = await pages.new()
    sockets = _sockets(rad)
    await log_in(rad, stack.http_url, "nw-lindqvist")  # NW-ORT and NW-GEN, msk
    for exam in (ortho, general):
        await expect(rad.locator(f'tr[data-exam-id="{exam.accession}"]')).to_have_count(
            1, timeout=WAIT_MS
        )

    admin = await pages.new()
    await log_in(admin, stack.http_url, "nw-admin")
    link = admin.locator("#admin-link")
    await expect(link).to_be_visible()
    await link.click()
    line = admin.locator('#people-table tr[data-sub="nw-lindqvist"]')
    await expect(line.locator(".online-dot")).to_have_attribute(
        "data-online", "true", timeout=WAIT_MS
    )
    await line.locator('input[value="NW-ORT"]').uncheck()
    await line.get_by_role("button", name="Save").click()
    await expect(admin.locator("#admin-message")).to_contain_text("Saved", timeout=WAIT_MS)
    await expect(line.locator('input[value="NW-ORT"]')).not_to_be_checked()

    # The radiologist's page was closed (4005), came back by itself, re-scoped.
    await expect(rad.locator(f'tr[data-exam-id="{ortho.accession}"]')).to_have_count(
        0, timeout=WAIT_MS
    )
    await expect(rad.locator(f'tr[data-exam-id="{general.accession}"]')).to_have_count(1)
    await expect(rad.locator("#conn")).to_have_attribute("data-state", "live", timeout=WAIT_MS)
    assert len(sockets) >= 2, "the session was closed and reconnected"
    person = await DirectoryStore(store).person("northwind", "nw-lindqvist")
    assert person is not None and person.sites == ("NW-GEN",)


async def test_an_admin_deactivates_someone_and_their_page_loses_its_session(
    stack: Stack, pages: Any
) -> None:
    from playwright.async_api import expect

    from tests.support.pages import WAIT_MS, log_in

    rad = await pages.new()
    await log_in(rad, stack.http_url, "nw-okafor")
    admin = await pages.new()
    await log_in(admin, stack.http_url, "nw-admin")
    await admin.goto(stack.http_url + "/static/admin.html")
    line = admin.locator('#people-table tr[data-sub="nw-okafor"]')
    admin.on("dialog", lambda dialog: dialog.accept())
    await line.get_by_role("button", name="Deactivate").click()
    await expect(line).to_have_attribute("data-active", "false", timeout=WAIT_MS)

    await expect(rad.locator("#login")).to_be_visible(timeout=WAIT_MS)
    await expect(rad.locator("#login-message")).to_contain_text("log in again")
    await expect(rad.locator('#users button[data-user="nw-okafor"]')).to_have_count(0)

    # Reactivated: the row is active again and the radiologist can log in.
    await line.get_by_role("button", name="Reactivate").click()
    await expect(line).to_have_attribute("data-active", "true", timeout=WAIT_MS)
    await expect(admin.locator("#admin-message")).to_contain_text("Reactivated")
    await log_in(rad, stack.http_url, "nw-okafor")


async def test_an_admin_limits_a_radiologist_to_ct_and_their_page_loses_the_mr_rows(
    stack: Stack, store: ExamStore, pages: Any
) -> None:
    from playwright.async_api import expect

    from tests.support.pages import WAIT_MS, log_in

    ct = await exam_in(store, ExamStatus.COMPLETED, site="NW-GEN", subspecialty="msk")
    mr = await exam_in(
        store, ExamStatus.COMPLETED, site="NW-GEN", subspecialty="msk", modality=Modality.MR
    )
    rad = await pages.new()
    await log_in(rad, stack.http_url, "nw-lindqvist")  # NW-ORT and NW-GEN, msk
    for exam in (ct, mr):
        await expect(rad.locator(f'tr[data-exam-id="{exam.accession}"]')).to_have_count(
            1, timeout=WAIT_MS
        )

    admin = await pages.new()
    await log_in(admin, stack.http_url, "nw-admin")
    await admin.goto(stack.http_url + "/static/admin.html")
    line = admin.locator('#people-table tr[data-sub="nw-lindqvist"]')
    await line.locator('input.modality-box[value="CT"]').check()
    await line.locator("input.subspecialties").fill("msk, neuro")
    await line.get_by_role("button", name="Save").click()
    await expect(admin.locator("#admin-message")).to_contain_text("Saved", timeout=WAIT_MS)
    await expect(line.locator('input.modality-box[value="CT"]')).to_be_checked()
    await expect(line.locator('input.modality-box[value="MR"]')).not_to_be_checked()

    # The radiologist's page was closed (4005), came back by itself, CT only.
    await expect(rad.locator(f'tr[data-exam-id="{mr.accession}"]')).to_have_count(
        0, timeout=WAIT_MS
    )
    await expect(rad.locator(f'tr[data-exam-id="{ct.accession}"]')).to_have_count(1)
    person = await DirectoryStore(store).person("northwind", "nw-lindqvist")
    assert person is not None
    assert (person.modalities, person.subspecialties) == (("CT",), ("msk", "neuro"))


async def test_a_radiologist_sees_no_admin_link_and_the_page_is_refused(
    stack: Stack, pages: Any
) -> None:
    from playwright.async_api import expect

    from tests.support.pages import WAIT_MS, log_in

    pages.expect_console_error(r"status of 403")
    page = await pages.new()
    await log_in(page, stack.http_url, "nw-okafor")
    await expect(page.locator("#reports-link")).to_be_hidden()
    await expect(page.locator("#admin-link")).to_be_hidden()
    await page.goto(stack.http_url + "/static/admin.html")
    await expect(page.locator("#admin-message")).to_contain_text("admins only", timeout=WAIT_MS)
    assert await page.locator("#people-table tbody tr").count() == 0


# ---- the tenant's orchestration rules -----------------------------------------------------


async def test_the_admin_sets_the_rules_and_they_apply_live(
    stack: Stack, store: ExamStore, pages: Any
) -> None:
    from playwright.async_api import expect

    from tests.support.pages import WAIT_MS, log_in
    from tests.support.wsclient import WsClient

    async with httpx.AsyncClient(base_url=stack.http_url) as http:
        coordinator = _auth(token("t-coord", roles=("coordinator",)))
        assert (await http.get("/api/admin/rules", headers=coordinator)).status_code == 403
        boss = _auth(token("t-boss", roles=("admin",)))
        shown = (await http.get("/api/admin/rules", headers=boss)).json()
        assert (shown["mode"], shown["version"]) == ("assisted", 0)
        bad = await http.put(
            "/api/admin/rules", headers=boss, json={"version": 0, "max_open_claims": 0}
        )
        assert bad.status_code == 400 and "max_open_claims" in bad.json()["error"]["reason"]
        stale = await http.put("/api/admin/rules", headers=boss, json={"version": 3})
        assert stale.status_code == 409

    exam = await exam_in(store, ExamStatus.COMPLETED)
    reader = await WsClient.open(stack.ws_url, token("t-rad"))
    admin = await pages.new()
    await log_in(admin, stack.http_url, "nw-admin")
    await admin.goto(stack.http_url + "/static/admin.html")
    form = admin.locator("#rules-form")
    await expect(form.locator("#r-mode")).to_have_value("assisted", timeout=WAIT_MS)
    await form.locator("#r-mode").select_option("push")
    await form.locator("#r-open").fill("3")
    await form.locator("#r-rvu").fill('{"70450": 0.9}')
    await form.get_by_role("button", name="Save rules").click()
    await expect(admin.locator("#rules-message")).to_contain_text("version 1", timeout=WAIT_MS)

    stored = await DirectoryStore(store).rules("northwind")
    assert stored is not None
    assert (stored.mode, stored.max_open_claims, stored.rvu_overrides) == (
        "push",
        3,
        {"70450": 0.9},
    )
    (change,) = [c for c in await DirectoryStore(store).changes("northwind") if c.kind == "rules"]
    assert (change.actor, change.action) == ("nw-admin", "add")
    # Live: the gateway refuses hand-picked claims within a moment.
    reply: dict[str, Any] = {}
    for _ in range(50):
        reply = await reader.request({"type": "claim", "exam_id": exam.accession})
        if reply.get("code") == "assignment_only":
            break
        if reply.get("type") == "claimed":
            await reader.request({"type": "release", "exam_id": exam.accession})
        await asyncio.sleep(0.1)
    assert reply.get("code") == "assignment_only", reply
    await reader.close()
