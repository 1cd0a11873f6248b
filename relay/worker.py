"""The relay as a long-lived worker process: `python -m relay`.

Reads the table's stream and hands each batch of deltas to the worklist cache; keeps
every tenant's cache equal to DynamoDB; reaps expired claims. Several workers may run at
once: shard leases make one of them the reader of each shard, and the reaper's and the
rebuilds' writes are safe to race (conditional writes; idempotent applies).

The tenants it maintains are those with exams: the relay registers each tenant it sees
(`ExamStore.register_tenant`); a table older than the registry is backfilled once by a
Scan, and again after a gap in the stream (never per change). Tenants a gateway asked
for (`WorklistFeed.request_build`) are built too.

Its counters are logged after every anti-entropy pass and served as text on
`RELAY_METRICS_PORT` (`GET /metrics`) when that is set.
"""

from __future__ import annotations

import asyncio
import contextlib
import logging
import os
import socket
from collections import Counter
from collections.abc import AsyncIterator, Awaitable, Callable
from dataclasses import dataclass

from pydantic_settings import BaseSettings, SettingsConfigDict

from dynamo.claims import Claims
from dynamo.client import dynamodb_client, streams_client
from dynamo.directory import DirectoryStore
from dynamo.exceptions import StoreError
from dynamo.review import ReviewStore
from dynamo.settings import DynamoSettings
from dynamo.store import ExamStore
from dynamo.table import wait_for_table
from relay.checkpoints import RedisCheckpoints
from relay.sampler import Sampler
from relay.stream import DynamoDeadLetters, StreamRelay
from service.logs import configure_logging
from service.runner import run_until_signalled
from worklist_cache import CacheSettings, WorklistFeed, connect
from worklist_cache.rebuild import Rebuilder, TenantGuard

log = logging.getLogger("relay.worker")


class RelaySettings(BaseSettings):
    model_config = SettingsConfigDict(env_prefix="RELAY_")

    # Pause after an empty GetRecords; the most latency it adds to a change.
    poll_interval: float = 0.05
    # How often the shard list is re-read to find new (child) shards.
    discover_interval: float = 5.0
    # A shard lease's life; the holder renews it every third of that.
    lease_seconds: float = 15.0
    # How often expired claims are released and a lost cache is rebuilt (0: never).
    reap_interval: float = 5.0
    # Closed exams (FINAL, AMENDED, CANCELLED) a rebuild restores: those scheduled
    # within this many hours. Open exams are always restored, however old.
    closed_retention_hours: float = 48.0
    # How often every tenant's cache is compared with DynamoDB and repaired (0: never),
    # and how long a difference may be in flight before it counts.
    antientropy_interval: float = 300.0
    antientropy_grace: float = 2.0
    # Stream records that do not normalize are parked this long (TTL `expires_at`).
    dead_letter_days: float = 14.0
    # `GET /metrics` (text counters) on this port; 0: not served (still logged).
    metrics_port: int = 0
    metrics_host: str = "127.0.0.1"
    # Share of FINAL exams sampled into peer review, per tenant, and the sampling seed.
    review_rate: float = 0.05
    review_seed: int = 7
    # This worker's name in shard leases; host:pid when empty.
    node_name: str = ""
    log_level: str = "INFO"


async def rebuild(
    store: ExamStore, feed: WorklistFeed, tenant: str, *, closed_retention_hours: float = 48.0
) -> int:
    """Make a tenant's cache equal to DynamoDB now (GSI queries, never a Scan), removals
    included, then mark it built; returns how many exams are in its scope.

    Runs beside the live relay: both go through the feed's idempotent apply, so a
    change that races the rebuild lands by version whichever comes first.
    """
    rebuilder = Rebuilder(store, feed, closed_retention_ms=int(closed_retention_hours * 3.6e6))
    return (await rebuilder.rebuild(tenant)).compared


@dataclass
class Pipeline:
    """What the relay hands its records to: the same for the worker and for Lambda."""

    sink: TenantGuard  # register the tenant, build its cache if needed, then apply
    sampler: Sampler  # apply through the feed, then pool sampled FINAL exams for review
    rebuilder: Rebuilder
    dead_letters: DynamoDeadLetters


def pipeline(store: ExamStore, feed: WorklistFeed, settings: RelaySettings) -> Pipeline:
    sampler = Sampler(
        feed, ReviewStore(store), rate=settings.review_rate, seed=settings.review_seed
    )
    rebuilder = Rebuilder(
        store,
        feed,
        publisher=sampler,
        closed_retention_ms=int(settings.closed_retention_hours * 3_600_000),
    )
    return Pipeline(
        sink=TenantGuard(sampler, rebuilder, store.register_tenant),
        sampler=sampler,
        rebuilder=rebuilder,
        dead_letters=DynamoDeadLetters(store, keep_days=settings.dead_letter_days),
    )


