"""The WebSocket protocol against a real gateway: authentication, scoping, every error
code a client can provoke, close codes, and the HTTP endpoints."""

from __future__ import annotations

import asyncio
from typing import Any

import httpx
import orjson
import pytest
from websockets.asyncio.client import connect
from websockets.exceptions import InvalidStatus

from dynamo.states import ExamStatus
from dynamo.store import ExamStore
from gateway.app import create_app
from gateway.exceptions import ConfigurationError
from gateway.protocol import server_frame
from gateway.settings import GatewaySettings
from tests.conftest import UNIT, Stack, token
from tests.support.exams import exam_in
from tests.support.wsclient import WsClient, closed_with


@pytest.fixture
def gateway_overrides() -> dict[str, Any]:
    return {"auth_timeout": 1.0, "rate_limit": 5.0, "rate_burst": 20, "max_subscriptions": 3}


# ---- authentication --------------------------------------------------------------------


async def test_nothing_is_processed_before_auth(stack: Stack) -> None:
    client = await WsClient.open(stack.ws_url, None)
    await client.send({"type": "subscribe", "id": "s1"})
    assert await closed_with(client) == 4003
    error = next(f for f in client.frames if f["type"] == "error")
    assert (error["code"], error["id"]) == ("unauthorized", "s1")
    assert not any(f["type"] == "snapshot" for f in client.frames)


async def test_a_silent_client_is_closed_after_the_auth_timeout(stack: Stack) -> None:
    client = await WsClient.open(stack.ws_url, None)
    assert await closed_with(client, timeout=3 * UNIT) == 4003


@pytest.mark.parametrize(
    "bad",
    [
        "not-a-jwt",
        token().replace(token().split(".")[2], "A" * 43),  # signature that does not match
        token(tenant="Bad Tenant!"),  # claims that do not validate
    ],
)
async def test_a_bad_token_is_refused_and_closed(stack: Stack, bad: str) -> None:
    client = await WsClient.open(stack.ws_url, None)
    await client.send({"type": "auth", "id": "a1", "token": bad})
    assert await closed_with(client) == 4003
    error = next(f for f in client.frames if f["type"] == "error")
    assert error["code"] == "unauthorized" and bad not in error["message"]


async def test_an_expired_token_is_refused(stack: Stack) -> None:
    client = await WsClient.open(stack.ws_url, None)
    await client.send({"type": "auth", "id": "a1", "token": token(ttl_s=-60)})
    assert await closed_with(client) == 4003
    assert any(f.get("code") == "token_expired" for f in client.frames)


async def test_a_session_ends_when_its_token_expires_unless_refreshed(stack: Stack) -> None:
    short = await WsClient.open(stack.ws_url, token("t-short", ttl_s=1))
    refreshed = await WsClient.open(stack.ws_url, token("t-fresh", ttl_s=1))
    again = await refreshed.auth(token("t-fresh", ttl_s=600))
    assert again["expires_at"] > refreshed.frames[1]["expires_at"]
    assert await closed_with(short, timeout=5 * UNIT) == 4004
    assert any(f.get("code") == "token_expired" for f in short.frames)
    pong = await refreshed.request({"type": "ping"})
    assert pong["type"] == "pong", "the refreshed session lives on"


async def test_a_session_cannot_switch_users(stack: Stack) -> None:
    client = await WsClient.open(stack.ws_url, token("t-ana"))
    await client.send({"type": "auth", "id": "a2", "token": token("t-ben")})
    reply = await client.until(lambda f: f.get("id") == "a2")
    assert reply["code"] == "forbidden"
    assert await closed_with(client) == 4003


async def test_the_gateway_refuses_to_start_without_a_way_to_verify_tokens() -> None:
    with pytest.raises(ConfigurationError, match="GATEWAY_JWT_SECRET"):
        create_app(GatewaySettings(demo=False, jwt_secret=""))
    with pytest.raises(ConfigurationError, match="32"):
        create_app(GatewaySettings(jwt_secret="short"))


