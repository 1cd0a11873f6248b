"""Who is on the other end: signed, short-lived tokens prove an `Identity`; the
directory says what that person may do (`principal_for` builds the `Principal`).

A token is a JWT with `sub`, the tenant (claim `GATEWAY_TENANT_CLAIM`, default
`tenant`) and `exp`; a roles claim (`GATEWAY_ROLES_CLAIM`, default `roles`) may narrow
the directory's roles, never widen them. Sites, subspecialties, modalities and the
display name come from the directory only: claims of that kind in a token are ignored.
The verifier is pluggable: `SecretVerifier` checks HS256 tokens signed with the
gateway's secret (what the demo's login endpoint issues); `JwksVerifier` checks an OIDC
provider's tokens against its JWKS. Errors carry a stable wire code and never echo the
token.
"""

from __future__ import annotations

import asyncio
import functools
import logging
import time
from collections.abc import Callable
from typing import TYPE_CHECKING, Any, Protocol

import jwt
from jwt.algorithms import has_crypto
from pydantic import BaseModel, ConfigDict, Field, ValidationError

from dynamo.directory.models import Role
from gateway.exceptions import AuthError
from worklist_cache.views import Scope

if TYPE_CHECKING:
    from dynamo.directory.models import Person
    from dynamo.directory.store import DirectoryStore

__all__ = [
    "Authenticator",
    "Identity",
    "JwksVerifier",
    "Principal",
    "Role",
    "SecretVerifier",
    "Verifier",
    "mint_token",
    "principal_for",
]

log = logging.getLogger("gateway.auth")

ALGORITHM = "HS256"
LEEWAY_S = 5


class Principal(BaseModel):
    """The authenticated user of a session. Empty `sites` means every site of the tenant;
    empty `subspecialties` every subspecialty; empty `modalities` every modality."""

    model_config = ConfigDict(frozen=True, extra="ignore")

    sub: str = Field(min_length=1, max_length=128)
    name: str = Field(min_length=1, max_length=128)
    roles: tuple[Role, ...] = Field(min_length=1)
    tenant: str = Field(pattern=r"^[a-z0-9-]{1,40}$")
    sites: tuple[str, ...] = ()
    subspecialties: tuple[str, ...] = ()
    modalities: tuple[str, ...] = ()
    exp: int  # epoch seconds

    def has(self, role: Role) -> bool:
        return role in self.roles

    @property
    def scope(self) -> Scope:
        """What this principal may see (the one rule every path applies)."""
        return _scope(self.tenant, self.sites, self.subspecialties, self.modalities)

    @property
    def expires_at_ms(self) -> int:
        return self.exp * 1000

    def public(self) -> dict[str, Any]:
        """What other users may see of this one (presence)."""
        return {"sub": self.sub, "name": self.name, "roles": [r.value for r in self.roles]}


@functools.lru_cache(maxsize=4096)
def _scope(
    tenant: str,
    sites: tuple[str, ...],
    subspecialties: tuple[str, ...],
    modalities: tuple[str, ...],
) -> Scope:
    """One (immutable) `Scope` per distinct scope, shared by the principals that have it:
    presence's heartbeat and the offer desk ask every session's principal for it."""
    return Scope(tenant, frozenset(sites), frozenset(subspecialties), frozenset(modalities))


class Identity(BaseModel):
    """What a valid token proves: who (`sub` of `tenant`), until when, and the roles the
    token allows (None: the claim is absent, the directory's roles hold)."""

    model_config = ConfigDict(frozen=True)

    sub: str = Field(min_length=1, max_length=128)
    tenant: str = Field(pattern=r"^[a-z0-9-]{1,40}$")
    exp: int  # epoch seconds
    roles: tuple[str, ...] | None = None


class Verifier(Protocol):
    async def verify(self, token: str) -> Identity: ...


