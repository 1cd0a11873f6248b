"""Where DynamoDB is. Shared by every process that talks to it (env prefix DYNAMO_)."""

from __future__ import annotations

from pydantic_settings import BaseSettings, SettingsConfigDict


class DynamoSettings(BaseSettings):
    model_config = SettingsConfigDict(env_prefix="DYNAMO_")

    # DynamoDB Local by default; set to "" to talk to AWS's regional endpoint.
    endpoint_url: str = "http://127.0.0.1:8000"
    region: str = "us-east-1"
    table: str = "ris-worklist"
    # DynamoDB Local accepts any credentials; on AWS leave these empty and let the
    # default chain (role, environment) supply them.
    access_key_id: str = "local"
    secret_access_key: str = "local"
    # A claim's lease, and how often a live session renews it.
    claim_lease_seconds: float = 90.0
    claim_renew_seconds: float = 30.0

    @property
    def is_local(self) -> bool:
        return bool(self.endpoint_url)
