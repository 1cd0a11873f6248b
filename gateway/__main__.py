"""`python -m gateway`: serve the app with uvicorn (uvloop when available).

SIGTERM drains instead of cutting: readiness goes false at once (the load balancer
stops sending new connections), open connections are served for `drain_seconds`, then
closed with 1012 so clients reconnect to another node, and the process exits 0. A
second SIGTERM or SIGINT exits at once.
"""

from __future__ import annotations

import asyncio
import logging
import socket
import sys
from types import FrameType

import uvicorn
from starlette.applications import Starlette

from gateway.app import bind, create_app
from gateway.collector import settle
from gateway.exceptions import ConfigurationError
from gateway.serverproto import ws_protocol
from gateway.settings import GatewaySettings
from service.logs import configure_logging

log = logging.getLogger("gateway")


class DrainingServer(uvicorn.Server):
    def __init__(self, config: uvicorn.Config, app: Starlette) -> None:
        super().__init__(config)
        self._app = app
        self._drain: asyncio.Task[None] | None = None

    async def startup(self, sockets: list[socket.socket] | None = None) -> None:
        await super().startup(sockets)
        if self.started:
            # What starting made lives as long as the process: no collection walks it.
            log.info("gateway settled: %d objects out of the collector's reach", settle())

    def handle_exit(self, sig: int, frame: FrameType | None) -> None:
        gw = getattr(self._app.state, "gw", None)
        if self._drain is not None or gw is None or not self.started:
            super().handle_exit(sig, frame)
            return
        loop = asyncio.get_event_loop()
        self._drain = loop.create_task(self._drain_then_exit(gw))

    async def _drain_then_exit(self, gw: object) -> None:
        try:
            await gw.drain()  # type: ignore[attr-defined]
        finally:
            self.should_exit = True


def main() -> int:
    settings = GatewaySettings()
    configure_logging(settings.log_level)
    try:
        app = create_app(settings)
    except ConfigurationError as exc:
        log.error("gateway not started: %s", exc)
        print(f"gateway not started: {exc}", file=sys.stderr)
        return 2
    config = uvicorn.Config(
        app,
        host=settings.host,
        port=settings.port,
        ws=ws_protocol(settings.ws_impl),  # websockets-sansio: its leaner subclass
        loop="auto",
        log_config=None,
        access_log=False,
        # Nothing reads the client's address or scheme, so no proxy-headers middleware
        # (its coroutine frame stayed on every connection's stack: about 0.3 KB each).
        proxy_headers=False,
        # Frames up to 4x the limit reach the app, which answers `too_large` before it
        # closes (1009); bigger ones are cut by the protocol layer (1009, no error frame).
        ws_max_size=4 * settings.max_frame_bytes,
        ws_ping_interval=20.0,
        ws_ping_timeout=20.0,
        timeout_graceful_shutdown=5,
    )
    DrainingServer(config, app).run(sockets=[bind(settings)])
    return 0


if __name__ == "__main__":
    sys.exit(main())
