"""The session's own guarantees under abuse and faults: a token refresh never re-scopes,
presence shows each viewer only what they may read, every frame is rate-limited and
strictly typed, the error table is what the code does, a draining node says 503,
background tasks are supervised, a stalled pub/sub connection is noticed, a claim
renewal never drops a newer token, idle channels are let go, and a client that stops
reading is closed by a byte bound."""

from __future__ import annotations

import asyncio
import re
from collections.abc import AsyncIterator
from pathlib import Path
from typing import Any

import httpx
import pytest
from redis.asyncio import Redis
from websockets.asyncio.client import connect
from websockets.exceptions import ConnectionClosed, InvalidStatus

from dynamo.deltas import ExamDelta
from dynamo.states import ExamStatus
from dynamo.store import ExamStore
from tests.conftest import UNIT, Stack, token
from tests.support.exams import exam_bundle, exam_in
from tests.support.wsclient import StalledClient, WsClient, closed_with
from worklist_cache import FeedSubscriber, WorklistFeed, keys

S = ExamStatus
DOCS = Path(__file__).resolve().parent.parent / "docs"


async def eventually(check: Any, timeout: float = 5.0) -> None:
    loop = asyncio.get_running_loop()
    deadline = loop.time() + timeout * UNIT
    while not await check():
        assert loop.time() < deadline, "condition never held"
        await asyncio.sleep(0.05)


# ---- token refresh -------------------------------------------------------------------


@pytest.mark.parametrize(
    "changed",
    [
        {"sites": ("NW-GEN", "NW-ORT")},
        {"subspecialties": ()},
        {"tenant": "lakeside"},
        {"roles": ("radiologist", "admin")},
    ],
)
async def test_a_refresh_that_changes_the_scope_is_refused_and_closes(
    stack: Stack, changed: dict[str, Any]
) -> None:
    base: dict[str, Any] = {"sites": ("NW-GEN",), "subspecialties": ("neuro",)}
    client = await WsClient.open(stack.ws_url, token("t-ana", **base))
    await client.subscribe("s")
    # Minting registers the person as given: the directory changes with the token.
    await client.send({"type": "auth", "id": "a2", "token": token("t-ana", **{**base, **changed})})
    if "tenant" in changed:
        # Another tenant's t-ana is another person: never this session's.
        reply = await client.until(lambda f: f.get("id") == "a2")
        assert reply["code"] == "forbidden"
        assert await closed_with(client) == 4003
    else:
        # The directory changed what she may see: re-scoped only by reconnecting.
        assert await closed_with(client) == 4005
    # No ghost is left behind in either tenant's presence.
    for tenant in ("northwind", "lakeside"):
        other = await WsClient.open(stack.ws_url, token("t-obs", tenant=tenant))
        await eventually(lambda other=other: _no_presence_of(other, "t-ana"))


async def _no_presence_of(client: WsClient, sub: str) -> bool:
    state = await client.request({"type": "presence"})
    return all(u["sub"] != sub for u in state["users"])


async def test_a_refresh_with_the_same_scope_extends_the_session(stack: Stack) -> None:
    client = await WsClient.open(stack.ws_url, token("t-ana", sites=("NW-GEN",), ttl_s=60))
    reply = await client.auth(token("t-ana", sites=("NW-GEN",), ttl_s=600))
    assert reply["expires_at"] > 0
    assert (await client.request({"type": "ping"}))["type"] == "pong"


async def test_a_failed_refresh_ends_the_session(stack: Stack) -> None:
    client = await WsClient.open(stack.ws_url, token("t-ana"))
    await client.send({"type": "auth", "id": "a2", "token": "not-a-token"})
    reply = await client.until(lambda f: f.get("id") == "a2")
    assert reply["code"] == "unauthorized"
    assert await closed_with(client) == 4003


# ---- presence ------------------------------------------------------------------------


