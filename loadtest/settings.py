"""The locust load test's knobs (env prefix LOADTEST_): where the stack is, and the
shape of the spike. `make loadtest` (`loadtest/spike.py`) sets the first three itself and
picks the shape's defaults (smaller with `--quick`) unless they are given."""

from __future__ import annotations

from pydantic_settings import BaseSettings, SettingsConfigDict

__all__ = ["LoadtestSettings"]


class LoadtestSettings(BaseSettings):
    model_config = SettingsConfigDict(env_prefix="LOADTEST_")

    # The gateway's WebSocket URL, and its signing secret (the users mint their tokens).
    gateway: str = "ws://127.0.0.1:8080/ws"
    jwt_secret: str = ""
    tenant: str = "northwind"
    # Where the HL7 senders connect (hl7_ingest's MLLP listener).
    hl7_host: str = "127.0.0.1"
    hl7_port: int = 2575
    # Users of each kind, for the whole run.
    radiologists: int = 20
    coordinators: int = 2
    reconnectors: int = 10
    hl7_senders: int = 2
    # The spike: `normal_writers` writers for `normal_s` seconds, `spike_factor` times as
    # many for `spike_s`, then normal again for `normal_s`.
    normal_writers: int = 2
    spike_factor: int = 20
    normal_s: int = 30
    spike_s: int = 60