async def known_tenants(
    store: ExamStore, feed: WorklistFeed, *, backfill: bool = False
) -> list[str]:
    """Every tenant that has exams (the registry; backfilled by a Scan once, or when
    asked after a gap), every active tenant of the directory, and every tenant a
    gateway asked to be built."""
    registered, backfilled = await store.tenants()
    found = set(registered)
    found.update(t.code for t in await DirectoryStore(store).tenants() if t.active)
    if backfill or not backfilled:
        found.update(await store.backfill_tenants())
    found.update(await feed.build_requests())
    return sorted(found)


def gap_handler(
    store: ExamStore, feed: WorklistFeed, line: Pipeline
) -> Callable[[str], Awaitable[None]]:
    """What the relay does on a gap in the stream: every tenant's epoch is bumped (its
    clients reset) and its cache rebuilt from DynamoDB, readers held meanwhile."""

    async def on_gap(shard_id: str) -> None:
        # The registry may lack tenants whose first exams fell into the gap.
        tenants = await known_tenants(store, feed, backfill=True)
        changed = await line.rebuilder.after_gap(tenants)
        log.warning(
            "after the gap in shard %s: %d tenants reset and rebuilt, %d rows changed",
            shard_id,
            len(tenants),
            changed,
        )

    return on_gap


class Metrics:
    """The worker's counters (no labels but the kind of thing counted: never PHI)."""

    def __init__(self, relay: StreamRelay | None, line: Pipeline) -> None:
        self._relay = relay
        self._line = line
        self.counts: Counter[str] = Counter()
        # Differences the last complete anti-entropy pass found, per kind.
        self.divergence: dict[str, int] = {"missing": 0, "stale": 0, "extra": 0}

    def snapshot(self) -> dict[str, int]:
        out = dict(self.counts)
        relay = self._relay
        if relay is not None:
            out.update(
                records_seen=relay.records_seen,
                deltas_published=relay.deltas_published,
                records_parked=relay.records_parked,
                stream_gaps=relay.gaps,
                reader_failures=relay.reader_failures,
            )
        out.update(
            reviews_pooled=self._line.sampler.pooled,
            rebuilds=self._line.rebuilder.rebuilds,
        )
        return out

    def render(self) -> str:
        lines = [f"relay_{k}_total {v}" for k, v in sorted(self.snapshot().items())]
        lines += [
            f'relay_antientropy_divergent_rows{{kind="{k}"}} {v}'
            for k, v in sorted(self.divergence.items())
        ]
        lines.append(f"relay_antientropy_divergent_rows_sum {sum(self.divergence.values())}")
        return "\n".join(lines) + "\n"


@contextlib.asynccontextmanager
async def serve_metrics(metrics: Metrics, host: str, port: int) -> AsyncIterator[None]:
    """A minimal HTTP endpoint: any GET answers the counters as text."""

    async def answer(reader: asyncio.StreamReader, writer: asyncio.StreamWriter) -> None:
        try:
            with contextlib.suppress(asyncio.IncompleteReadError, asyncio.LimitOverrunError):
                await asyncio.wait_for(reader.readuntil(b"\r\n\r\n"), 5)
            body = metrics.render().encode()
            writer.write(
                b"HTTP/1.1 200 OK\r\nContent-Type: text/plain; version=0.0.4\r\n"
                + f"Content-Length: {len(body)}\r\nConnection: close\r\n\r\n".encode()
                + body
            )
            await writer.drain()
        except (OSError, TimeoutError):
            pass
        finally:
            writer.close()

    server = await asyncio.start_server(answer, host, port)
    try:
        yield
    finally:
        server.close()
        await server.wait_closed()


async def maintain_forever(
    claims: Claims,
    line: Pipeline,
    feed: WorklistFeed,
    interval: float,
    counts: Counter[str] | None = None,
) -> None:
    """Build the cache of every tenant this Redis does not hold built; release expired
    claims. Every tenant with exams, every round. Nothing but a cancel ends it: a fault
    (Redis or DynamoDB away, or a defect) is logged, counted in `counts`
    (`maintenance_failures`) and tried again, for the relay's tasks live and die
    together, and builds and the reaper must not stop because one round failed."""
    me = asyncio.current_task()
    store = claims.store
    failures = counts if counts is not None else Counter[str]()
    while True:
        try:
            tenants = await known_tenants(store, feed)
            requested = set(await feed.build_requests())
        except Exception as exc:  # (a fault's kind only: a message may name a row)
            failures["maintenance_failures"] += 1
            log.warning("maintenance: tenant list unavailable (%s)", type(exc).__name__)
            await asyncio.sleep(interval)
            continue
        for tenant in tenants:
            # aiobotocore's retries can swallow a cancel (see relay/stream.py).
            if me is not None and me.cancelling():
                raise asyncio.CancelledError()
            try:
                await line.rebuilder.ensure_built(tenant)
                if tenant in requested:
                    await feed.build_request_done(tenant)
                released = await claims.reap(tenant)
            except Exception as exc:  # DynamoDB or Redis away, a rebuild cut short, a defect
                failures["maintenance_failures"] += 1
                kind = exc.code if isinstance(exc, StoreError) else type(exc).__name__
                log.warning("maintenance of %s: %s", tenant, kind)
                continue
            if released:
                log.info("reaper released %d expired claims of %s", len(released), tenant)
        await asyncio.sleep(interval)