async def test_presence_shows_each_viewer_only_the_exams_they_may_read(
    stack: Stack, store: ExamStore
) -> None:
    reader = await WsClient.open(stack.ws_url, token("t-all", name="Dr. All"))
    general = await exam_in(store, S.COMPLETED, site="NW-GEN")
    ortho = await exam_in(store, S.COMPLETED, site="NW-ORT", subspecialty="msk")
    for exam in (general, ortho):
        assert (await reader.request({"type": "claim", "exam_id": exam.accession}))["type"] == (
            "claimed"
        )
    scoped = await WsClient.open(stack.ws_url, token("t-gen", sites=("NW-GEN",)))
    everyone = await WsClient.open(stack.ws_url, token("t-boss"))

    async def reading_seen_by(viewer: WsClient) -> list[str]:
        state = await viewer.request({"type": "presence"})
        return next(u["reading"] for u in state["users"] if u["sub"] == "t-all")

    assert await reading_seen_by(scoped) == [general.accession]
    assert sorted(await reading_seen_by(everyone)) == sorted([general.accession, ortho.accession])
    for frame in scoped.frames:
        assert ortho.accession not in str(frame), "presence named an exam out of scope"


# ---- rate limit and strict frames ------------------------------------------------------


async def test_invalid_frames_count_against_the_rate_limit(stack: Stack) -> None:
    client = await WsClient.open(stack.ws_url)
    for i in range(400):
        await client.send({"type": "nonsense", "id": f"x{i}"})
    codes = []
    try:
        while True:
            frame = await client.next()
            if frame.get("type") == "error":
                codes.append(frame["code"])
    except ConnectionClosed as closed:
        assert closed.rcvd is not None and closed.rcvd.code == 1008, "a flood is closed"
    assert "rate_limited" in codes


async def test_auth_frames_count_against_the_rate_limit(stack: Stack) -> None:
    flood = await WsClient.open(stack.ws_url, None)
    good = token("t-ana")
    for i in range(200):
        await flood.send({"type": "auth", "id": f"a{i}", "token": good})
    replies = []
    try:
        while True:
            replies.append(await flood.next())
    except (ConnectionClosed, TimeoutError):
        pass
    assert any(r.get("code") == "rate_limited" for r in replies), "auth frames were not counted"


@pytest.mark.parametrize(
    "frame",
    [
        {"type": "subscribe", "id": "s", "limit": "500"},
        {"type": "subscribe", "id": "s", "limit": True},
        {"type": "subscribe", "id": "s", "limit": 5.0},
        {"type": "subscribe", "id": "s", "view": {"claimed_by_me": 0}},
        {"type": "subscribe", "id": "s", "view": {"sites": "NW-GEN"}},
        {"type": "claim", "id": "c", "exam_id": 12345},
        {"type": "review_assign", "id": "r", "exam_id": "X1", "due_in_hours": "2"},
    ],
)
async def test_wire_types_are_checked_not_coerced(stack: Stack, frame: dict[str, Any]) -> None:
    client = await WsClient.open(stack.ws_url)
    reply = await client.request(frame)
    assert reply["type"] == "error" and reply["code"] == "bad_request", reply


# ---- the error table is the code -------------------------------------------------------


def _table(heading: str) -> dict[str, str]:
    text = (DOCS / "protocol.md").read_text()
    section = text.split(heading, 1)[1].split("\n## ", 1)[0]
    rows = {}
    for line in section.splitlines():
        match = re.match(r"\|\s*`?([a-z_0-9]+)`?\s*\|(.*)\|(.*)\|", line)
        if match and match.group(1) not in ("code",):
            rows[match.group(1)] = match.group(2)
    return rows


def _close_in(cell: str) -> int | None:
    found = re.findall(r"\b(1\d{3}|4\d{3})\b", cell)
    return int(found[0]) if found else None


