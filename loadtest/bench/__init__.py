"""The benchmark: `python -m loadtest.bench [--quick | --tiny] [--out DIR] [--profile]`.

Starts everything on loopback with the project's own helpers (a private redis-server and
DynamoDB Local, the relay `python -m relay`, the gateway `python -m gateway`, the
bare baseline `python -m loadtest.baseline`, and load-client processes
`python -m loadtest.loadclients`), runs bounded phases, stops every process it started
(also on Ctrl-C, SIGTERM or an error), and writes `bench.json`, `bench.md` and
`bench.png` to `loadtest/results/` (git-ignored).

Phases, in order:
1. idle: as many idle sessions as allowed (10,000 in full mode) on a fresh gateway; its
   RSS before/after.
2. storm: N sessions of one tenant (5,000 in full mode) dropped at once and
   reconnected on a fresh gateway; the time until all have resubscribed
   (`storm_resubscribed_s`), and gateway and Redis CPU per session at N/2 and N.
3. ceiling: a Python writer (ExamStore) writing as fast as it can to DynamoDB Local.
4. e2e: after 5 s of unmeasured writes at the same rate (warm-up), the same writer at
   106 updates/s offered (100/s sent, the run's tail counted) with write-through on
   (each write's delta published as soon as DynamoDB acknowledges it; DynamoDB Local's
   session runs at nice 10 in these runs, `BENCH_STANDIN_NICE`), while every client (1,000) watches
   the whole tenant feed; latency = receive time - the delta's `updated_at`, split into
   stages (write acknowledged, first published, received). Then the same with
   write-through off (the relay alone), and at 90 % of the ceiling (information).
5. fan-out: deltas published where the relay publishes them (`WorklistFeed.publish`) at
   25/s (30 s in full mode: 750 updates), 200/s, then 1,000/s (8 s and 2 s), to the same
   clients; latency, losses, gateway CPU per delivery. At 25/s, two rounds each of the
   gateway and the baseline (phase 7) side by side, in the order gateway, baseline,
   baseline, gateway; the 25/s figures of each are over both of its rounds.
6. claims: rounds of 20 concurrent claimers on one exam over the WebSocket (when the
   gateway has `claim`), and at the store (`dynamo.claims`) for comparison: round trip
   p50/p99 and double claims.
7. baseline: the fan-out of phase 5 through `loadtest.baseline` (a fresh server for each
   rate), for its CPU per delivery and latency; a baseline that lost deliveries is
   judged against by nothing.
8. HL7: orders and status changes over 10 MLLP connections.
9. snapshot cost: one tenant's cache with 5,000 open and 100,000 closed exams
   (`loadtest.snapshot_cost`): snapshot and resume p99, Redis memory.
10. cluster (quick and full modes): CPU per delivery with 1, 2 and 3 gateway processes
   on a real three-master Redis Cluster (`loadtest.bench.cluster`) at 25 updates/s for
   8 s, each node count twice, interleaved; the figure is the mean.

After the phases, with everything stopped, it runs the assignment simulation
(`loadtest.assignment`: free picking against push orchestration on the default seeded
day) and writes `assignment.json`, `assignment.md` and `assignment.png` beside them.

All data is synthetic. Quick mode (`--quick`) runs a reduced scale in under two minutes;
`--tiny` is for the test suite.

The package, one job per module, in the order data flows through a run:

    config     scales and constants          stack      the processes it started
    workload   synthetic writes and deltas   meters     CPU, percentiles, profiles
    measure    one measured phase            phases     the phases, in order
    claimers   concurrent claimers           report     figures and `bench.md`
    verdicts   figures against targets       plot       `bench.png`
    storm      the reconnect storm phase     cli        `python -m loadtest.bench`
"""

from __future__ import annotations

from loadtest.bench.cli import main
from loadtest.bench.config import SCALES, Scale
from loadtest.bench.report import REQUIRED

__all__ = ["REQUIRED", "SCALES", "Scale", "main"]
