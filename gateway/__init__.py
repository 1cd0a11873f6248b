"""The WebSocket gateway: sessions, live filtered worklists, fan-out."""

from __future__ import annotations

from gateway.app import create_app
from gateway.settings import GatewaySettings

__all__ = ["GatewaySettings", "create_app"]