async def _produce(stack: Stack, store: ExamStore, code: str) -> tuple[dict[str, Any], WsClient]:
    """Make the gateway answer with `code`; the error frame and the client."""
    if code == "unauthorized":
        client = await WsClient.open(stack.ws_url, None)
        await client.send({"type": "ping", "id": "p"})
    elif code == "token_expired":
        client = await WsClient.open(stack.ws_url, None)
        await client.send({"type": "auth", "id": "a", "token": token(ttl_s=-60)})
    elif code == "too_large":
        client = await WsClient.open(stack.ws_url)
        await client.send('{"type":"ping","id":"x","pad":"' + "a" * 70_000 + '"}')
    else:
        client = await WsClient.open(stack.ws_url)
        if code == "bad_request":
            await client.send("{")
        elif code == "forbidden":
            await client.send({"type": "subscribe", "id": "s", "tenant": "lakeside"})
        elif code == "not_found":
            await client.send({"type": "unsubscribe", "id": "u", "sub": "nope"})
        elif code == "too_many_subscriptions":
            for i in range(9):
                await client.send({"type": "subscribe", "id": f"s{i}"})
        elif code in ("conflict", "stale_token", "invalid_transition"):
            exam = await exam_in(store, S.COMPLETED)
            if code == "conflict":
                other = await WsClient.open(stack.ws_url, token("t-other"))
                await other.request({"type": "claim", "exam_id": exam.accession})
                await client.send({"type": "claim", "id": "c", "exam_id": exam.accession})
            elif code == "stale_token":
                await client.send({"type": "release", "id": "c", "exam_id": exam.accession})
            else:
                await client.request({"type": "claim", "exam_id": exam.accession})
                await client.request({"type": "sign", "exam_id": exam.accession, "status": "FINAL"})
                reclaimed = await client.request({"type": "claim", "exam_id": exam.accession})
                assert reclaimed["type"] == "error"
                return reclaimed, client
        elif code == "nothing_eligible":
            await client.send({"type": "next", "id": "n"})
        elif code == "rate_limited":
            for i in range(80):
                await client.send({"type": "ping", "id": f"p{i}"})
    error = await client.until(lambda f: f.get("type") == "error" and f.get("code") == code)
    return error, client


PRODUCIBLE = [
    "bad_request",
    "unauthorized",
    "token_expired",
    "forbidden",
    "not_found",
    "conflict",
    "stale_token",
    "invalid_transition",
    "rate_limited",
    "too_large",
    "too_many_subscriptions",
    "nothing_eligible",
]


def test_the_error_table_lists_every_code() -> None:
    from gateway.protocol import ErrorCode

    assert set(_table("## Errors")) == {c.value for c in ErrorCode}


@pytest.mark.parametrize("code", PRODUCIBLE)
async def test_each_error_does_what_the_table_says(
    stack: Stack, store: ExamStore, code: str
) -> None:
    promised = _close_in(_table("## Errors")[code])
    error, client = await _produce(stack, store, code)
    assert error["code"] == code
    if promised is None:
        assert (await client.request({"type": "ping"}, timeout=10))["type"] in ("pong", "error")
    else:
        assert await closed_with(client) == promised


# ---- draining ------------------------------------------------------------------------


async def test_a_draining_node_answers_the_handshake_with_503(stack: Stack) -> None:
    stack.app.state.gw.draining = True
    try:
        with pytest.raises(InvalidStatus) as refused:
            await connect(stack.ws_url)
        assert refused.value.response.status_code == 503
    finally:
        stack.app.state.gw.draining = False


# ---- background tasks ------------------------------------------------------------------


async def _metrics(stack: Stack) -> str:
    async with httpx.AsyncClient(base_url=stack.http_url) as http:
        return (await http.get("/metrics")).text


async def test_a_crashed_housekeeping_is_logged_counted_and_restarted(stack: Stack) -> None:
    gw = stack.app.state.gw
    renew = gw.claim_renew_seconds
    gw.claim_renew_seconds = "broken"  # the next round raises TypeError
    try:

        async def counted() -> bool:
            return 'gateway_task_failures_total{task="housekeeping"}' in await _metrics(stack)

        await eventually(counted)
    finally:
        gw.claim_renew_seconds = renew
    # Still working: a session whose token runs out is closed with 4004.
    client = await WsClient.open(stack.ws_url, token("t-short", ttl_s=2))
    assert await closed_with(client, timeout=10) == 4004


