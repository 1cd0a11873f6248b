"""JWKS mode against a real HTTP JWKS endpoint with real RSA and EC keys: key rotation,
unknown kids, a provider outage, the required `iss`/`aud`, and a WebSocket login."""

from __future__ import annotations

import asyncio
import uuid
from collections.abc import Iterator
from typing import Any

import pytest
from websockets.exceptions import ConnectionClosed

from gateway.app import build_verifier, create_app
from gateway.auth import JwksVerifier
from gateway.exceptions import AuthError, ConfigurationError
from gateway.settings import GatewaySettings
from tests.conftest import UNIT, Stack, register
from tests.support.jwks import AUDIENCE, ISSUER, JwksServer, SigningKey
from tests.support.wsclient import WsClient


@pytest.fixture
def jwks() -> Iterator[JwksServer]:
    server = JwksServer()
    try:
        yield server
    finally:
        server.stop()


@pytest.fixture(scope="module")
def rsa_key() -> SigningKey:
    return SigningKey("rsa")


@pytest.fixture(scope="module")
def ec_key() -> SigningKey:
    return SigningKey("ec")


def verifier(url: str, *, cache_seconds: float = 3600.0, cooldown: float = 3600.0) -> JwksVerifier:
    return JwksVerifier(
        url,
        audience=AUDIENCE,
        issuer=ISSUER,
        cache_seconds=cache_seconds,
        cooldown_seconds=cooldown,
    )


async def refused(v: JwksVerifier, token: str) -> str:
    with pytest.raises(AuthError) as info:
        await v.verify(token)
    return info.value.code


async def test_rsa_and_ec_tokens_verify_against_the_jwks(
    jwks: JwksServer, rsa_key: SigningKey, ec_key: SigningKey
) -> None:
    jwks.publish(rsa_key, ec_key)
    v = verifier(jwks.url)
    for key in (rsa_key, ec_key):
        principal = await v.verify(key.token(sub=f"idp-{key.alg}"))
        assert (principal.sub, principal.tenant) == (f"idp-{key.alg}", "northwind")
    assert jwks.requests == 1  # the key set is cached


async def test_tokens_must_carry_the_configured_issuer_and_audience(
    jwks: JwksServer, rsa_key: SigningKey
) -> None:
    jwks.publish(rsa_key)
    v = verifier(jwks.url)
    assert (await v.verify(rsa_key.token())).sub == "idp-ana"
    assert (await v.verify(rsa_key.token(aud=["other-app", AUDIENCE]))).sub == "idp-ana"
    for bad in (
        {"iss": "https://evil.example.test/"},
        {"iss": None},
        {"aud": "another-app-of-the-same-provider"},
        {"aud": None},
    ):
        assert await refused(v, rsa_key.token(**bad)) == "unauthorized", bad


async def test_a_token_signed_by_a_key_not_in_the_jwks_is_refused(
    jwks: JwksServer, rsa_key: SigningKey
) -> None:
    jwks.publish(rsa_key)
    v = verifier(jwks.url)
    forger = SigningKey("rsa")
    # The kid of a published key, the signature of another: refused, not crashed.
    assert await refused(v, forger.token(kid=rsa_key.kid)) == "unauthorized"
    assert await refused(v, "not-a-jwt") == "unauthorized"


async def test_a_removed_key_is_refused_after_the_next_refresh(
    jwks: JwksServer, rsa_key: SigningKey, ec_key: SigningKey
) -> None:
    jwks.publish(rsa_key)
    v = verifier(jwks.url, cache_seconds=0.5 * UNIT, cooldown=0)
    old = rsa_key.token()
    assert (await v.verify(old)).sub == "idp-ana"

    jwks.publish(ec_key)  # the provider rotates: the RSA key is gone
    await asyncio.sleep(0.6 * UNIT)  # the cache's time is up

    assert await refused(v, old) == "unauthorized"
    assert (await v.verify(ec_key.token())).sub == "idp-ana"


async def test_an_unknown_kid_fetches_once_and_a_flood_of_them_cannot_hammer_the_provider(
    jwks: JwksServer, rsa_key: SigningKey, ec_key: SigningKey
) -> None:
    jwks.publish(rsa_key)
    v = verifier(jwks.url, cooldown=1 * UNIT)
    assert (await v.verify(rsa_key.token())).sub == "idp-ana"
    assert jwks.requests == 1

    jwks.publish(rsa_key, ec_key)  # a new key, announced after the last fetch
    await asyncio.sleep(1.1 * UNIT)  # past the cooldown, well within the cache's life
    forger = SigningKey("ec")
    random_kids = [forger.token(kid=uuid.uuid4().hex) for _ in range(100)]
    results = await asyncio.gather(
        *(v.verify(t) for t in [*random_kids, ec_key.token()]), return_exceptions=True
    )

    *floods, new = results
    assert not isinstance(new, BaseException), new
    assert new.sub == "idp-ana"  # the new key works without a restart
    assert all(isinstance(r, AuthError) and r.code == "unauthorized" for r in floods)
    assert jwks.requests == 2  # one fetch for 101 unknown kids
    # Within the cooldown, more unknown kids fetch nothing at all.
    assert await refused(v, forger.token(kid="yet-another")) == "unauthorized"
    assert jwks.requests == 2


