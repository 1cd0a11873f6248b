"""The gateway's Starlette app: one lifespan wires Redis, the feed and the fan-out hub."""

from __future__ import annotations

import contextlib
import logging
import os
import socket
from collections import Counter
from collections.abc import AsyncIterator
from typing import Any

from redis.asyncio import Redis
from starlette.applications import Starlette
from starlette.requests import Request
from starlette.responses import FileResponse, JSONResponse, PlainTextResponse, Response
from starlette.routing import Mount, Route, WebSocketRoute
from starlette.staticfiles import StaticFiles
from starlette.websockets import WebSocket

from dynamo.sites import DEMO_TENANTS
from frontend_stub import INDEX_HTML, STATIC_DIR
from gateway.hub import Hub
from gateway.protocol import schema
from gateway.session import Session
from gateway.settings import GatewaySettings
from worklist_cache import CacheSettings, FeedSubscriber, WorklistFeed

log = logging.getLogger("gateway")


class Gateway:
    """Everything the routes share; built by the lifespan, closed by it."""

    def __init__(self, settings: GatewaySettings, cache: CacheSettings) -> None:
        self.settings = settings
        self.cache_settings = cache
        self.node = settings.node_name or f"{socket.gethostname()}:{os.getpid()}"
        self.hub = Hub()
        self.sessions: set[Session] = set()
        self.metrics: Counter[str] = Counter()
        self.redis: Redis = Redis.from_url(cache.redis_url)
        self.feed = WorklistFeed(self.redis, maxlen=cache.feed_maxlen)
        self.subscriber = FeedSubscriber(self.redis, self.hub.on_message, self._on_gap)

    async def _on_gap(self) -> None:
        self.metrics["feed_gaps"] += 1
        log.warning("feed gap: resyncing %d sessions", len(self.sessions))
        for session in list(self.sessions):
            session.resync()

    async def aclose(self) -> None:
        await self.subscriber.aclose()
        await self.redis.aclose()


def create_app(
    settings: GatewaySettings | None = None, cache: CacheSettings | None = None
) -> Starlette:
    settings = settings or GatewaySettings()
    cache = cache or CacheSettings()

    @contextlib.asynccontextmanager
    async def lifespan(app: Starlette) -> AsyncIterator[None]:
        async with contextlib.AsyncExitStack() as stack:
            gw = Gateway(settings, cache)
            stack.push_async_callback(gw.aclose)
            await stack.enter_async_context(gw.subscriber)
            app.state.gw = gw
            log.info("gateway %s ready", gw.node)
            yield

    async def websocket_endpoint(websocket: WebSocket) -> None:
        await Session(websocket.app.state.gw, websocket).run()

    async def healthz(request: Request) -> Response:
        return PlainTextResponse("ok")

    async def readyz(request: Request) -> Response:
        gw: Gateway = request.app.state.gw
        try:
            await gw.redis.ping()
        except Exception:
            return JSONResponse({"ready": False, "redis": False}, status_code=503)
        return JSONResponse({"ready": True, "redis": True})

    async def metrics(request: Request) -> Response:
        gw: Gateway = request.app.state.gw
        lines = [
            f"gateway_connections {len(gw.sessions)}",
            f"gateway_deltas_in_total {gw.hub.deltas_in}",
            f"gateway_frames_out_total {gw.hub.frames_out}",
            *(f"gateway_{name}_total {value}" for name, value in sorted(gw.metrics.items())),
        ]
        return PlainTextResponse("\n".join(lines) + "\n")

    async def tenants(request: Request) -> Response:
        return JSONResponse([t.model_dump(mode="json") for t in DEMO_TENANTS])

    async def protocol_schema(request: Request) -> Response:
        return JSONResponse(schema())

    async def index(request: Request) -> Response:
        # Every other GET lands on the app (deep links, old bookmarks): never a 404.
        return FileResponse(INDEX_HTML, headers={"Cache-Control": "no-cache"})

    routes: list[Any] = [
        WebSocketRoute("/ws", websocket_endpoint),
        Route("/healthz", healthz),
        Route("/readyz", readyz),
        Route("/metrics", metrics),
        Route("/api/tenants", tenants),
        Route("/protocol/schema.json", protocol_schema),
        Mount("/static", StaticFiles(directory=STATIC_DIR), name="static"),
        Route("/{path:path}", index),
    ]
    return Starlette(routes=routes, lifespan=lifespan)
