"""The audit consumer's settings (env prefix AUDIT_; `DATABASE_URL` is honoured too)."""

from __future__ import annotations

from pydantic import AliasChoices, Field
from pydantic_settings import BaseSettings, SettingsConfigDict


class AuditSettings(BaseSettings):
    model_config = SettingsConfigDict(env_prefix="AUDIT_")

    # The PostgreSQL the audit is written to (AUDIT_DATABASE_URL wins over DATABASE_URL).
    database_url: str = Field(
        default="postgresql://postgres@127.0.0.1:5432/postgres",
        validation_alias=AliasChoices("AUDIT_DATABASE_URL", "DATABASE_URL"),
    )
    # Connections the worker (and the gateway's report routes) keep open.
    pool_size: int = 4
    # This consumer's name in the shard table: consumers of different names each read
    # the whole stream; workers of one name share it by lease.
    consumer: str = "audit"
    # This worker's name in shard leases; host:pid when empty.
    node_name: str = ""
    # Pause after an empty GetRecords. The audit is not on the live path: a slower poll
    # leaves more of the shard's read budget to the cache relay.
    poll_interval: float = 0.5
    discover_interval: float = 10.0
    lease_seconds: float = 30.0
    batch_limit: int = 1000
    # Longest pause between two attempts to write a batch while PostgreSQL is away.
    retry_max_seconds: float = 10.0
    # Where the worker serves /metrics (0: no listener).
    metrics_host: str = "127.0.0.1"
    metrics_port: int = 0
    # Reports' day boundaries: each tenant's time zone ("northwind=America/New_York,..."),
    # and the zone of tenants not named.
    tenant_timezones: str = ""
    default_timezone: str = "UTC"
    log_level: str = "INFO"

    def timezone_of(self, tenant: str) -> str:
        for pair in self.tenant_timezones.split(","):
            name, _, zone = pair.partition("=")
            if name.strip() == tenant and zone.strip():
                return zone.strip()
        return self.default_timezone