class FreezingProxy:
    """A TCP proxy in front of Redis that can stop delivering to the connections that
    subscribed (the pub/sub one), while they stay open: a silent stall.

    A stalled connection holds back what Redis sends it, as TCP would, and loses nothing
    of it: what is held flows on, in order, once thawed (to a connection still open).
    Dropping it instead would lose the replies to a re-SUBSCRIBE sent during the stall
    while later messages still came, a stream no Redis connection can deliver."""

    def __init__(self, target: tuple[str, int]) -> None:
        self.target = target
        self._thawed = asyncio.Event()
        self._thawed.set()
        self._conns: list[asyncio.StreamWriter] = []
        self._server: asyncio.Server | None = None

    @property
    def frozen(self) -> bool:
        return not self._thawed.is_set()

    @frozen.setter
    def frozen(self, value: bool) -> None:
        if value:
            self._thawed.clear()
        else:
            self._thawed.set()

    async def start(self) -> str:
        self._server = await asyncio.start_server(self._handle, "127.0.0.1", 0)
        port = self._server.sockets[0].getsockname()[1]
        return f"redis://127.0.0.1:{port}"

    async def _handle(self, reader: asyncio.StreamReader, writer: asyncio.StreamWriter) -> None:
        up_reader, up_writer = await asyncio.open_connection(*self.target)
        self._conns += [writer, up_writer]
        subscriber = {"yes": False}

        async def pump(src: asyncio.StreamReader, dst: asyncio.StreamWriter, up: bool) -> None:
            try:
                while data := await src.read(65536):
                    if up and b"SUBSCRIBE" in data.upper():
                        subscriber["yes"] = True
                    if not up and subscriber["yes"]:
                        # Held while frozen: the connection looks alive, delivers nothing.
                        await self._thawed.wait()
                    dst.write(data)
                    await dst.drain()
            except (ConnectionError, OSError):
                pass
            finally:
                dst.close()

        await asyncio.gather(pump(reader, up_writer, True), pump(up_reader, writer, False))

    async def aclose(self) -> None:
        self.frozen = False  # no pump stays waiting
        for writer in self._conns:
            writer.close()
        if self._server is not None:
            self._server.close()


@pytest.fixture
async def frozen_redis(redis_url: str) -> AsyncIterator[FreezingProxy]:
    host, port = redis_url.split("//")[1].split("/")[0].split(":")
    proxy = FreezingProxy((host, int(port)))
    proxy.url = await proxy.start()  # type: ignore[attr-defined]
    yield proxy
    await proxy.aclose()


async def test_a_silently_stalled_pubsub_is_noticed_and_resynced(
    dynamo_settings: Any, redis: Redis, frozen_redis: FreezingProxy
) -> None:
    from devstack import free_port
    from gateway.app import create_app
    from gateway.settings import GatewaySettings
    from tests.conftest import SECRET, _serve
    from worklist_cache import CacheSettings

    port = free_port()
    settings = GatewaySettings(port=port, jwt_secret=SECRET, pubsub_probe_seconds=0.5)
    app = create_app(
        settings,
        CacheSettings(redis_url=frozen_redis.url),  # type: ignore[attr-defined]
        dynamo_settings,
    )
    server, task = await _serve(app, port, settings)
    try:
        url = f"ws://127.0.0.1:{port}/ws"
        client = await WsClient.open(url)
        await client.subscribe("s")
        frozen_redis.frozen = True
        base = f"http://127.0.0.1:{port}"

        async def not_ready() -> bool:
            async with httpx.AsyncClient(base_url=base) as http:
                ready = await http.get("/readyz")
            return ready.status_code == 503 and ready.json()["pubsub"] is False

        await eventually(not_ready, timeout=10)  # the operator sees the stall
        frozen_redis.frozen = False
        await client.until(lambda f: f.get("type") == "resync", timeout=20)
        fresh = await client.until(lambda f: f.get("type") == "snapshot", timeout=20)
        assert fresh["reset"] is True
        gw = app.state.gw
        assert gw.subscriber.probe_failures >= 1
        text = await _metrics_at(base)
        assert re.search(r"gateway_pubsub_probe_failures_total [1-9]", text)
        # Delivery works again.
        exam, _, _ = exam_bundle()
        await WorklistFeed(redis).publish([ExamDelta.from_exam(exam)])
        await client.until(lambda f: (f.get("delta") or {}).get("exam_id") == exam.accession)
    finally:
        server.should_exit = True
        await asyncio.wait_for(task, 10 * UNIT)


async def _metrics_at(base: str) -> str:
    async with httpx.AsyncClient(base_url=base) as http:
        return (await http.get("/metrics")).text


