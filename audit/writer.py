"""Write a batch of stream records to PostgreSQL: the one code path of the worker and the
Lambda handler.

One transaction per batch: every row is inserted with ON CONFLICT DO NOTHING, keyed by
the stream record's eventID, so a batch written twice (a retry, a replay, a second
consumer) adds nothing; the projections move only for rows that were new. When the
batch comes from the worker's own shard reader (`position`), the shard's checkpoint
moves in the same transaction, and only while this worker holds the shard's lease
(taken back if it merely ran out and nobody else took it): a worker killed before the
commit leaves neither rows nor checkpoint, one killed after it leaves both.
"""

from __future__ import annotations

from collections.abc import Sequence
from dataclasses import dataclass
from datetime import datetime
from typing import Any

import psycopg

from audit.changes import (
    ExamChange,
    ReviewChange,
    Row,
    StaffSeen,
    StreamRecord,
    parse_record,
    rows_of,
)
from audit.exceptions import LeaseLost

__all__ = ["BatchResult", "ShardPosition", "write_batch"]


@dataclass(frozen=True)
class ShardPosition:
    """Whose checkpoint a batch moves: this worker's lease on one shard of one stream."""

    consumer: str
    stream_arn: str
    shard_id: str
    owner: str
    lease_seconds: float


@dataclass(frozen=True)
class BatchResult:
    records: int
    inserted: int  # rows that were new (0 for a batch already written)
    newest_stream_at: datetime | None


def _insert_sql(table: str, columns: Sequence[str]) -> str:
    cols = ", ".join(columns)
    params = ", ".join(f"%({c})s" for c in columns)
    return f"INSERT INTO {table} ({cols}) VALUES ({params}) ON CONFLICT DO NOTHING"


_CURRENT_EXAM = (
    "site",
    "modality",
    "subspecialty",
    "procedure_code",
    "priority",
    "status",
    "version",
    "removed",
    "claimed_by",
    "reported_by",
    "scheduled_at",
    "completed_at",
    "tat_due_at",
    "updated_at",
)
_CURRENT_REVIEW = (
    "site",
    "modality",
    "subspecialty",
    "source",
    "original_reader",
    "state",
    "reviewer",
    "score",
    "final_score",
    "arbiter",
    "version",
    "removed",
    "updated_at",
)


def _projection_sql(table: str, current: Sequence[str], first: Sequence[str]) -> str:
    """An upsert that commutes: current-state columns follow the highest version,
    milestone columns keep the earliest time (LEAST ignores NULLs)."""
    columns = ("tenant", "accession", *current, *first)
    sets = [
        f"{c} = CASE WHEN EXCLUDED.version > t.version THEN EXCLUDED.{c} ELSE t.{c} END"
        for c in current
        if c != "version"
    ]
    sets += [f"{c} = LEAST(t.{c}, EXCLUDED.{c})" for c in first]
    sets.append("version = GREATEST(t.version, EXCLUDED.version)")
    cols = ", ".join(columns)
    params = ", ".join(f"%({c})s" for c in columns)
    return (
        f"INSERT INTO {table} AS t ({cols}) VALUES ({params})"
        f" ON CONFLICT (tenant, accession) DO UPDATE SET {', '.join(sets)}"
    )


_EXAM_UPSERT = _projection_sql("exam", _CURRENT_EXAM, ("preliminary_at", "final_at"))
_REVIEW_UPSERT = _projection_sql("review", _CURRENT_REVIEW, ("pooled_at", "scored_at", "done_at"))
_STAFF_UPSERT = (
    "INSERT INTO staff (sub, name, seen_at) VALUES (%(sub)s, %(name)s, %(seen_at)s)"
    " ON CONFLICT (sub) DO UPDATE SET"
    " name = CASE WHEN EXCLUDED.seen_at >= staff.seen_at AND EXCLUDED.name IS NOT NULL"
    " THEN EXCLUDED.name ELSE staff.name END,"
    " seen_at = GREATEST(staff.seen_at, EXCLUDED.seen_at)"
)
_READING_UPSERT = (
    "INSERT INTO reading AS r (tenant, accession, reader, site, modality, priority,"
    " claimed_at, preliminary_at, final_at, completed_at, tat_due_at)"
    " VALUES (%(tenant)s, %(accession)s, %(reader)s, %(site)s, %(modality)s, %(priority)s,"
    " %(claimed_at)s, %(preliminary_at)s, %(final_at)s, %(completed_at)s, %(tat_due_at)s)"
    " ON CONFLICT (tenant, accession, reader) DO UPDATE SET"
    " claimed_at = LEAST(r.claimed_at, EXCLUDED.claimed_at),"
    " preliminary_at = LEAST(r.preliminary_at, EXCLUDED.preliminary_at),"
    " final_at = LEAST(r.final_at, EXCLUDED.final_at),"
    " completed_at = COALESCE(EXCLUDED.completed_at, r.completed_at),"
    " tat_due_at = COALESCE(EXCLUDED.tat_due_at, r.tat_due_at),"
    " priority = EXCLUDED.priority"
)
_TAKE_LEASE = (
    "UPDATE consumer_shard SET owner = %(owner)s,"
    " lease_expires_at = now() + make_interval(secs => %(lease)s)"
    " WHERE consumer = %(consumer)s AND stream_arn = %(arn)s AND shard_id = %(shard)s"
    " AND (owner = %(owner)s OR owner IS NULL OR lease_expires_at < now())"
    " RETURNING checkpoint"
)
# The checkpoint only moves forward (numerically: sequence numbers are decimal strings).
_CHECKPOINT = (
    "UPDATE consumer_shard SET"
    " checkpoint = CASE WHEN checkpoint IS NULL OR checkpoint::numeric < %(seq)s::text::numeric"
    " THEN %(seq)s::text ELSE checkpoint END,"
    " last_stream_at = GREATEST(last_stream_at, %(at)s), applied_at = now(),"
    " records_applied = records_applied + %(n)s"
    " WHERE consumer = %(consumer)s AND stream_arn = %(arn)s AND shard_id = %(shard)s"
)


