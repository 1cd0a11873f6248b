"""Who is on the other end: signed, short-lived tokens and the principal they name.

A token is a JWT with `sub`, `name`, `roles`, `tenant`, `sites`, `subspecialties` and
`exp`. The verifier is pluggable: `SecretVerifier` checks HS256 tokens signed with the
gateway's secret (what the demo's login endpoint issues); `JwksVerifier` checks an OIDC
provider's tokens against its JWKS. Errors carry a stable wire code and never echo the
token.
"""

from __future__ import annotations

import asyncio
import logging
import time
from collections.abc import Callable
from enum import StrEnum
from typing import Any, Protocol

import jwt
from jwt.algorithms import has_crypto
from pydantic import BaseModel, ConfigDict, Field, ValidationError

from gateway.exceptions import AuthError
from worklist_cache.views import Scope

__all__ = [
    "JwksVerifier",
    "Principal",
    "Role",
    "SecretVerifier",
    "Verifier",
    "mint_token",
]

log = logging.getLogger("gateway.auth")

ALGORITHM = "HS256"
LEEWAY_S = 5


class Role(StrEnum):
    RADIOLOGIST = "radiologist"
    COORDINATOR = "coordinator"
    ADMIN = "admin"


class Principal(BaseModel):
    """The authenticated user of a session. Empty `sites` means every site of the tenant;
    empty `subspecialties` means every subspecialty."""

    model_config = ConfigDict(frozen=True, extra="ignore")

    sub: str = Field(min_length=1, max_length=128)
    name: str = Field(min_length=1, max_length=128)
    roles: tuple[Role, ...] = Field(min_length=1)
    tenant: str = Field(pattern=r"^[a-z0-9-]{1,40}$")
    sites: tuple[str, ...] = ()
    subspecialties: tuple[str, ...] = ()
    exp: int  # epoch seconds

    def has(self, role: Role) -> bool:
        return role in self.roles

    @property
    def scope(self) -> Scope:
        """What this principal may see (the one rule every path applies)."""
        return Scope(self.tenant, frozenset(self.sites), frozenset(self.subspecialties))

    @property
    def expires_at_ms(self) -> int:
        return self.exp * 1000

    def public(self) -> dict[str, Any]:
        """What other users may see of this one (presence)."""
        return {"sub": self.sub, "name": self.name, "roles": [r.value for r in self.roles]}


class Verifier(Protocol):
    async def verify(self, token: str) -> Principal: ...


def _principal(claims: dict[str, Any]) -> Principal:
    try:
        return Principal.model_validate(claims)
    except ValidationError as exc:
        fields = ", ".join(".".join(map(str, e["loc"])) for e in exc.errors()[:3])
        raise AuthError("unauthorized", f"token lacks valid claims: {fields}") from None


def _decode_error(exc: jwt.PyJWTError) -> AuthError:
    if isinstance(exc, jwt.ExpiredSignatureError):
        return AuthError("token_expired", "the token has expired: log in again")
    return AuthError("unauthorized", "the token is not valid")


class SecretVerifier:
    """HS256 tokens signed with a shared secret."""

    def __init__(self, secret: str, *, audience: str | None = None) -> None:
        if len(secret) < 32:
            raise ValueError("the signing secret must be at least 32 characters")
        self._secret = secret
        self._audience = audience

    async def verify(self, token: str) -> Principal:
        try:
            claims = jwt.decode(
                token,
                self._secret,
                algorithms=[ALGORITHM],
                audience=self._audience,
                leeway=LEEWAY_S,
                options={"require": ["exp", "sub"], "verify_aud": self._audience is not None},
            )
        except jwt.PyJWTError as exc:
            raise _decode_error(exc) from None
        return _principal(claims)


