"""Gateway process settings (env prefix GATEWAY_)."""

from __future__ import annotations

from pydantic import Field
from pydantic_settings import BaseSettings, SettingsConfigDict


class GatewaySettings(BaseSettings):
    model_config = SettingsConfigDict(env_prefix="GATEWAY_")

    host: str = "127.0.0.1"
    port: int = 8080
    # Demo mode: the login endpoint issues tokens for the demo users, signed with a
    # random per-run secret unless `jwt_secret` is given. Never on in production.
    demo: bool = False
    # HS256 signing secret (at least 32 characters) ...
    jwt_secret: str = ""
    # ... or an OIDC provider's JWKS URL (RS256/ES256); then the tokens' issuer and
    # audience are required. The audience is also checked on HS256 tokens when set.
    jwks_url: str = ""
    jwt_audience: str = ""
    jwt_issuer: str = ""
    # JWKS mode: seconds the provider's key set is kept before it is fetched again, and
    # the least seconds between two fetches (an unknown `kid` asks for one).
    jwks_cache_seconds: float = 300.0
    jwks_cooldown_seconds: float = 30.0
    # The token claims naming the tenant and the roles (Okta, Entra ID and Keycloak
    # differ). The roles claim may narrow the directory's roles, never widen them; a
    # token without it gets the directory's roles.
    tenant_claim: str = "tenant"
    roles_claim: str = "roles"
    # Seconds between re-reads of every live session's person in the directory (the
    # fallback behind the live change notices: a lost notice is caught within this).
    directory_recheck_seconds: float = 60.0
    # Lifetime of the tokens the demo login issues (seconds).
    token_ttl: int = 3600
    # Browser origins allowed to open a WebSocket, comma-separated. The gateway's own
    # origin is always allowed; clients that send no Origin (not browsers) are too.
    origins: str = ""
    # Seconds a new connection has to send its `auth` frame.
    auth_timeout: float = 5.0
    # Requests per second per connection, and the burst allowed above that.
    rate_limit: float = 20.0
    rate_burst: int = 40
    # Frames waiting for one client; a client that lets more pile up is closed (4001).
    client_queue: int = 2000
    # ... and the same bound in bytes (characters) of frames waiting for one client.
    client_queue_bytes: int = 1024 * 1024
    # The kernel's send buffer per connection (SO_SNDBUF, bytes; 0 = the kernel's own
    # autotuning, which lets a client that stopped reading absorb megabytes unseen).
    send_buffer_bytes: int = 256 * 1024
    # Seconds a closing connection may take to accept its close frame (a client that
    # stopped reading gets it when it reads again); then the socket is dropped.
    close_timeout: float = 15.0
    # Milliseconds a delta that follows another this closely waits, with those after
    # it, to go out to each client in one write (a `batch`); a delta after a quiet
    # window goes out at once. 0 writes every delta as it arrives.
    flush_ms: float = Field(10.0, ge=0)
    # Subscriptions one delta is fanned out to per turn of the event loop: between two
    # slices, requests (a claim), replies and pings run, instead of waiting behind a
    # fan-out to every client (0: the whole fan-out in one turn). 32, not 128: a claim
    # awaits a dozen times on its way (Redis, DynamoDB), each behind at most one slice;
    # `make bench`'s claims under fan-out p99 went from 63-65 ms to 38-49 ms in five of
    # seven runs, with no change in CPU per delivery (16 was no better, and fell behind
    # at 1,000/s).
    fanout_slice: int = Field(32, ge=0)
    # Milliseconds a claim's reservation in Redis keeps concurrent claims of the same
    # exam off DynamoDB (answered `conflict` at once); 0 sends every claim to DynamoDB.
    # Only a courtesy: DynamoDB's conditional write is what guarantees one reader.
    claim_gate_ms: int = 2000
    max_subscriptions: int = 8
    max_frame_bytes: int = 64 * 1024
    snapshot_limit: int = 500
    # uvicorn's WebSocket implementation: "websockets-sansio", "websockets" or "wsproto".
    ws_impl: str = "websockets-sansio"
    # After SIGTERM: seconds of draining (readiness false, open connections still
    # served) before every connection is closed with 1012 and the process exits.
    drain_seconds: float = 2.0
    # Seconds between pub/sub liveness probes (a probe not back within as long again
    # cuts the connection: a gap, resynced like any other; readiness is false meanwhile).
    pubsub_probe_seconds: float = 5.0
    # Seconds a tenant's feed channel stays subscribed after its last local client left.
    channel_linger_seconds: float = 30.0
    log_level: str = "INFO"
    node_name: str = ""
