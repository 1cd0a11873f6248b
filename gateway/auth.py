"""Who is on the other end: signed, short-lived tokens and the principal they name.

A token is a JWT with `sub`, `name`, `roles`, `tenant`, `sites`, `subspecialties` and
`exp`. The verifier is pluggable: `SecretVerifier` checks HS256 tokens signed with the
gateway's secret (what the demo's login endpoint issues); `JwksVerifier` checks an OIDC
provider's tokens against its JWKS. Errors carry a stable wire code and never echo the
token.
"""

from __future__ import annotations

import asyncio
import time
from enum import StrEnum
from typing import Any, Protocol

import jwt
from pydantic import BaseModel, ConfigDict, Field, ValidationError

from worklist_cache.views import Scope

__all__ = [
    "AuthError",
    "JwksVerifier",
    "Principal",
    "Role",
    "SecretVerifier",
    "Verifier",
    "mint_token",
]

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


class AuthError(Exception):
    def __init__(self, code: str, reason: str) -> None:
        super().__init__(reason)
        self.code = code  # "unauthorized" | "token_expired"
        self.reason = reason


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
    """An OIDC provider's RS256/ES256 tokens, keys fetched (and cached) from its JWKS."""

    def __init__(self, jwks_url: str, *, audience: str | None, issuer: str | None) -> None:
        self._client = jwt.PyJWKClient(jwks_url, cache_keys=True, lifespan=600)
        self._audience = audience
        self._issuer = issuer

    async def verify(self, token: str) -> Principal:
        try:
            key = await asyncio.to_thread(self._client.get_signing_key_from_jwt, token)
            claims = jwt.decode(
                token,
                key.key,
                algorithms=["RS256", "ES256"],
                audience=self._audience,
                issuer=self._issuer,
                leeway=LEEWAY_S,
                options={"require": ["exp", "sub"], "verify_aud": self._audience is not None},
            )
        except jwt.PyJWTError as exc:
            raise _decode_error(exc) from None
        return _principal(claims)


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