async def take_lease(cur: psycopg.AsyncCursor[Any], position: ShardPosition) -> bool:
    """Take or renew the lease (inside the caller's transaction)."""
    await cur.execute(
        _TAKE_LEASE,
        {
            "owner": position.owner,
            "lease": position.lease_seconds,
            "consumer": position.consumer,
            "arn": position.stream_arn,
            "shard": position.shard_id,
        },
    )
    return cur.rowcount == 1


async def _project(cur: psycopg.AsyncCursor[Any], row: Row) -> None:
    if isinstance(row, ExamChange) and row.current is not None:
        await cur.execute(_EXAM_UPSERT, row.current)
        reading = _reading_of(row)
        if reading is not None:
            await cur.execute(_READING_UPSERT, reading)
    elif isinstance(row, ReviewChange) and row.current is not None:
        await cur.execute(_REVIEW_UPSERT, row.current)


def _reading_of(change: ExamChange) -> dict[str, Any] | None:
    """Claims and signs make the reading rows (who read which exam, when)."""
    if change.action not in ("claim", "reclaim", "sign") or not change.actor:
        return None
    current = change.current or {}
    at = change.changed_at
    return {
        "tenant": change.tenant,
        "accession": change.accession,
        "reader": change.actor,
        "site": change.site,
        "modality": change.modality,
        "priority": current.get("priority"),
        "claimed_at": at if change.action in ("claim", "reclaim") else None,
        "preliminary_at": at
        if change.action == "sign" and change.new_status == "PRELIMINARY"
        else None,
        "final_at": at if change.action == "sign" and change.new_status == "FINAL" else None,
        "completed_at": current.get("completed_at"),
        "tat_due_at": current.get("tat_due_at"),
    }


async def write_batch(
    conn: psycopg.AsyncConnection[Any],
    records: Sequence[dict[str, Any] | StreamRecord],
    position: ShardPosition | None = None,
) -> BatchResult:
    """Write one batch of stream records (either shape) in one transaction.

    With `position`, the shard's checkpoint moves to the batch's last record in the same
    transaction; `LeaseLost` (nothing written) when another worker holds the shard.
    """
    parsed = [r if isinstance(r, StreamRecord) else parse_record(r) for r in records]
    shard = position.shard_id if position else None
    inserted = 0
    newest: datetime | None = None
    async with conn.transaction(), conn.cursor() as cur:
        if position is not None and not await take_lease(cur, position):
            raise LeaseLost(position.shard_id)
        for record in parsed:
            if record.stream_at is not None and (newest is None or record.stream_at > newest):
                newest = record.stream_at
            for row in rows_of(record, shard):
                values = row.values()
                if isinstance(row, StaffSeen):
                    await cur.execute(_STAFF_UPSERT, values)
                    continue
                await cur.execute(_insert_sql(row.table, list(values)), values)
                if cur.rowcount == 1:
                    inserted += 1
                    await _project(cur, row)
        if position is not None and parsed:
            await cur.execute(
                _CHECKPOINT,
                {
                    "seq": parsed[-1].sequence_number,
                    "at": newest,
                    "n": len(parsed),
                    "consumer": position.consumer,
                    "arn": position.stream_arn,
                    "shard": position.shard_id,
                },
            )
    return BatchResult(len(parsed), inserted, newest)