# ---- scoping -----------------------------------------------------------------------------


async def test_views_are_scoped_to_the_users_sites_and_subspecialties(
    stack: Stack, store: ExamStore
) -> None:
    admin = await WsClient.open(stack.ws_url, token("t-admin", roles=("admin",)))
    await admin.subscribe("w")
    mine = await exam_in(store, ExamStatus.COMPLETED, site="NW-GEN", subspecialty="neuro")
    other_site = await exam_in(store, ExamStatus.COMPLETED, site="NW-ORT", subspecialty="neuro")
    other_sub = await exam_in(store, ExamStatus.COMPLETED, site="NW-GEN", subspecialty="msk")
    for exam in (mine, other_site, other_sub):  # wait until the relay delivered all three
        await admin.until(
            lambda f, e=exam: (
                f.get("delta", {}).get("exam_id") == e.accession
                and f["delta"]["version"] == e.version
            )
        )

    ana = await WsClient.open(
        stack.ws_url, token("t-ana", sites=("NW-GEN",), subspecialties=("neuro",))
    )
    snap = await ana.subscribe("s1")
    assert [r["exam_id"] for r in snap["rows"]] == [mine.accession]
    refused = await ana.subscribe("s2", sites=["NW-ORT"])
    assert refused["code"] == "forbidden" and "NW-ORT" in refused["message"]
    # A later change to an exam outside the scope never reaches her.
    await store.transition(other_site.patient_id, other_site.accession, ExamStatus.CANCELLED)
    await store.transition(mine.patient_id, mine.accession, ExamStatus.CANCELLED)
    await ana.until(lambda f: f.get("delta", {}).get("exam_id") == mine.accession)
    seen = {f["delta"]["exam_id"] for f in ana.frames if f["type"] == "delta"}
    assert seen == {mine.accession}
    # And she cannot claim what she cannot see: it does not exist for her.
    reply = await ana.request({"type": "claim", "exam_id": other_sub.accession})
    assert reply["code"] == "not_found"


# ---- errors a client can provoke ---------------------------------------------------------


async def test_malformed_frames_get_bad_request_and_the_session_survives(stack: Stack) -> None:
    client = await WsClient.open(stack.ws_url)
    for raw, rid in (
        ("{not json", None),
        ('["a list"]', None),
        ('{"type": "teleport", "id": "t1"}', "t1"),
        ('{"type": "subscribe", "id": "s1", "view": {"modalities": ["XX"]}}', "s1"),
        ('{"type": "subscribe", "id": "bad id with spaces"}', None),
        ('{"type": "claim", "id": "c1"}', "c1"),
    ):
        await client.send(raw)
        error = await client.until(lambda f: f["type"] == "error")
        assert (error["code"], error["id"]) == ("bad_request", rid), raw
        assert error["message"]
    assert (await client.request({"type": "ping"}))["type"] == "pong"


async def test_error_codes_for_requests_that_cannot_be_served(
    stack: Stack, store: ExamStore
) -> None:
    client = await WsClient.open(stack.ws_url)
    scheduled = await exam_in(store, ExamStatus.SCHEDULED)
    await asyncio.sleep(0)
    cases = [
        ({"type": "unsubscribe", "sub": "nope"}, "not_found"),
        ({"type": "claim", "exam_id": "NOSUCH0001"}, "not_found"),
        ({"type": "claim", "exam_id": scheduled.accession}, "invalid_transition"),
        ({"type": "release", "exam_id": scheduled.accession}, "stale_token"),
        ({"type": "break_lock", "exam_id": scheduled.accession, "reason": "x"}, "forbidden"),
        ({"type": "subscribe", "tenant": "lakeside"}, "forbidden"),
    ]
    for frame, code in cases:
        reply = await client.request(frame)
        assert (reply["type"], reply["code"]) == ("error", code), frame
    invalid = await client.request({"type": "claim", "exam_id": scheduled.accession})
    assert invalid["detail"] == {"current": "SCHEDULED"}
    for i in range(3):
        assert (await client.subscribe(f"s{i}"))["type"] == "snapshot"
    assert (await client.subscribe("s9"))["code"] == "too_many_subscriptions"


