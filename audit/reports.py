"""The reports coordinators and a group's managers ask for, in SQL over the audit.

Every report is scoped to one tenant and covers the days [start, end] (inclusive) in
the tenant's time zone: a day is a local calendar day (`AT TIME ZONE`), so a read at
23:30 in New York counts on that day, not on the next UTC one. Figures:

    turnaround     FINAL exams by day, priority, site, modality: count, p50 and p90 of
                   minutes from ready-to-read (COMPLETED) to first FINAL, and how many
                   missed their deadline (`tat_due_at`)
    reads          final reads per radiologist per day (and how many were late)
    peer_review    reviews scored by site and modality: volume, discrepant (2b/3a/3b,
                   by final score), discrepancy rate
    lock_breaks    break-locks and reassignments (a claim taken over after the holder's
                   lease ran out; a review given to another reviewer) by day and site

Percentiles are PostgreSQL's `percentile_cont` (linear interpolation).
"""

from __future__ import annotations

import csv
import io
from dataclasses import dataclass
from datetime import date
from typing import Any

import psycopg

__all__ = ["REPORTS", "Report", "run_report", "to_csv"]


@dataclass(frozen=True)
class Report:
    name: str
    columns: tuple[str, ...]
    rows: list[tuple[Any, ...]]

    def as_dicts(self) -> list[dict[str, Any]]:
        return [dict(zip(self.columns, row, strict=True)) for row in self.rows]


_LOCAL_DAY = "(({col}) AT TIME ZONE %(tz)s)::date"
_IN_RANGE = _LOCAL_DAY + " BETWEEN %(start)s AND %(end)s"

_SQL: dict[str, str] = {
    "turnaround": f"""
SELECT {_LOCAL_DAY.format(col="final_at")} AS day, priority, site, modality,
       count(*) AS exams,
       round(percentile_cont(0.5) WITHIN GROUP (ORDER BY minutes)::numeric, 1) AS p50_minutes,
       round(percentile_cont(0.9) WITHIN GROUP (ORDER BY minutes)::numeric, 1) AS p90_minutes,
       count(*) FILTER (WHERE final_at > tat_due_at) AS late
FROM (SELECT *, extract(epoch FROM final_at - completed_at) / 60.0 AS minutes FROM exam
      WHERE tenant = %(tenant)s AND NOT removed AND final_at IS NOT NULL
        AND completed_at IS NOT NULL AND {_IN_RANGE.format(col="final_at")}) e
GROUP BY 1, 2, 3, 4 ORDER BY 1, 2, 3, 4""",
    "reads": f"""
SELECT {_LOCAL_DAY.format(col="r.final_at")} AS day, r.reader, s.name AS reader_name,
       count(*) AS reads,
       count(*) FILTER (WHERE r.final_at > r.tat_due_at) AS late
FROM reading r LEFT JOIN staff s ON s.sub = r.reader
WHERE r.tenant = %(tenant)s AND r.final_at IS NOT NULL AND {_IN_RANGE.format(col="r.final_at")}
GROUP BY 1, 2, 3 ORDER BY 1, 2""",
    "peer_review": f"""
SELECT site, modality, count(*) AS reviews,
       count(*) FILTER (WHERE COALESCE(final_score, score) IN ('2b', '3a', '3b')) AS discrepant,
       round(count(*) FILTER (WHERE COALESCE(final_score, score) IN ('2b', '3a', '3b'))
             ::numeric / count(*), 3) AS discrepancy_rate
FROM review
WHERE tenant = %(tenant)s AND NOT removed AND scored_at IS NOT NULL
  AND {_IN_RANGE.format(col="scored_at")}
GROUP BY 1, 2 ORDER BY 1, 2""",
    "lock_breaks": f"""
SELECT day, site, sum(break_locks)::int AS break_locks,
       sum(reassignments)::int AS reassignments,
       sum(review_reassignments)::int AS review_reassignments
FROM (
  SELECT {_LOCAL_DAY.format(col="changed_at")} AS day, site,
         count(*) FILTER (WHERE action = 'break_lock') AS break_locks,
         count(*) FILTER (WHERE action = 'claim' AND holder IS NOT NULL) AS reassignments,
         0 AS review_reassignments
  FROM exam_event
  WHERE tenant = %(tenant)s AND action IN ('break_lock', 'claim')
    AND {_IN_RANGE.format(col="changed_at")}
  GROUP BY 1, 2
  UNION ALL
  SELECT {_LOCAL_DAY.format(col="changed_at")}, site, 0, 0, count(*)
  FROM review_event
  WHERE tenant = %(tenant)s AND action = 'reassigned' AND {_IN_RANGE.format(col="changed_at")}
  GROUP BY 1, 2
) t
GROUP BY 1, 2
HAVING sum(break_locks) + sum(reassignments) + sum(review_reassignments) > 0
ORDER BY 1, 2""",
}

REPORTS: tuple[str, ...] = tuple(_SQL)


async def run_report(
    conn: psycopg.AsyncConnection[Any],
    name: str,
    tenant: str,
    start: date,
    end: date,
    tz: str,
) -> Report:
    """One report of one tenant over the local days [start, end]. `KeyError` for an
    unknown report; a bad time zone is PostgreSQL's InvalidParameterValue."""
    sql = _SQL[name]
    params = {"tenant": tenant, "start": start, "end": end, "tz": tz}
    cur = await conn.execute(sql.encode(), params)
    columns = tuple(d.name for d in cur.description or ())
    return Report(name, columns, list(await cur.fetchall()))


def to_csv(report: Report) -> str:
    out = io.StringIO()
    writer = csv.writer(out, lineterminator="\n")
    writer.writerow(report.columns)
    for row in report.rows:
        writer.writerow(["" if v is None else v for v in row])
    return out.getvalue()


async def exam_history(
    conn: psycopg.AsyncConnection[Any], tenant: str, accession: str
) -> list[dict[str, Any]]:
    """One exam's audit, in order: what happened, who, the holder it concerned, why."""
    cur = await conn.execute(
        "SELECT h.changed_at, h.version, h.action, h.actor, a.name AS actor_name, h.holder,"
        " h.reason, h.old_status, h.new_status, h.old_priority, h.new_priority,"
        " h.hl7_sender, h.hl7_control_id"
        " FROM exam_history h LEFT JOIN staff a ON a.sub = h.actor"
        " WHERE h.tenant = %s AND h.accession = %s ORDER BY h.version, h.changed_at",
        (tenant, accession),
    )
    columns = [d.name for d in cur.description or ()]
    return [dict(zip(columns, row, strict=True)) for row in await cur.fetchall()]
