"""Where Redis is, how much history to keep and how much one snapshot may read (env prefix
CACHE_, plus REDIS_URL and RELAY_CLOSED_RETENTION_HOURS)."""

from __future__ import annotations

from typing import Literal

from pydantic import AliasChoices, Field
from pydantic_settings import BaseSettings, SettingsConfigDict


class CacheSettings(BaseSettings):
    model_config = SettingsConfigDict(env_prefix="CACHE_", populate_by_name=True)

    redis_url: str = Field(
        default="redis://127.0.0.1:6379/0",
        validation_alias=AliasChoices("REDIS_URL", "CACHE_REDIS_URL", "redis_url"),
    )
    # Approximate length of each tenant's history stream. At a 20x spike of ~100
    # deltas/s per tenant, 100k entries keep well over 10 minutes.
    feed_maxlen: int = 100_000
    # A Redis Cluster: `redis_url` names any one of its nodes, every client is a
    # cluster client, and the gateway subscribes on the node that owns each channel.
    redis_cluster: bool = False
    # "classic" pub/sub, or "sharded" (SPUBLISH/SSUBSCRIBE, Redis 7+) for Redis Cluster,
    # where each tenant's messages then stay on the shard that holds its keys.
    pubsub: Literal["classic", "sharded"] = "classic"
    # Closed exams (FINAL, AMENDED, CANCELLED) stay cached while scheduled within this
    # many hours, then are pruned. It is the rebuild's window (what a rebuild or
    # anti-entropy restores), so it reads the relay's variable: one number, never two.
    closed_retention_hours: float = Field(
        default=48.0,
        gt=0,
        validation_alias=AliasChoices("RELAY_CLOSED_RETENTION_HOURS", "closed_retention_hours"),
    )
    # The most index entries one filtered snapshot walks (most urgent first); past it the
    # snapshot says its `total` is a lower bound (`total_capped`). Views filtered only by
    # state and site never walk more than their row limit.
    snapshot_scan_limit: int = Field(default=5_000, ge=1)

    @property
    def closed_retention_ms(self) -> int:
        return int(self.closed_retention_hours * 3_600_000)