async def test_a_request_flood_is_rate_limited(stack: Stack) -> None:
    client = await WsClient.open(stack.ws_url)
    for i in range(50):
        await client.send({"type": "ping", "id": f"p{i}"})
    replies = [await client.until(lambda f, i=i: f.get("id") == f"p{i}") for i in range(50)]
    limited = [r for r in replies if r["type"] == "error"]
    assert limited and all(r["code"] == "rate_limited" for r in limited)
    assert all(r["detail"]["retry_after_ms"] > 0 for r in limited)
    # The burst went through (less the auth frame, which counts too).
    assert sum(r["type"] == "pong" for r in replies) >= 19
    await asyncio.sleep(1.0)
    assert (await client.request({"type": "ping"}))["type"] == "pong"


async def test_a_frame_above_the_limit_is_told_too_large_then_closed_with_1009(
    stack: Stack,
) -> None:
    client = await WsClient.open(stack.ws_url)
    await client.send('{"type":"ping","id":"x","pad":"' + "a" * 70_000 + '"}')
    error = await client.until(lambda f: f.get("type") == "error")
    assert error["code"] == "too_large"
    assert await closed_with(client) == 1009


async def test_every_frame_the_server_sends_is_in_the_schema(
    stack: Stack, store: ExamStore
) -> None:
    client = await WsClient.open(stack.ws_url)
    await client.subscribe("s1")
    exam = await exam_in(store, ExamStatus.COMPLETED)
    await client.until(lambda f: f.get("delta", {}).get("version") == exam.version)
    claimed = await client.request({"type": "claim", "exam_id": exam.accession})
    await client.request({"type": "sign", "exam_id": exam.accession, "status": "FINAL"})
    await client.request({"type": "presence"})
    await client.request({"type": "nope"})
    assert claimed["type"] == "claimed"
    for frame in client.frames:
        server_frame.validate_json(orjson.dumps(frame))


# ---- the handshake and HTTP ----------------------------------------------------------


async def test_a_foreign_origin_is_refused_at_the_handshake(stack: Stack) -> None:
    with pytest.raises(InvalidStatus) as refused:
        await connect(stack.ws_url, additional_headers={"Origin": "https://evil.example"})
    assert refused.value.response.status_code == 403
    own = await WsClient.open(stack.ws_url, origin=stack.http_url)
    assert own.user is not None


async def test_health_readiness_and_metrics(stack: Stack) -> None:
    client = await WsClient.open(stack.ws_url)
    await client.request({"type": "ping"})
    async with httpx.AsyncClient(base_url=stack.http_url) as http:
        assert (await http.get("/healthz")).text == "ok"
        for _ in range(50):  # the relay's first heartbeat
            ready = await http.get("/readyz")
            if ready.status_code == 200:
                break
            await asyncio.sleep(0.1)
        assert ready.json() == {
            "ready": True,
            "draining": False,
            "redis": True,
            "dynamodb": True,
            "relay": True,
            "tasks": True,
            "pubsub": True,
        }
        metrics = (await http.get("/metrics")).text
    assert "gateway_connections 1" in metrics
    assert "gateway_requests_ping_total" in metrics


async def test_demo_login_issues_tokens_only_for_demo_users(stack: Stack) -> None:
    async with httpx.AsyncClient(base_url=stack.http_url) as http:
        users = (await http.get("/api/demo-users")).json()
        assert {"radiologist", "coordinator", "admin"} <= {r for u in users for r in u["roles"]}
        ok = await http.post("/api/login", json={"user": users[0]["sub"]})
        bad = await http.post("/api/login", json={"user": "mallory"})
    assert ok.status_code == 200 and bad.status_code == 400
    client = await WsClient.open(stack.ws_url, ok.json()["token"])
    assert client.user is not None and client.user["sub"] == users[0]["sub"]
