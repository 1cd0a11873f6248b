"""The served JSON Schema is the truth about client frames: frames drawn from the schema
itself are never refused as malformed, and the same frames with one field of the wrong
JSON type always are (`bad_request`), whatever the field."""

from __future__ import annotations

import json
from typing import Any

import pytest
from hypothesis import HealthCheck, given, settings
from hypothesis import strategies as st

from gateway.protocol import schema
from tests.conftest import Stack
from tests.support.wsclient import WsClient

SCHEMA = schema()["client_to_server"]
DEFS = SCHEMA["$defs"]
# `auth` would end the session on a bad token; it has its own tests.
FRAMES = sorted(name for name in DEFS if "type" in DEFS[name].get("properties", {}))
FRAMES = [name for name in FRAMES if name != "Auth"]


def _resolve(node: dict[str, Any]) -> dict[str, Any]:
    while "$ref" in node:
        node = DEFS[node["$ref"].rsplit("/", 1)[1]]
    return node


def value_of(node: dict[str, Any]) -> st.SearchStrategy[Any]:
    """Values valid under one schema node (the subset pydantic emits here)."""
    node = _resolve(node)
    if "const" in node:
        return st.just(node["const"])
    if "enum" in node:
        return st.sampled_from(node["enum"])
    if "anyOf" in node:
        return st.one_of(*(value_of(option) for option in node["anyOf"]))
    kind = node.get("type")
    if kind == "string":
        if "pattern" in node:
            return st.from_regex(node["pattern"], fullmatch=True)
        return st.text(
            min_size=node.get("minLength", 0), max_size=min(node.get("maxLength", 30), 30)
        )
    if kind == "integer":
        low = node.get("minimum", node.get("exclusiveMinimum", -(10**6) - 1) + 1)
        return st.integers(low, node.get("maximum", 10**6))
    if kind == "number":
        exclusive = "exclusiveMinimum" in node
        return st.floats(
            node.get("minimum", node.get("exclusiveMinimum", 0)),
            node.get("maximum", 1000),
            exclude_min=exclusive,
            allow_nan=False,
        )
    if kind == "boolean":
        return st.booleans()
    if kind == "null":
        return st.none()
    if kind == "array":
        return st.lists(
            value_of(node.get("items", {})),
            max_size=min(node.get("maxItems", 3), 3),
            unique_by=lambda v: json.dumps(v, sort_keys=True),
        )
    if kind == "object":
        return frame_of(node)
    raise AssertionError(f"a schema node this generator does not know: {node}")


def _holds(condition: dict[str, Any], frame: dict[str, Any]) -> bool:
    """Whether a frame meets an if/then part of the schema (the `required`, `const` and
    `not: {type: null}` that the protocol's conditions use)."""
    if any(k not in frame for k in condition.get("required", ())):
        return False
    for key, rule in condition.get("properties", {}).items():
        if key not in frame:
            continue
        if "const" in rule and frame[key] != rule["const"]:
            return False
        if rule.get("not") == {"type": "null"} and frame[key] is None:
            return False
    return True


def frame_of(node: dict[str, Any]) -> st.SearchStrategy[dict[str, Any]]:
    props = node.get("properties", {})
    required = set(node.get("required", ()))
    frames = st.fixed_dictionaries(
        {k: value_of(v) for k, v in props.items() if k in required},
        optional={k: value_of(v) for k, v in props.items() if k not in required},
    )
    if "if" in node:  # a conditional requirement: only frames that meet it are valid
        frames = frames.filter(lambda f: not _holds(node["if"], f) or _holds(node["then"], f))
    return frames


def _json_type(value: Any) -> str:
    if value is None:
        return "null"
    if isinstance(value, bool):
        return "boolean"
    if isinstance(value, int | float):
        return "number"
    return {str: "string", list: "array", dict: "object"}[type(value)]


WRONG = {
    "null": [0, "x", [], {}],
    "boolean": [0, 1, "true", None],
    "number": ["1", True, [1], None],
    "string": [1, True, ["x"], None],
    "array": ["x", 1, {}, None],
    "object": ["x", 1, [], None],
}


def _accepts(node: dict[str, Any], value: Any) -> bool:
    """Whether `value`'s JSON type is one the node allows."""
    node = _resolve(node)
    if "anyOf" in node:
        return any(_accepts(o, value) for o in node["anyOf"])
    if "const" in node or "enum" in node:
        return value in (node.get("enum") or [node.get("const")])
    kind = node.get("type")
    actual = _json_type(value)
    if kind == "integer":
        return isinstance(value, int) and not isinstance(value, bool)
    return actual == kind


@pytest.fixture
def gateway_overrides() -> dict[str, Any]:
    return {"rate_limit": 1000.0, "rate_burst": 1000}


@settings(
    max_examples=60,
    deadline=None,
    suppress_health_check=[HealthCheck.function_scoped_fixture, HealthCheck.too_slow],
)
@given(data=st.data(), name=st.sampled_from(FRAMES))
async def test_frames_from_the_schema_are_never_malformed_and_a_wrong_type_always_is(
    stack: Stack, data: st.DataObject, name: str
) -> None:
    node = DEFS[name]
    # Every draw comes before the first await: hypothesis's data must not be drawn from
    # once the example's coroutine has yielded to the event loop.
    frame = data.draw(frame_of(node), label="frame")
    frame["id"] = "f1"
    fields = [k for k in node["properties"] if k not in ("type", "id")]
    broken: dict[str, Any] | None = None
    if fields:
        field = data.draw(st.sampled_from(fields), label="field")
        base = frame.get(field, data.draw(value_of(node["properties"][field])))
        wrong = [v for v in WRONG[_json_type(base)] if not _accepts(node["properties"][field], v)]
        if wrong:
            broken = {**frame, field: data.draw(st.sampled_from(wrong), label="wrong")}
    client = await WsClient.open(stack.ws_url)
    try:
        reply = await client.request(frame, timeout=10)
        assert reply.get("code") != "bad_request", (frame, reply)
        if broken is not None:
            refused = await client.request(broken, timeout=10)
            assert refused.get("code") == "bad_request", (broken, refused)
    finally:
        await client.close()
