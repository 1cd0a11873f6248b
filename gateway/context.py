"""The resources every connection and route shares, built once per process by the
app's lifespan and closed by it: settings, the token verifier, Redis (feed, pub/sub,
presence), DynamoDB (store, claims, reviews), the fan-out hub, the supervised background
tasks (housekeeping: token expiry and claim renewal) and the drain."""

from __future__ import annotations

import asyncio
import logging
import os
import secrets
import socket
from collections import Counter
from typing import TYPE_CHECKING, Any
from urllib.parse import urlsplit

import orjson
from redis.asyncio import Redis
from redis.asyncio.cluster import RedisCluster
from starlette.websockets import WebSocket

from dynamo.claims import Claims
from dynamo.directory import DirectoryStore
from dynamo.exceptions import StoreError
from dynamo.models import now_ms
from dynamo.review import ReviewStore
from dynamo.settings import DynamoSettings
from dynamo.store import ExamStore
from gateway.auth import Authenticator, JwksVerifier, SecretVerifier, Verifier
from gateway.claimgate import ClaimGate
from gateway.collector import Pauses
from gateway.exceptions import ConfigurationError
from gateway.handlers import claiming, worklists
from gateway.handlers.reviewing import ReviewBoard
from gateway.hub import Hub
from gateway.offers import OfferDesk
from gateway.orchestrate import Orchestrator
from gateway.presence import Presence
from gateway.protocol import CloseCode
from gateway.settings import GatewaySettings
from gateway.workload import WorkloadBoard
from service.supervise import Supervisor
from worklist_cache import CacheSettings, FeedSubscriber, WorklistFeed, connect, keys
from worklist_cache.connection import Client
from worklist_cache.shards import ClusterSubscriber
from worklist_cache.subscriber import Subscriber
from worklist_cache.views import HidingHeld

if TYPE_CHECKING:
    from gateway.session import Session

log = logging.getLogger("gateway")

# A tenant not in the registry (no exam yet) is looked up again after this many seconds:
# its first exam may have come since, and an empty list is then no longer the truth.
REGISTRY_MISS_S = 1.0


def bind(settings: GatewaySettings) -> socket.socket:
    """The listening socket, with `send_buffer_bytes` as every connection's kernel send
    buffer (accepted sockets inherit it): what a client that stops reading can absorb
    before the gateway notices is then this plus `client_queue_bytes`."""
    sock = socket.socket(socket.AF_INET6 if ":" in settings.host else socket.AF_INET)
    sock.setsockopt(socket.SOL_SOCKET, socket.SO_REUSEADDR, 1)
    if settings.send_buffer_bytes:
        sock.setsockopt(socket.SOL_SOCKET, socket.SO_SNDBUF, settings.send_buffer_bytes)
    sock.bind((settings.host, settings.port))
    sock.set_inheritable(True)
    return sock


def build_verifier(settings: GatewaySettings) -> tuple[Verifier, str]:
    """The token verifier, and the secret the demo login signs with ("" when none)."""
    if settings.jwks_url:
        # Without both, any token the provider signs for any of its clients would do.
        missing = [
            env
            for env, value in (
                ("GATEWAY_JWT_ISSUER", settings.jwt_issuer),
                ("GATEWAY_JWT_AUDIENCE", settings.jwt_audience),
            )
            if not value
        ]
        if missing:
            raise ConfigurationError(
                f"GATEWAY_JWKS_URL is set: set {' and '.join(missing)} too (the `iss` and "
                "`aud` the provider puts in this gateway's tokens)"
            )
        try:
            verifier = JwksVerifier(
                settings.jwks_url,
                audience=settings.jwt_audience,
                issuer=settings.jwt_issuer,
                cache_seconds=settings.jwks_cache_seconds,
                cooldown_seconds=settings.jwks_cooldown_seconds,
                tenant_claim=settings.tenant_claim,
                roles_claim=settings.roles_claim,
            )
        except ValueError as exc:
            raise ConfigurationError(f"GATEWAY_JWKS_URL: {exc}") from None
        return verifier, ""
    secret = settings.jwt_secret
    if not secret:
        if not settings.demo:
            raise ConfigurationError(
                "no way to verify tokens: set GATEWAY_JWT_SECRET (32+ characters) or "
                "GATEWAY_JWKS_URL, or GATEWAY_DEMO=true for a local demo"
            )
        secret = secrets.token_urlsafe(32)  # a demo's tokens die with the process
    if len(secret) < 32:
        raise ConfigurationError("GATEWAY_JWT_SECRET must be at least 32 characters")
    hs256 = SecretVerifier(
        secret,
        audience=settings.jwt_audience or None,
        tenant_claim=settings.tenant_claim,
        roles_claim=settings.roles_claim,
    )
    return hs256, secret


