"""The audit package's errors.

AuditError
 +-- LeaseLost        another worker reads the shard now; this one stops reading it
 +-- MigrationError   a schema file failed or the database is newer than this code
"""

from __future__ import annotations


class AuditError(Exception):
    """Root of the audit package's errors."""


class LeaseLost(AuditError):
    def __init__(self, shard_id: str) -> None:
        super().__init__(f"lease on shard {shard_id} lost")
        self.shard_id = shard_id


class MigrationError(AuditError):
    def __init__(self, version: int, reason: str) -> None:
        super().__init__(f"migration {version:04d}: {reason}")
        self.version = version
        self.reason = reason
