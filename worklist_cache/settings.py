"""Where Redis is and how much feed history to keep (env prefix CACHE_, plus REDIS_URL)."""

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
    # "classic" pub/sub, or "sharded" (SPUBLISH/SSUBSCRIBE, Redis 7+) for Redis Cluster,
    # where each tenant's messages then stay on the shard that holds its keys.
    pubsub: Literal["classic", "sharded"] = "classic"