async def test_a_provider_outage_keeps_cached_keys_and_refuses_unknown_kids(
    jwks: JwksServer, rsa_key: SigningKey, ec_key: SigningKey
) -> None:
    jwks.publish(rsa_key)
    v = verifier(jwks.url, cache_seconds=0.3 * UNIT, cooldown=0)
    assert (await v.verify(rsa_key.token())).sub == "idp-ana"

    jwks.stop()
    await asyncio.sleep(0.4 * UNIT)  # the cache's time is up: a refresh is due, and fails

    assert (await v.verify(rsa_key.token())).sub == "idp-ana"
    assert await refused(v, ec_key.token()) == "unauthorized"


async def test_an_empty_key_set_is_taken_for_a_broken_answer_not_a_revocation(
    jwks: JwksServer, rsa_key: SigningKey
) -> None:
    jwks.publish(rsa_key)
    v = verifier(jwks.url, cache_seconds=0.3 * UNIT, cooldown=0)
    assert (await v.verify(rsa_key.token())).sub == "idp-ana"

    jwks.publish()  # {"keys": []}
    await asyncio.sleep(0.4 * UNIT)

    assert (await v.verify(rsa_key.token())).sub == "idp-ana"
    assert jwks.requests == 2


async def test_a_provider_down_from_the_start_means_unauthorized(
    jwks: JwksServer, rsa_key: SigningKey
) -> None:
    jwks.stop()
    v = verifier(jwks.url, cooldown=0)
    assert await refused(v, rsa_key.token()) == "unauthorized"


@pytest.mark.parametrize(
    ("given", "named"),
    [
        ({}, ["GATEWAY_JWT_ISSUER", "GATEWAY_JWT_AUDIENCE"]),
        ({"jwt_issuer": ISSUER}, ["GATEWAY_JWT_AUDIENCE"]),
        ({"jwt_audience": AUDIENCE}, ["GATEWAY_JWT_ISSUER"]),
    ],
)
def test_jwks_mode_refuses_to_start_without_issuer_and_audience(
    given: dict[str, Any], named: list[str]
) -> None:
    settings = GatewaySettings(jwks_url="http://127.0.0.1:9/jwks.json", **given)
    with pytest.raises(ConfigurationError) as info:
        create_app(settings)
    for env in named:
        assert env in str(info.value)
    with pytest.raises(ConfigurationError):
        build_verifier(settings)


def test_jwks_mode_refuses_a_url_that_is_not_http() -> None:
    settings = GatewaySettings(
        jwks_url="file:///etc/passwd", jwt_issuer=ISSUER, jwt_audience=AUDIENCE
    )
    with pytest.raises(ConfigurationError, match="GATEWAY_JWKS_URL"):
        build_verifier(settings)


# End to end: the real gateway in JWKS mode, a WebSocket client with a provider's token.


@pytest.fixture
def gateway_overrides(jwks: JwksServer, rsa_key: SigningKey) -> dict[str, Any]:
    jwks.publish(rsa_key)
    return {"jwks_url": jwks.url, "jwt_issuer": ISSUER, "jwt_audience": AUDIENCE}


async def test_a_websocket_client_logs_in_with_a_providers_rs256_token(
    stack: Stack, rsa_key: SigningKey
) -> None:
    register(
        "idp-ana", name="Dr. Ana Provider"
    )  # the directory knows her; the token proves it is her
    client = await WsClient.open(stack.ws_url, rsa_key.token(name="Dr. Ana Provider"))
    try:
        assert client.user is not None
        assert client.user["sub"] == "idp-ana"
        assert client.user["name"] == "Dr. Ana Provider"
        snap = await client.subscribe("s1")
        assert snap["type"] == "snapshot", snap
    finally:
        await client.close()

    # Another audience's token from the same provider: refused, and the connection closes.
    other = await WsClient.open(stack.ws_url, None)
    await other.send({"type": "auth", "id": "a1", "token": rsa_key.token(aud="another-app")})
    reply = await other.until(lambda f: f.get("id") == "a1")
    assert reply["type"] == "error" and reply["code"] == "unauthorized", reply
    with pytest.raises(ConnectionClosed) as closed:
        await asyncio.wait_for(other.conn.recv(), 5 * UNIT)
    assert closed.value.rcvd is not None and closed.value.rcvd.code == 4003