def _identity(claims: dict[str, Any], tenant_claim: str, roles_claim: str) -> Identity:
    roles = claims.get(roles_claim)
    if isinstance(roles, str):
        roles = roles.split()
    try:
        return Identity.model_validate(
            {
                "sub": claims.get("sub"),
                "tenant": claims.get(tenant_claim),
                "exp": claims.get("exp"),
                "roles": tuple(str(r) for r in roles)
                if isinstance(roles, list | tuple | set)
                else None,
            }
        )
    except ValidationError as exc:
        fields = ", ".join(".".join(map(str, e["loc"])) for e in exc.errors()[:3])
        raise AuthError("unauthorized", f"token lacks valid claims: {fields}") from None


def principal_for(identity: Identity, person: Person | None) -> Principal:
    """The session's principal: the directory's person (roles, sites, subspecialties),
    for as long as the token lasts. An unknown or inactive person is `unauthorized`;
    a token's roles claim keeps only the directory's roles it also names."""
    if person is None or not person.active:
        raise AuthError("unauthorized", "not an active person of this tenant's directory")
    roles = tuple(person.roles)
    if identity.roles is not None:
        roles = tuple(r for r in roles if r.value in identity.roles)
        if not roles:
            raise AuthError("unauthorized", "the token allows none of this person's roles")
    return Principal(
        sub=person.sub,
        name=person.name,
        roles=roles,
        tenant=person.tenant,
        sites=person.sites,
        subspecialties=person.subspecialties,
        modalities=person.modalities,
        exp=identity.exp,
    )


def _decode_error(exc: jwt.PyJWTError) -> AuthError:
    if isinstance(exc, jwt.ExpiredSignatureError):
        return AuthError("token_expired", "the token has expired: log in again")
    return AuthError("unauthorized", "the token is not valid")


class Authenticator:
    """A token's identity, then the directory's person: the one way every path (the
    WebSocket's `auth`, the HTTP API) turns a bearer token into a `Principal`."""

    def __init__(self, verifier: Verifier, directory: DirectoryStore) -> None:
        self.verifier = verifier
        self.directory = directory
        # (tenant, sub) -> the directory read under way: concurrent logins of one
        # person (a reconnect storm: every tab of every user at once) share one read.
        self._reads: dict[tuple[str, str], asyncio.Future[Person | None]] = {}

    async def authenticate(self, token: str) -> tuple[Identity, Principal]:
        identity = await self.verifier.verify(token)
        return identity, await self.principal(identity)

    async def principal(self, identity: Identity) -> Principal:
        """The principal as the directory has it now (a live session's re-check)."""
        person = await self._person(identity.tenant, identity.sub)
        return principal_for(identity, person)

    async def _person(self, tenant: str, sub: str) -> Person | None:
        """The directory's person, read once for every caller that asks while a read of
        the same person is under way; a caller that comes after it ends reads afresh, so
        nothing is cached beyond one read's time."""
        key = (tenant, sub)
        read = self._reads.get(key)
        if read is None:
            read = asyncio.ensure_future(self.directory.person(tenant, sub))
            self._reads[key] = read
            read.add_done_callback(lambda done: self._read_done(key, done))
        # One caller going away (a closed socket) does not cancel the others' read.
        return await asyncio.shield(read)

    def _read_done(self, key: tuple[str, str], read: asyncio.Future[Person | None]) -> None:
        if self._reads.get(key) is read:
            del self._reads[key]
        if not read.cancelled():
            read.exception()  # retrieved: every caller may have gone; each one that
            # awaited it got the exception already


class SecretVerifier:
    """HS256 tokens signed with a shared secret."""

    def __init__(
        self,
        secret: str,
        *,
        audience: str | None = None,
        tenant_claim: str = "tenant",
        roles_claim: str = "roles",
    ) -> None:
        self._claims = (tenant_claim, roles_claim)
        if len(secret) < 32:
            raise ValueError("the signing secret must be at least 32 characters")
        self._secret = secret
        self._audience = audience

    async def verify(self, token: str) -> Identity:
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
        return _identity(claims, *self._claims)


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
        tenant_claim: str = "tenant",
        roles_claim: str = "roles",
    ) -> None:
        self._claims = (tenant_claim, roles_claim)
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

    async def verify(self, token: str) -> Identity:
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
        return _identity(claims, *self._claims)

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
