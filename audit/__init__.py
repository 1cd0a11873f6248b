"""The audit trail: a second consumer of the table's stream, writing every exam and
peer-review change to PostgreSQL append-only and idempotently, with its own shard
leases and checkpoints; and the reports built on it.

    changes.py        stream record -> rows (what changed, who, when; no patient data)
    writer.py         one batch -> one transaction (rows + checkpoint): worker and Lambda
    consumer.py       the shard reader (discovery, lineage, leases, retry while PG is away)
    worker.py         `python -m audit`
    lambda_handler.py `audit.lambda_handler.handler`
    migrate.py        versioned SQL files in migrations/
    reports.py        the reports (SQL), CSV
    cli.py            `python -m audit.cli exam <accession> --tenant T`
"""

from __future__ import annotations

from audit.consumer import AuditConsumer, ConsumerMetrics
from audit.exceptions import AuditError, LeaseLost, MigrationError
from audit.settings import AuditSettings
from audit.writer import BatchResult, ShardPosition, write_batch

__all__ = [
    "AuditConsumer",
    "AuditError",
    "AuditSettings",
    "BatchResult",
    "ConsumerMetrics",
    "LeaseLost",
    "MigrationError",
    "ShardPosition",
    "write_batch",
]