async def test_a_gap_is_reported_only_once_the_resubscription_is_confirmed(
    redis: Redis, redis_url: str
) -> None:
    """When the subscriber reports a gap, a message published from the gap handler
    (as a resync's snapshot read would see it) is delivered: nothing falls between."""
    delivered: list[bytes] = []
    after_gap: asyncio.Event = asyncio.Event()
    channel = keys.channel("gaptest")

    async def on_gap() -> None:
        await redis.publish(channel, b"after-gap")

    def handler(raw: bytes) -> None:
        delivered.append(raw)
        if raw == b"after-gap":
            after_gap.set()

    fresh = Redis.from_url(redis_url)
    async with FeedSubscriber(fresh, on_gap) as subscriber:
        await subscriber.subscribe(channel, handler)
        await redis.execute_command("CLIENT", "KILL", "TYPE", "pubsub")
        await asyncio.wait_for(after_gap.wait(), 5 * UNIT)
    await fresh.aclose()


# ---- claims, channels, stuck clients ----------------------------------------------------


async def test_a_renewal_racing_a_reclaim_keeps_the_new_claim(
    stack: Stack, store: ExamStore
) -> None:
    gw = stack.app.state.gw
    ana = await WsClient.open(stack.ws_url, token("t-ana"))
    exam = await exam_in(store, S.COMPLETED)
    first = await ana.request({"type": "claim", "exam_id": exam.accession})
    entered, go = asyncio.Event(), asyncio.Event()
    original = gw.claims.renew

    async def slow_renew(*args: Any, **kw: Any) -> Any:
        entered.set()
        await go.wait()  # the renewal of the old token is in flight ...
        return await original(*args, **kw)

    gw.claims.renew = slow_renew
    gw.claim_renew_seconds = 0.2
    try:
        await asyncio.wait_for(entered.wait(), 5 * UNIT)
        # ... while the user releases and claims again on the same connection.
        await ana.request({"type": "release", "exam_id": exam.accession, "token": first["token"]})
        again = await ana.request({"type": "claim", "exam_id": exam.accession})
        assert again["type"] == "claimed"
        go.set()
        await asyncio.sleep(0.5 * UNIT)
    finally:
        gw.claims.renew = original
        gw.claim_renew_seconds = 60
    assert not any(f.get("type") == "claim_lost" for f in ana.frames), "told it lost the claim"
    signed = await ana.request({"type": "sign", "exam_id": exam.accession, "status": "FINAL"})
    assert signed["type"] == "signed", "the connection still holds the new claim's token"


@pytest.fixture
def gateway_overrides() -> dict[str, Any]:
    return {
        "channel_linger_seconds": 0.3,
        "client_queue_bytes": 256 * 1024,
        "send_buffer_bytes": 64 * 1024,
    }


async def test_a_tenant_channel_is_dropped_after_its_last_client_leaves(
    stack: Stack, redis: Redis
) -> None:
    channel = keys.channel("lakeside").encode()

    async def subscribed() -> bool:
        return channel in await redis.pubsub_channels()

    client = await WsClient.open(stack.ws_url, token("t-lk", tenant="lakeside"))
    await client.subscribe("s")
    assert await subscribed()
    await client.close()
    await eventually(lambda: _not(subscribed))
    again = await WsClient.open(stack.ws_url, token("t-lk", tenant="lakeside"))
    await again.subscribe("s")
    assert await subscribed()
    exam, _, _ = exam_bundle(tenant="lakeside", site="LK-MED")
    await WorklistFeed(redis).publish([ExamDelta.from_exam(exam)])
    await again.until(lambda f: (f.get("delta") or {}).get("exam_id") == exam.accession)


async def _not(check: Any) -> bool:
    return not await check()


async def test_a_client_that_stops_reading_is_closed_by_the_byte_bound(
    stack: Stack, redis: Redis
) -> None:
    """Big frames, few of them: far below the frame-count bound, so only the byte
    bound (queue plus kernel send buffer) catches the client, long before keepalive."""
    stalled = StalledClient(stack.ws_url)
    await stalled.start()
    feed = WorklistFeed(redis)
    exam, _, _ = exam_bundle()
    base = ExamDelta.from_exam(exam)
    for i in range(150):  # ~4.5 MB in 150 frames
        big = base.model_copy(update={"exam_id": f"BIG{i}", "procedure": "X" * 30_000})
        await feed.publish([big])
    started = asyncio.get_running_loop().time()
    assert await stalled.close_code() == 4001
    assert asyncio.get_running_loop().time() - started < 15 * UNIT
