"""The worker's /metrics: a Prometheus text page on its own small HTTP listener.

    audit_lag_seconds            age of the oldest change read from the stream and not
                                 yet written to PostgreSQL (0 when caught up)
    audit_records_pending        records read and waiting for PostgreSQL
    audit_last_applied_age_seconds  age of the newest change written (grows when idle)
    audit_*_total                counters (records read, rows inserted, failures)

No label carries patient data: the only label is the shard ID.
"""

from __future__ import annotations

import asyncio
import contextlib
from collections.abc import AsyncIterator
from contextlib import asynccontextmanager
from datetime import UTC, datetime

from audit.consumer import ConsumerMetrics

__all__ = ["render", "serve_metrics"]


def render(metrics: ConsumerMetrics, now: datetime | None = None) -> str:
    now = now or datetime.now(UTC)
    last = metrics.last_applied_stream_at
    lines = [
        "# TYPE audit_lag_seconds gauge",
        f"audit_lag_seconds {metrics.lag_seconds(now):.3f}",
        "# TYPE audit_records_pending gauge",
        f"audit_records_pending {sum(metrics.pending_records.values())}",
        "# TYPE audit_last_applied_age_seconds gauge",
        "audit_last_applied_age_seconds "
        + (f"{(now - last).total_seconds():.3f}" if last else "NaN"),
        "# TYPE audit_shards_reading gauge",
        f"audit_shards_reading {metrics.shards_reading}",
        f"audit_records_read_total {metrics.records_read}",
        f"audit_rows_inserted_total {metrics.rows_inserted}",
        f"audit_batches_written_total {metrics.batches_written}",
        f"audit_write_failures_total {metrics.write_failures}",
        f"audit_reader_failures_total {metrics.reader_failures}",
    ]
    return "\n".join(lines) + "\n"


@asynccontextmanager
async def serve_metrics(
    metrics: ConsumerMetrics, host: str, port: int
) -> AsyncIterator[asyncio.Server]:
    """GET /metrics (and /healthz) on host:port until the block ends."""

    async def handle(reader: asyncio.StreamReader, writer: asyncio.StreamWriter) -> None:
        try:
            request = await asyncio.wait_for(reader.readuntil(b"\r\n\r\n"), 5)
            path = request.split(b" ", 2)[1] if request.count(b" ") >= 2 else b""
            if path == b"/metrics":
                status, body = "200 OK", render(metrics)
            elif path == b"/healthz":
                status, body = "200 OK", "ok\n"
            else:
                status, body = "404 Not Found", "not found\n"
            data = body.encode()
            writer.write(
                f"HTTP/1.1 {status}\r\nContent-Type: text/plain; version=0.0.4\r\n"
                f"Content-Length: {len(data)}\r\nConnection: close\r\n\r\n".encode()
                + data
            )
            await writer.drain()
        except (asyncio.IncompleteReadError, asyncio.LimitOverrunError, TimeoutError, OSError):
            pass
        finally:
            writer.close()
            with contextlib.suppress(OSError):
                await writer.wait_closed()

    server = await asyncio.start_server(handle, host, port)
    try:
        yield server
    finally:
        server.close()
        await server.wait_closed()
