"""Fuzzing the gateway's input: whatever a client sends, it gets a documented error or
close code, and the process and everybody else's session carry on."""

from __future__ import annotations

import json
from typing import Any

import orjson
import pytest
from hypothesis import HealthCheck, given, settings
from hypothesis import strategies as st
from websockets.exceptions import ConnectionClosed

from gateway.protocol import CloseCode, ErrorCode, server_frame
from tests.conftest import Stack
from tests.support.wsclient import WsClient

ERROR_CODES = {c.value for c in ErrorCode}
CLOSE_CODES = {int(c) for c in CloseCode}

json_values = st.recursive(
    st.none() | st.booleans() | st.integers() | st.floats(allow_nan=False) | st.text(max_size=20),
    lambda children: (
        st.lists(children, max_size=4) | st.dictionaries(st.text(max_size=10), children, max_size=4)
    ),
    max_leaves=12,
)
frame_like = st.fixed_dictionaries(
    {
        "type": st.sampled_from(
            [
                "auth",
                "subscribe",
                "unsubscribe",
                "ping",
                "claim",
                "release",
                "sign",
                "break_lock",
                "presence",
                "bogus",
                "",
            ]
        )
    },
    optional={
        "id": st.one_of(st.text(max_size=70), st.integers(), st.none()),
        "tenant": json_values,
        "view": json_values,
        "exam_id": json_values,
        "token": json_values,
        "status": json_values,
        "since": json_values,
        "limit": json_values,
    },
)
payloads = st.one_of(
    st.binary(max_size=200),
    st.text(max_size=200),
    json_values.map(json.dumps),
    frame_like.map(json.dumps),
)


@pytest.fixture
def gateway_overrides() -> dict[str, Any]:
    return {"rate_limit": 1000.0, "rate_burst": 1000}


@settings(
    max_examples=60,
    deadline=None,
    suppress_health_check=[HealthCheck.function_scoped_fixture, HealthCheck.too_slow],
)
@given(batch=st.lists(payloads, min_size=1, max_size=6))
async def test_random_frames_get_documented_answers_and_hurt_nobody(
    stack: Stack, bystander: WsClient, batch: list[str | bytes]
) -> None:
    client = await WsClient.open(stack.ws_url)
    try:
        for payload in batch:
            await client.send(payload)
        await client.send({"type": "ping", "id": "last"})
        await client.until(lambda f: f.get("id") == "last")
    except ConnectionClosed as closed:
        assert closed.rcvd is not None and closed.rcvd.code in CLOSE_CODES
    finally:
        await client.close()
    for frame in client.frames:
        server_frame.validate_json(orjson.dumps(frame))  # every answer is a documented frame
        if frame["type"] == "error":
            assert frame["code"] in ERROR_CODES and frame["message"]
    # Somebody else's session is untouched.
    assert (await bystander.request({"type": "ping"}))["type"] == "pong"


@pytest.fixture
async def bystander(stack: Stack) -> Any:
    client = await WsClient.open(stack.ws_url)
    await client.subscribe("b")
    yield client
    await client.close()


async def test_huge_and_binary_frames(stack: Stack) -> None:
    ok = await WsClient.open(stack.ws_url)
    binary = await WsClient.open(stack.ws_url)
    await binary.send(b"\x00\xff" * 100)
    error = await binary.until(lambda f: f["type"] == "error")
    assert error["code"] == "bad_request"
    huge = await WsClient.open(stack.ws_url)
    await huge.send("x" * 2_000_000)
    with pytest.raises(ConnectionClosed) as closed:
        while True:
            await huge.next()
    assert closed.value.rcvd is not None and closed.value.rcvd.code == 1009
    assert (await ok.request({"type": "ping"}))["type"] == "pong"