class Gateway:
    """Everything the routes share; built by the lifespan, closed by it."""

    def __init__(
        self,
        settings: GatewaySettings,
        cache: CacheSettings,
        dynamo: DynamoSettings,
        ddb: Any,
    ) -> None:
        self.settings = settings
        self.node = settings.node_name or f"{socket.gethostname()}:{os.getpid()}"
        self.verifier, self.signing_secret = build_verifier(settings)
        self.hub = Hub(flush_s=settings.flush_ms / 1000, slice_members=settings.fanout_slice)
        self.sessions: set[Session] = set()
        self.metrics: Counter[str] = Counter()
        self.gc_pauses = Pauses()  # installed by the app's lifespan, for /metrics
        # Every long-lived task (housekeeping, presence heartbeat, feed subscriber, its
        # probe) runs under this: a crash is logged, counted and restarted.
        self.supervisor = Supervisor()
        self.redis: Client = connect(cache.redis_url, cluster=cache.redis_cluster)
        sharded = cache.pubsub == "sharded"
        self.feed = WorklistFeed(self.redis, maxlen=cache.feed_maxlen, sharded=sharded)
        # The pub/sub connection must fail loudly, not reconnect on its own: a silent
        # reconnect would hide the messages lost meanwhile. Its own client, no retries.
        self.pubsub_redis: Client | None = None
        self.subscriber: Subscriber
        if isinstance(self.redis, RedisCluster):
            # One such connection per master, to the owner of each channel's slot.
            self.subscriber = ClusterSubscriber(
                self.redis,
                self._on_gap,
                node=self.node,
                sharded=sharded,
                supervisor=self.supervisor,
                probe_interval=settings.pubsub_probe_seconds,
            )
        else:
            self.pubsub_redis = Redis.from_url(cache.redis_url)
            self.subscriber = FeedSubscriber(
                self.pubsub_redis,
                self._on_gap,
                sharded=sharded,
                supervisor=self.supervisor,
                probe_channel=keys.probe_channel(self.node),
                probe_interval=settings.pubsub_probe_seconds,
            )
        self.presence = Presence(
            self.redis, self.subscriber, self.node, sharded=sharded, supervisor=self.supervisor
        )
        self._idle_tenants: dict[str, asyncio.TimerHandle] = {}
        self._unsubscribing: set[asyncio.Task[None]] = set()
        self._registered: set[str] = set()  # tenants with exams (the store's registry)
        self._registry_read_at = -1e9
        self.ddb = ddb
        self.table = dynamo.table
        self.store = ExamStore(ddb, dynamo.table)
        self.claims = Claims(self.store, lease_seconds=dynamo.claim_lease_seconds)
        self.claim_renew_seconds = dynamo.claim_renew_seconds
        self.claim_gate = ClaimGate(self.redis, settings.claim_gate_ms)
        self.reviews = ReviewStore(self.store, lease_seconds=dynamo.claim_lease_seconds)
        self.reviews_board = ReviewBoard(self)
        self.directory = DirectoryStore(self.store)
        self.authenticator = Authenticator(self.verifier, self.directory)
        self.orchestrator = Orchestrator(
            self.redis,
            self.feed,
            self.directory,
            rules_ttl=settings.directory_recheck_seconds,
        )
        self.offers = OfferDesk(self)
        self.workload = WorkloadBoard(self)
        self._directory_tenants: set[str] = set()  # tenants whose notices we hear
        self._rechecks: set[asyncio.Task[None]] = set()
        self.draining = False
        own = {f"http://{settings.host}:{settings.port}", f"http://localhost:{settings.port}"}
        self.origins = own | {o.strip() for o in settings.origins.split(",") if o.strip()}

    async def _on_gap(self) -> None:
        self.metrics["feed_gaps"] += 1
        log.warning("feed gap: resyncing %d sessions", len(self.sessions))
        for session in list(self.sessions):
            session.resync()
        # Presence announcements may have been lost too: every node's mirror is read again.
        self.presence.resync()
        # Directory notices may have been lost with the connection: read them all again.
        self.orchestrator.forget_rules()
        self._spawn_recheck(list(self.sessions))

    # ---- the directory: live changes to who may see what ---------------------------------

    async def watch_directory(self, tenant: str) -> None:
        """Hear the tenant's directory change notices (from its first session on)."""
        if tenant in self._directory_tenants:
            return
        self._directory_tenants.add(tenant)
        try:
            await self.subscriber.subscribe(keys.directory_channel(tenant), self._directory_changed)
        except BaseException:
            self._directory_tenants.discard(tenant)
            raise

    def _directory_changed(self, raw: bytes) -> None:
        try:
            notice = orjson.loads(raw)
            tenant, kind, key = notice["tenant"], notice["kind"], notice["key"]
        except (orjson.JSONDecodeError, KeyError, TypeError):
            log.warning("unreadable directory notice ignored")
            return
        self.metrics["directory_notices"] += 1
        if kind == "rules":
            # The tenant's orchestration rules: read afresh; nobody's scope moved, but a
            # change of `hide_locked` changes what every list of the tenant shows.
            self.orchestrator.forget_rules(tenant)
            task = asyncio.create_task(self._rules_changed(tenant), name="rules-changed")
            self._rechecks.add(task)
            task.add_done_callback(self._rechecks.discard)
            return
        affected = [
            s
            for s in self.sessions
            if s.principal is not None
            and s.principal.tenant == tenant
            and (kind != "person" or s.principal.sub == key)
        ]
        self._spawn_recheck(affected)

    async def _rules_changed(self, tenant: str) -> None:
        try:
            hide = (await self.orchestrator.rules(tenant)).hide_locked
        except StoreError as exc:
            log.warning("reading changed rules failed (%s); the TTL retries", exc.code)
            return
        for session in list(self.sessions):
            p = session.principal
            if p is None or p.tenant != tenant:
                continue
            for sub in list(session.client.subs.values()):
                if isinstance(sub.matcher, HidingHeld) != hide:
                    sub.matcher = worklists.matcher_for(sub.view, p.sub, hide)
                    session.resync_one(sub)
        self.hub.replan(tenant)  # the subscriptions route by their new matchers

    def _spawn_recheck(self, sessions: list[Session]) -> None:
        if not sessions:
            return
        task = asyncio.create_task(self.recheck(sessions), name="directory-recheck")
        self._rechecks.add(task)
        task.add_done_callback(self._rechecks.discard)

    async def recheck(self, sessions: list[Session]) -> None:
        """Read each person of these sessions once, and re-scope their sessions."""
        groups: dict[tuple[str, str], list[Session]] = {}
        for s in sessions:
            if s.principal is not None:
                groups.setdefault((s.principal.tenant, s.principal.sub), []).append(s)
        for (tenant, sub), group in groups.items():
            try:
                person = await self.directory.person(tenant, sub)
            except StoreError as exc:
                log.warning("directory re-check failed (%s); next round retries", exc.code)
                continue
            for s in group:
                s.rescope(person)

    def tenants_idle(self, tenants: list[str]) -> None:
        """The node's last local subscriber of these tenants left: drop their channels
        after `channel_linger_seconds`, unless someone subscribes again meanwhile."""
        loop = asyncio.get_running_loop()
        for tenant in tenants:
            if tenant in self._idle_tenants:
                continue
            self._idle_tenants[tenant] = loop.call_later(
                self.settings.channel_linger_seconds, self._drop_channel, tenant
            )

    def tenant_active(self, tenant: str) -> None:
        handle = self._idle_tenants.pop(tenant, None)
        if handle is not None:
            handle.cancel()

    def _drop_channel(self, tenant: str) -> None:
        self._idle_tenants.pop(tenant, None)
        if self.hub.has_clients(tenant):
            return
        channel = keys.channel(tenant)
        task = asyncio.create_task(self.subscriber.unsubscribe(channel), name="unsubscribe")
        self._unsubscribing.add(task)
        task.add_done_callback(self._unsubscribing.discard)

    async def tenant_ready(self, tenant: str) -> bool:
        """Whether a tenant's cache may serve snapshots: it was rebuilt from DynamoDB in
        this Redis, or the tenant has never had an exam (an empty list is the truth).

        A tenant with exams whose cache is not built (Redis lost its data, or a rebuild
        runs) would show an empty or old list: the caller answers `unavailable`, and the
        worker is asked to build it.
        """
        state = await self.feed.rebuild_state(tenant)
        if state == "built":
            return True
        if state == "absent":
            # A tenant once registered stays so; one not seen yet may have had its first
            # exam since the last read: the registry is read again before an empty list
            # is served as the truth (at most once per `REGISTRY_MISS_S`).
            now = asyncio.get_running_loop().time()
            if tenant not in self._registered and now - self._registry_read_at > REGISTRY_MISS_S:
                self._registered = set((await self.store.tenants())[0])
                self._registry_read_at = now
            if tenant not in self._registered:
                return True
        await self.feed.request_build(tenant)
        return False

    def origin_allowed(self, websocket: WebSocket) -> bool:
        origin = websocket.headers.get("origin")
        if origin is None:
            return True  # not a browser: browsers always send Origin on a WebSocket
        host = websocket.headers.get("host", "")
        return origin in self.origins or urlsplit(origin).netloc == host

    async def drain(self) -> None:
        """Readiness goes false at once; after the drain period every open connection
        is told to reconnect elsewhere (1012)."""
        self.draining = True
        log.info("draining %d sessions for %.1fs", len(self.sessions), self.settings.drain_seconds)
        await asyncio.sleep(self.settings.drain_seconds)
        for session in list(self.sessions):
            session.request_close(CloseCode.RESTARTING, "server restarting: reconnect")
        deadline = asyncio.get_running_loop().time() + 5
        while self.sessions and asyncio.get_running_loop().time() < deadline:  # noqa: ASYNC110
            await asyncio.sleep(0.02)

    async def housekeeping(self) -> None:
        """One loop for every session: expired tokens end their sessions, and live
        sessions' claims are renewed every `claim_renew_seconds`."""
        loop = asyncio.get_running_loop()
        last_renewal = last_recheck = loop.time()
        while True:
            await asyncio.sleep(0.25)
            now = now_ms()
            for session in [s for s in self.sessions if s.check_at <= now]:
                session.check_expiry(now)
            if loop.time() - last_recheck >= self.settings.directory_recheck_seconds:
                last_recheck = loop.time()
                self._spawn_recheck(list(self.sessions))
            if loop.time() - last_renewal >= self.claim_renew_seconds:
                last_renewal = loop.time()
                holders = [s for s in self.sessions if s.claims]
                for session in holders:
                    session.spawn(claiming.renew_session(session), "ws-renew")

    @property
    def healthy(self) -> bool:
        """Every background task runs and pub/sub delivers (the probe came back)."""
        return self.supervisor.healthy and not self.subscriber.stalled

    async def aclose(self) -> None:
        for handle in self._idle_tenants.values():
            handle.cancel()
        for task in list(self._rechecks):
            task.cancel()
        await self.supervisor.aclose()
        await self.presence.aclose()
        await self.subscriber.aclose()
        if self.pubsub_redis is not None:
            await self.pubsub_redis.aclose()
        await self.redis.aclose()
