"""The gateway's Starlette app: one lifespan wires the shared resources
(`gateway.context.Gateway`); the routes are the WebSocket, login, health, metrics, the
audit's reports, the admin's API and the page."""

from __future__ import annotations

import asyncio
import contextlib
import importlib.util
import logging
from collections.abc import AsyncIterator, Awaitable, Callable
from pathlib import Path
from typing import Any

from starlette.applications import Starlette
from starlette.requests import Request
from starlette.responses import FileResponse, JSONResponse, PlainTextResponse, Response
from starlette.routing import Match, Mount, Route, WebSocketRoute
from starlette.staticfiles import StaticFiles
from starlette.types import Receive, Scope, Send
from starlette.websockets import WebSocket

from audit.settings import AuditSettings
from dynamo.client import dynamodb_client
from dynamo.review import radpeer_table
from dynamo.settings import DynamoSettings
from gateway import admin, reports
from gateway.auth import Role, mint_token
from gateway.context import Gateway, bind, build_verifier
from gateway.exceptions import AuthError, ConfigurationError
from gateway.protocol import CloseCode, schema
from gateway.session import Session
from gateway.settings import GatewaySettings
from gateway.wire import SEND_KEY
from worklist_cache import CacheSettings

__all__ = ["bind", "build_verifier", "create_app"]

log = logging.getLogger("gateway")


def _static_dir() -> Path:
    """The page's files (the `frontend_stub` package's `static/`), found without
    importing that package: the gateway depends on its files, not its code."""
    spec = importlib.util.find_spec("frontend_stub")
    if spec is None or not spec.submodule_search_locations:
        raise ConfigurationError("the page's files (frontend_stub) are not installed")
    return Path(next(iter(spec.submodule_search_locations))) / "static"