class JwksVerifier:
    """An OIDC provider's RS256/ES256 tokens, checked against the keys of its JWKS.

    The key set is cached and replaced whole on every successful fetch, so a key the
    provider removed stops verifying after the next refresh. A refresh happens when the
    cache is older than `cache_seconds`, and when a token names a `kid` the cache does
    not hold; attempts are at least `cooldown_seconds` apart, so a flood of tokens with
    random kids costs the provider one request per cooldown. A failed fetch keeps the
    keys already held: a provider outage does not log anybody out. Tokens must carry the
    configured `iss` and `aud`.
    """

    ALGORITHMS = ("RS256", "ES256")

    def __init__(
        self,
        jwks_url: str,
        *,
        audience: str,
        issuer: str,
        cache_seconds: float = 300.0,
        cooldown_seconds: float = 30.0,
        fetch_timeout: float = 5.0,
    ) -> None:
        if not audience or not issuer:
            raise ValueError("JWKS mode needs both an issuer and an audience")
        if cache_seconds <= 0 or cooldown_seconds < 0:
            raise ValueError("the key cache must last > 0 s and the cooldown >= 0 s")
        if not has_crypto:
            raise ValueError("RS256/ES256 need the 'cryptography' package (PyJWT[crypto])")
        # Only its fetch is used: http(s) only, no redirects, a timeout. Caching is ours.
        try:
            self._client = jwt.PyJWKClient(jwks_url, cache_jwk_set=False, timeout=fetch_timeout)
        except jwt.PyJWTError as exc:  # e.g. not an http(s) URL
            raise ValueError(str(exc)) from None
        self._url = jwks_url
        self._audience = audience
        self._issuer = issuer
        self._cache_seconds = cache_seconds
        self._cooldown_seconds = cooldown_seconds
        self._keys: dict[str, jwt.PyJWK] = {}
        self._fetched_at: float | None = None  # last successful fetch (monotonic)
        self._attempted_at: float | None = None  # last fetch, successful or not
        self._lock = asyncio.Lock()  # one fetch at a time; waiters reuse its result

    async def verify(self, token: str) -> Principal:
        try:
            header = jwt.get_unverified_header(token)
        except jwt.PyJWTError as exc:
            raise _decode_error(exc) from None
        kid = header.get("kid")
        if not isinstance(kid, str) or not kid:
            raise AuthError("unauthorized", "the token names no signing key (kid)")
        # An expired cache is refreshed before use; while one verify fetches, others
        # whose key is held go on with it rather than queue behind a slow provider.
        if self._expired() and not (kid in self._keys and self._lock.locked()):
            await self._refresh(lambda: not self._expired())
        key = self._keys.get(kid)
        if key is None:
            await self._refresh(lambda: kid in self._keys)
            key = self._keys.get(kid)
        if key is None:
            raise AuthError("unauthorized", "the token is not valid")
        try:
            claims = jwt.decode(
                token,
                key,
                algorithms=list(self.ALGORITHMS),
                audience=self._audience,
                issuer=self._issuer,
                leeway=LEEWAY_S,
                options={"require": ["exp", "sub", "iss", "aud"]},
            )
        except jwt.PyJWTError as exc:
            raise _decode_error(exc) from None
        return _principal(claims)

    def _expired(self) -> bool:
        return self._fetched_at is None or (
            time.monotonic() - self._fetched_at >= self._cache_seconds
        )

    def _cooling_down(self) -> bool:
        return (
            self._attempted_at is not None
            and time.monotonic() - self._attempted_at < self._cooldown_seconds
        )

    async def _refresh(self, satisfied: Callable[[], bool]) -> None:
        """Fetch the key set unless `satisfied()` already holds (another verify fetched
        meanwhile) or the last attempt is within the cooldown. Never raises."""
        async with self._lock:
            if satisfied() or self._cooling_down():
                return
            self._attempted_at = time.monotonic()
            try:
                # urllib blocks: keep it off the event loop.
                data = await asyncio.to_thread(self._client.fetch_data)
                keys = _signing_keys(data)
            except asyncio.CancelledError:
                raise
            except Exception as exc:  # the provider's fault, not the caller's
                log.warning(
                    "JWKS fetch from %s failed, keeping %d keys: %s",
                    self._url,
                    len(self._keys),
                    exc,
                )
                return
            self._keys = keys
            self._fetched_at = time.monotonic()


def _signing_keys(data: Any) -> dict[str, jwt.PyJWK]:
    """The usable signing keys of a JWKS document, by kid (others are skipped)."""
    if not isinstance(data, dict) or not isinstance(data.get("keys"), list):
        raise ValueError("the JWKS is not an object with a list of keys")
    keys: dict[str, jwt.PyJWK] = {}
    for jwk in data["keys"]:
        if not isinstance(jwk, dict) or jwk.get("use", "sig") != "sig":
            continue
        kid = jwk.get("kid")
        if not isinstance(kid, str) or not kid:
            continue
        try:
            key = jwt.PyJWK(jwk)
        except jwt.PyJWTError:
            continue  # a key type or curve we cannot use
        if key.algorithm_name in JwksVerifier.ALGORITHMS:
            keys[kid] = key
    if not keys:
        # Rather a broken answer than a provider that revoked every key at once: keep
        # the keys held (a real rotation publishes the new key next to the old one).
        raise ValueError("the JWKS has no usable RS256/ES256 signing key")
    return keys


def mint_token(
    secret: str,
    *,
    sub: str,
    name: str,
    tenant: str,
    roles: list[str] | tuple[str, ...],
    sites: list[str] | tuple[str, ...] = (),
    subspecialties: list[str] | tuple[str, ...] = (),
    ttl_s: int = 900,
) -> str:
    """An HS256 token for `SecretVerifier` (the demo's login, tests, the benchmark)."""
    now = int(time.time())
    claims = {
        "sub": sub,
        "name": name,
        "tenant": tenant,
        "roles": list(roles),
        "sites": list(sites),
        "subspecialties": list(subspecialties),
        "iat": now,
        "exp": now + ttl_s,
    }
    return jwt.encode(claims, secret, algorithm=ALGORITHM)
