"""Gateway process settings (env prefix GATEWAY_)."""

from __future__ import annotations

from pydantic_settings import BaseSettings, SettingsConfigDict


class GatewaySettings(BaseSettings):
    model_config = SettingsConfigDict(env_prefix="GATEWAY_")

    host: str = "127.0.0.1"
    port: int = 8080
    # Frames waiting for one client; a client that lets more pile up is closed (4001).
    client_queue: int = 2000
    max_subscriptions: int = 8
    max_frame_bytes: int = 64 * 1024
    snapshot_limit: int = 500
    # uvicorn's WebSocket implementation: "websockets-sansio", "websockets" or "wsproto".
    ws_impl: str = "websockets-sansio"
    # Seconds open connections get to finish after SIGTERM before they are closed (1012).
    drain_seconds: int = 2
    log_level: str = "INFO"
    node_name: str = ""