def create_app(
    settings: GatewaySettings | None = None,
    cache: CacheSettings | None = None,
    dynamo: DynamoSettings | None = None,
) -> Starlette:
    settings = settings or GatewaySettings()
    cache = cache or CacheSettings()
    dynamo = dynamo or DynamoSettings()
    build_verifier(settings)  # refuse to start before serving anything
    static_dir = _static_dir()
    index_html = static_dir / "index.html"

    @contextlib.asynccontextmanager
    async def lifespan(app: Starlette) -> AsyncIterator[None]:
        async with contextlib.AsyncExitStack() as stack:
            ddb = await stack.enter_async_context(dynamodb_client(dynamo))
            gw = Gateway(settings, cache, dynamo, ddb)
            stack.push_async_callback(gw.aclose)
            gw.gc_pauses.install()
            stack.callback(gw.gc_pauses.uninstall)
            stack.push_async_callback(audit_pool.aclose)
            await stack.enter_async_context(gw.subscriber)
            await stack.enter_async_context(gw.presence)
            gw.supervisor.start("housekeeping", gw.housekeeping)
            gw.supervisor.start("stat-offers", gw.offers.run)
            gw.supervisor.start("workload-board", gw.workload.run)
            app.state.gw = gw
            log.info("gateway %s ready (demo=%s)", gw.node, settings.demo)
            yield

    async def open_session(websocket: WebSocket) -> Session | None:
        """The session of a new WebSocket, or None when it was refused."""
        gw: Gateway = websocket.app.state.gw
        if gw.draining:
            # 503, not 403: a client must tell "try another node" from "refused".
            gw.metrics["handshakes_refused_draining"] += 1
            refusal = PlainTextResponse(
                "draining: reconnect", status_code=503, headers={"Retry-After": "1"}
            )
            if "websocket.http.response" in websocket.scope.get("extensions", {}):
                await websocket.send_denial_response(refusal)
            else:
                await websocket.close(CloseCode.TRY_AGAIN)
            return None
        if not gw.origin_allowed(websocket):
            gw.metrics["origin_refused"] += 1
            await websocket.close(CloseCode.POLICY)
            return None
        return Session(gw, websocket)

    async def websocket_endpoint(websocket: WebSocket) -> None:
        session = await open_session(websocket)
        if session is not None:
            await session.run()

    async def healthz(request: Request) -> Response:
        return PlainTextResponse("ok")

    async def readyz(request: Request) -> Response:
        gw: Gateway = request.app.state.gw
        checks: dict[str, bool] = {"draining": gw.draining}
        try:
            await asyncio.wait_for(gw.redis.ping(), 1.0)
            checks["redis"] = True
        except Exception:
            checks["redis"] = False
        try:
            await asyncio.wait_for(gw.ddb.describe_table(TableName=gw.table), 1.0)
            checks["dynamodb"] = True
        except Exception:
            checks["dynamodb"] = False
        checks["relay"] = await gw.feed.relay_alive()
        checks["tasks"] = gw.supervisor.healthy
        checks["pubsub"] = not gw.subscriber.stalled
        ready = all(v for k, v in checks.items() if k != "draining") and not gw.draining
        return JSONResponse({"ready": ready, **checks}, status_code=200 if ready else 503)

    async def metrics(request: Request) -> Response:
        gw: Gateway = request.app.state.gw
        depth = sum(s.client.queue.qsize() for s in gw.sessions)
        lines = [
            "# TYPE gateway_connections gauge",
            f"gateway_connections {len(gw.sessions)}",
            f"gateway_queued_frames {depth}",
            f"gateway_deltas_in_total {gw.hub.deltas_in}",
            f"gateway_frames_out_total {gw.hub.frames_out}",
            f"gateway_flush_windows_stretched_total {gw.hub.stretched}",
            f"gateway_feed_lateness_seconds {gw.hub.lateness:.6f}",
            f"gateway_feed_late_messages_total {gw.hub.late_messages}",
            f"gateway_draining {int(gw.draining)}",
            f"gateway_pubsub_channels {len(gw.subscriber.channels)}",
            f"gateway_pubsub_probe_failures_total {gw.subscriber.probe_failures}",
            f"gateway_feed_gaps_confirmed_total {gw.subscriber.gaps}",
            f"gateway_healthy {int(gw.healthy)}",
            *(
                f'gateway_task_failures_total{{task="{name}"}} {value}'
                for name, value in sorted(gw.supervisor.failures.items())
            ),
            *(f"gateway_{name}_total {value}" for name, value in sorted(gw.metrics.items())),
            *gw.gc_pauses.lines(),
        ]
        return PlainTextResponse("\n".join(lines) + "\n")

    async def tenants(request: Request) -> Response:
        """The directory's active tenants and their active sites."""
        gw: Gateway = request.app.state.gw
        out = []
        for t in await gw.directory.tenants():
            if not t.active:
                continue
            sites = [
                {"code": s.code, "name": s.name, "kind": s.kind}
                for s in await gw.directory.sites(t.code)
                if s.active
            ]
            out.append({"code": t.code, "name": t.name, "time_zone": t.time_zone, "sites": sites})
        return JSONResponse(out)

    def _person_json(p: Any) -> dict[str, Any]:
        data: dict[str, Any] = p.content()
        return data

    async def demo_users(request: Request) -> Response:
        """Demo mode only: who the login screen offers (the directory's active people)."""
        gw: Gateway = request.app.state.gw
        if not settings.demo:
            return JSONResponse([], status_code=200)
        people = [
            _person_json(p)
            for t in await gw.directory.tenants()
            for p in await gw.directory.people(t.code)
            if p.active
        ]
        return JSONResponse(people)

    async def people(request: Request) -> Response:
        """The caller's tenant's active people (a coordinator's reviewer picker, an
        admin's page): bearer token of a coordinator or admin."""
        gw: Gateway = request.app.state.gw
        scheme, _, token = request.headers.get("authorization", "").partition(" ")
        if scheme.lower() != "bearer" or not token:
            return JSONResponse(
                {"code": "unauthorized", "message": "a bearer token is required"}, status_code=401
            )
        try:
            _, who = await gw.authenticator.authenticate(token.strip())
        except AuthError as exc:
            return JSONResponse({"code": exc.code, "message": exc.reason}, status_code=401)
        if not (who.has(Role.COORDINATOR) or who.has(Role.ADMIN)):
            return JSONResponse(
                {"code": "forbidden", "message": "for coordinators and admins"}, status_code=403
            )
        found = [_person_json(p) for p in await gw.directory.people(who.tenant) if p.active]
        return JSONResponse(found)

    async def login(request: Request) -> Response:
        """Demo mode only: a token for one of the directory's people (the demo's are
        seed data: `make demo` imports them like an operator would)."""
        gw: Gateway = request.app.state.gw
        if not settings.demo or not gw.signing_secret:
            return JSONResponse(
                {"code": "forbidden", "message": "log in through your identity provider"},
                status_code=403,
            )
        user = None
        try:
            body = await request.json()
            sub = str(body["user"])
            for t in await gw.directory.tenants():
                user = user or await gw.directory.person(t.code, sub)
            if user is None or not user.active:
                raise LookupError(sub)
        except Exception:
            return JSONResponse(
                {"code": "bad_request", "message": 'send {"user": <a demo user\'s sub>}'},
                status_code=400,
            )
        token = mint_token(
            gw.signing_secret,
            sub=user.sub,
            name=user.name,
            tenant=user.tenant,
            roles=[r.value for r in user.roles],
            ttl_s=settings.token_ttl,
        )
        return JSONResponse({"token": token, "user": _person_json(user)})

    async def radpeer(request: Request) -> Response:
        return JSONResponse(radpeer_table(), headers={"Cache-Control": "max-age=3600"})

    async def protocol_schema(request: Request) -> Response:
        return JSONResponse(schema())

    async def index(request: Request) -> Response:
        # Every other GET lands on the app (deep links, old bookmarks): never a 404.
        return FileResponse(index_html, headers={"Cache-Control": "no-cache"})

    audit_pool = reports.LazyPool(AuditSettings())
    ws_route = WebSocketRoute("/ws", websocket_endpoint)
    routes: list[Any] = [
        ws_route,
        Route("/healthz", healthz),
        Route("/readyz", readyz),
        Route("/metrics", metrics),
        Route("/api/tenants", tenants),
        Route("/api/demo-users", demo_users),
        Route("/api/people", people),
        Route("/api/login", login, methods=["POST"]),
        Route("/protocol/schema.json", protocol_schema),
        Route("/api/radpeer", radpeer),
        *reports.routes(audit_pool),
        *admin.routes(),
        Mount("/static", StaticFiles(directory=static_dir), name="static"),
        Route("/{path:path}", index),
    ]
    return GatewayApp(ws_route, open_session, routes=routes, lifespan=lifespan)


class GatewayApp(Starlette):
    """The Starlette app, which takes a WebSocket to `/ws` straight to its session.

    It records the server's own `send` of each WebSocket (for writing frames straight to
    its transport, `gateway.wire`), and runs a `/ws` session right here rather than
    through the middleware stack, the router and the route's wrapper: each of their
    coroutine frames would stay on every open connection's stack for its whole life.
    (Starlette's error and exception middleware do nothing for a WebSocket whose
    endpoint raises no `WebSocketException`; the session raises none.)
    """

    def __init__(
        self,
        ws_route: WebSocketRoute,
        open_session: Callable[[WebSocket], Awaitable[Session | None]],
        **kwargs: Any,
    ) -> None:
        super().__init__(**kwargs)
        self._ws_route = ws_route
        self._open_session = open_session

    async def __call__(self, scope: Scope, receive: Receive, send: Send) -> None:
        if scope["type"] == "websocket":
            scope[SEND_KEY] = send
            match, child = self._ws_route.matches(scope)
            if match is Match.FULL:
                scope["app"] = self
                scope.update(child)
                session = await self._open_session(WebSocket(scope, receive, send))
                if session is not None:
                    await session.run()
                return
        await super().__call__(scope, receive, send)