async def antientropy_forever(
    store: ExamStore,
    feed: WorklistFeed,
    line: Pipeline,
    metrics: Metrics,
    *,
    interval: float,
    grace: float,
) -> None:
    """Compare every tenant's cache with DynamoDB, repair, and meter what was found;
    the figure is the last complete pass's, so after a fault it returns to zero."""
    while True:
        await asyncio.sleep(interval)
        found = {"missing": 0, "stale": 0, "extra": 0}
        try:
            for tenant in await known_tenants(store, feed):
                result = await line.rebuilder.check(tenant, repair=True, grace=grace)
                for kind in found:
                    found[kind] += len(getattr(result, kind))
                metrics.counts["antientropy_repaired"] += result.repaired
                if result.total:
                    log.warning(
                        "anti-entropy: %s differed from DynamoDB (missing %d, stale %d, "
                        "extra %d); repaired",
                        tenant,
                        len(result.missing),
                        len(result.stale),
                        len(result.extra),
                    )
        except asyncio.CancelledError:
            raise
        except Exception as exc:  # noticed, metered, and tried again next pass
            metrics.counts["antientropy_failures"] += 1
            log.warning("anti-entropy pass failed (%s); next pass later", type(exc).__name__)
            continue
        metrics.divergence = found
        metrics.counts["antientropy_passes"] += 1
        log.info("metrics %s", " ".join(metrics.render().split("\n")).strip())


async def run_relay(
    relay_settings: RelaySettings, dynamo: DynamoSettings, cache: CacheSettings
) -> None:
    redis = connect(cache.redis_url, cluster=cache.redis_cluster)
    owner = relay_settings.node_name or f"{socket.gethostname()}:{os.getpid()}"
    try:
        async with dynamodb_client(dynamo) as ddb, streams_client(dynamo) as streams:
            arn = await wait_for_table(ddb, dynamo.table)
            lease_ms = int(relay_settings.lease_seconds * 1000)
            feed = WorklistFeed(redis, maxlen=cache.feed_maxlen, sharded=cache.pubsub == "sharded")
            store = ExamStore(ddb, dynamo.table)
            line = pipeline(store, feed, relay_settings)

            relay = StreamRelay(
                streams,
                arn,
                line.sink,
                RedisCheckpoints(redis, arn, owner=owner, lease_ms=lease_ms),
                poll_interval=relay_settings.poll_interval,
                discover_interval=relay_settings.discover_interval,
                lease_interval=relay_settings.lease_seconds / 3,
                on_gap=gap_handler(store, feed, line),
                dead_letters=line.dead_letters,
            )
            metrics = Metrics(relay, line)
            log.info("relaying stream of table %s as %s", dynamo.table, owner)
            async with contextlib.AsyncExitStack() as stack:
                if relay_settings.metrics_port:
                    await stack.enter_async_context(
                        serve_metrics(
                            metrics, relay_settings.metrics_host, relay_settings.metrics_port
                        )
                    )
                async with asyncio.TaskGroup() as group:
                    group.create_task(relay.run(), name="relay")
                    if relay_settings.reap_interval > 0:
                        group.create_task(
                            maintain_forever(
                                Claims(store),
                                line,
                                feed,
                                relay_settings.reap_interval,
                                metrics.counts,
                            ),
                            name="maintenance",
                        )
                    if relay_settings.antientropy_interval > 0:
                        group.create_task(
                            antientropy_forever(
                                store,
                                feed,
                                line,
                                metrics,
                                interval=relay_settings.antientropy_interval,
                                grace=relay_settings.antientropy_grace,
                            ),
                            name="antientropy",
                        )
    finally:
        await redis.aclose()


def main() -> None:
    settings = RelaySettings()
    configure_logging(settings.log_level)
    run_until_signalled(run_relay(settings, DynamoSettings(), CacheSettings()))


if __name__ == "__main__":
    main()
