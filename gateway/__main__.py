"""`python -m gateway`: serve the app with uvicorn (uvloop when available)."""

from __future__ import annotations

import uvicorn

from gateway.app import create_app
from gateway.settings import GatewaySettings
from service.logs import configure_logging


def main() -> None:
    settings = GatewaySettings()
    configure_logging(settings.log_level)
    uvicorn.run(
        create_app(settings),
        host=settings.host,
        port=settings.port,
        ws=settings.ws_impl,
        loop="auto",
        log_config=None,
        access_log=False,
        ws_max_size=settings.max_frame_bytes,
        ws_ping_interval=20.0,
        ws_ping_timeout=20.0,
        timeout_graceful_shutdown=max(1, round(settings.drain_seconds)),
    )


if __name__ == "__main__":
    main()
