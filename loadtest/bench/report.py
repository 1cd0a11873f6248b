"""The results: the top-level figures from the phases, and `bench.md`."""

from __future__ import annotations

import contextlib
import os
import platform
import time
from collections.abc import Mapping
from dataclasses import asdict
from pathlib import Path
from typing import Any

import psutil

from loadtest.bench.config import (
    CLAIMERS,
    CLIENT_QUEUE,
    E2E_RATE,
    FANOUT_RATES,
    IDLE_PER_TENANT,
    OTHERS_LIMIT,
)
from loadtest.bench.phases import Bench
from loadtest.bench.storm import STORM_USERS
from loadtest.bench.verdicts import fmt, pair, verdicts
from loadtest.loadclients import (
    auth_available,
    client_kind,
)

__all__ = ["REQUIRED", "finish", "machine", "render_markdown"]

CLIENT_TEXT = {
    "raw": "`loadtest.rawws` raw `asyncio.Protocol` clients (frames parsed in "
    "`data_received`, one callback per frame, no task per connection; each distinct "
    "frame's JSON parsed once per process, its deliveries counted per connection)",
    "websockets": "`websockets` asyncio clients (`BENCH_CLIENT=websockets`)",
}


REQUIRED = (
    "e2e_p50_ms",
    "e2e_p99_ms",
    "e2e_updates_per_s",
    "dynamo_ceiling_writes_per_s",
    "fanout_p99_ms_at_25",
    "fanout_p99_ms_at_200",
    "fanout_p99_ms_at_1000",
    "fanout_lost",
    "clients",
    "gateway_cpu_us_per_delta",
    "baseline_cpu_us_per_delta",
    "gateway_cpu_us_per_delta_at_25",
    "baseline_cpu_us_per_delta_at_25",
    "baseline_p99_ms_at_25",
    "max_connections",
    "kb_per_connection",
    "storm_resubscribed_s",
    "baseline_kb_per_connection",
    "claim_p99_ms",
    "claim_p99_ms_idle",
    "bytes_per_delivery",
    "bytes_per_delivery_full_rows",
    "snapshot_p99_ms_large_tenant",
    "claim_rounds",
    "double_claims",
    "client_limited",
    "machine",
)


def late_cell(ph: dict[str, Any]) -> str:
    """A gateway phase's feed messages read > 100 ms late, and windows stretched."""
    if ph.get("feed_late") is None:
        return "-"
    return f"{ph['feed_late']:,}; {ph['stretched']:,}"


def gc_cell(ph: dict[str, Any]) -> str:
    """A gateway phase's full collections and their pause in all; '-' where not read."""
    if ph.get("gc_full") is None:
        return "-"
    return f"{ph['gc_full']} ({fmt(ph['gc_pause_ms'])})"


def machine() -> dict[str, Any]:
    model = ""
    with contextlib.suppress(OSError):
        for line in Path("/proc/cpuinfo").read_text().splitlines():
            if line.startswith("model name"):
                model = line.split(":", 1)[1].strip()
                break
    return {
        "cores": os.cpu_count(),
        "load_average_1m": round(os.getloadavg()[0], 2),
        "physical_cores": psutil.cpu_count(logical=False),
        "cpu_model": model,
        "memory_gb": round(psutil.virtual_memory().total / 2**30, 1),
        "python": platform.python_version(),
        "platform": platform.platform(),
    }


def finish(bench: Bench, started: float) -> dict[str, Any]:
    """The top-level figures from the phases."""
    r = bench.results
    p = bench.phases
    fan = {rate: p.get(f"fanout_{rate}", {}) for rate in FANOUT_RATES}
    base = {rate: p.get(f"baseline_{rate}", {}) for rate in FANOUT_RATES}
    # At 25/s, both rounds of each server, measured side by side (`Bench._side_by_side`).
    side = r.get("side_by_side_at_25") or {}
    fan25, base25 = side.get("gateway") or fan[25], side.get("baseline") or base[25]
    data_phases = [v for k, v in p.items() if k == "e2e" or k.startswith(("fanout_", "baseline_"))]
    store_claims = p.get("claims_store", {})
    idle_claims = p.get("claims_websocket", {})
    # The claim figure is the one under fan-out; on an idle gateway it is its own key.
    claims = p.get("claims_websocket_fanout") or idle_claims or store_claims
    r.update(
        claim_p50_ms=claims.get("p50_ms"),
        claim_p99_ms=claims.get("p99_ms"),
        # Claims over the WebSocket on a gateway with no fan-out running.
        claim_p50_ms_idle=idle_claims.get("p50_ms"),
        claim_p99_ms_idle=idle_claims.get("p99_ms"),
        claim_rounds_idle=idle_claims.get("rounds"),
        claim_max_ms=claims.get("max_ms"),
        claim_rounds=claims.get("rounds"),
        claim_measured_at=claims.get("measured_at"),
        claim_under_fanout_per_s=claims.get("fanout_per_s"),
        double_claims=sum(
            c.get("double_claims", 0) for c in (claims, idle_claims, store_claims) if c
        )
        if claims
        else None,
        claim_p50_ms_store=store_claims.get("p50_ms"),
        claim_p99_ms_store=store_claims.get("p99_ms"),
        claim_rounds_store=store_claims.get("rounds"),
        fanout_p50_ms_at_25=fan25.get("p50_ms"),
        fanout_p99_ms_at_25=fan25.get("p99_ms"),
        fanout_p50_ms_at_200=fan[200].get("p50_ms"),
        fanout_p99_ms_at_200=fan[200].get("p99_ms"),
        fanout_p50_ms_at_1000=fan[1000].get("p50_ms"),
        fanout_p99_ms_at_1000=fan[1000].get("p99_ms"),
        fanout_lost=sum(v.get("lost", 0) for k, v in p.items() if k.startswith("fanout_")),
        fanout_lost_at_200=fan[200].get("lost"),
        fanout_lost_at_1000=fan[1000].get("lost"),
        gateway_cpu_us_per_delta_at_25=fan25.get("server_cpu_us_per_delivery"),
        baseline_cpu_us_per_delta_at_25=base25.get("server_cpu_us_per_delivery"),
        baseline_p50_ms_at_25=base25.get("p50_ms"),
        baseline_p99_ms_at_25=base25.get("p99_ms"),
        gateway_cpu_us_per_delta=fan[200].get("server_cpu_us_per_delivery"),
        gateway_cpu_us_per_delta_at_1000=fan[1000].get("server_cpu_us_per_delivery"),
        baseline_cpu_us_per_delta=base[200].get("server_cpu_us_per_delivery"),
        baseline_cpu_us_per_delta_at_1000=base[1000].get("server_cpu_us_per_delivery"),
        baseline_p50_ms_at_200=base[200].get("p50_ms"),
        baseline_p99_ms_at_200=base[200].get("p99_ms"),
        baseline_p99_ms_at_1000=base[1000].get("p99_ms"),
        baseline_lost=sum(v.get("lost", 0) for k, v in p.items() if k.startswith("baseline_")),
        client_limited=any(ph.get("client_limited") for ph in data_phases),
        client_cpu_peak=max((ph.get("client_cpu_peak", 0.0) for ph in data_phases), default=0.0),
        other_cores_max=max(
            (ph.get("other_cores", 0.0) for ph in [*data_phases, p.get("ceiling", {})]),
            default=0.0,
        ),
        auth=auth_available(),
        load_client=client_kind(),
        standin_nice_e2e=r.get("standin_nice_e2e", 0),
        mode=bench.scale.name,
        scale=asdict(bench.scale),
        gateway_client_queue=CLIENT_QUEUE,
        machine=machine(),
        duration_s=round(time.monotonic() - started, 1),
        finished_at=time.strftime("%Y-%m-%dT%H:%M:%SZ", time.gmtime()),
        notes=bench.notes,
        phases=p,
    )
    for key in REQUIRED:
        r.setdefault(key, None)
    return r


def _side_by_side_note(r: Mapping[str, Any]) -> str:
    side = r.get("side_by_side_at_25")
    if not side:
        return ""
    rounds = "; ".join(
        f"{name} p99 {fmt(r['phases'].get(name, {}).get('p99_ms'))} ms" for name in side["order"]
    )
    return (
        "At 25/s the gateway and the baseline ran side by side, two rounds each in the order "
        f"gateway, baseline, baseline, gateway ({rounds}), and the 25/s figures are over "
        "both rounds of each: the two cost and wait about the same there, and a comparison "
        "with the baseline's phase minutes later was decided by how the box was doing."
    )


def _storm_note(r: Mapping[str, Any]) -> str:
    runs = (r["phases"].get("storm") or {}).get("runs") or {}
    if not runs:
        return "- **Reconnect storm**: not run."
    lines = "; ".join(
        f"{int(size):,} sessions: resubscribed in {run['resubscribed_s']} s, per session "
        f"gateway {fmt(run['gateway_cpu_us_per_session'])} us CPU, Redis "
        f"{fmt(run['redis_cpu_us_per_session'])} us CPU, "
        f"{fmt(run['redis_commands_per_session'])} commands, "
        f"{fmt(run['redis_bytes_per_session'])} bytes sent"
        for size, run in runs.items()
    )
    return (
        f"- **Reconnect storm**: a fresh gateway; N sessions of one tenant "
        f"({STORM_USERS} people, so each has tabs), authenticated and subscribed to its "
        "(empty) feed, all closed at once and reopened; `storm_resubscribed_s` = from the "
        "drop until every session has its snapshot again. Cost = the gateway's CPU and "
        "Redis's (`INFO` `used_cpu_*`, commands, bytes sent) from the drop until the "
        f"gateway is quiet again, divided by the sessions, at N/2 and N. {lines}."
    )


def render_markdown(r: Mapping[str, Any]) -> str:
    m = r["machine"]
    s = r["scale"]
    out = [
        f"# Benchmark: {r['mode']} mode",
        "",
        f"{r['finished_at']} on {m['cores']} cores ({m['cpu_model'] or 'unknown CPU'}), "
        f"{m['memory_gb']} GB, Python {m['python']}; gateway, relay, Redis, DynamoDB Local "
        f"and load clients all on this machine. Took {r['duration_s']} s.",
        "",
    ]
    if r["mode"] != "full":
        out += [
            f"> **Reduced scale** ({r['mode']}): {s['clients']:,} clients (target: 1,000), "
            f"{s['idle_connections']:,} idle sessions (target: 10,000), {s['claim_rounds']:,} "
            "claim rounds (target: 1,000). Verdicts compare this scale with the product's "
            "targets; run `make bench` for the real thing.",
            "",
        ]
    out += ["| figure | measured | target | verdict |", "|---|---|---|---|"]
    out += [f"| {a} | {b} | {c} | {d} |" for a, b, c, d in verdicts(r)]
    out += [
        "",
        "## Phases",
        "",
        "| phase | server | clients | offered /s | sent /s | deltas | delivered | lost "
        "| p50 ms | p99 ms | max ms | server CPU (cores) | server us/delivery "
        "| load clients (cores) | client peak (core) | others (cores) | frames | batches "
        "| closed | full GCs (pause ms) | read late; windows stretched |",
        "|---|---|---|---|---|---|---|---|---|---|---|---|---|---|---|---|---|---|---|---|---|",
    ]
    for key, ph in r["phases"].items():
        if "server" not in ph:
            continue
        share = ph["cpu_share"].get(ph["server"])
        clients_cpu = sum(v for n, v in ph["cpu_share"].items() if n.startswith("client"))
        # Processes outside the benchmark took CPU meanwhile: its figures are pessimistic.
        mark = " (disturbed)" if ph.get("other_cores", 0.0) > OTHERS_LIMIT else ""
        out.append(
            f"| {key}{mark} | {ph['server']} | {ph['clients']:,} | {fmt(ph['rate_offered'])} "
            f"| {fmt(ph['rate_sent'])} | {ph['deltas']:,} | {ph['delivered']:,} "
            f"| {ph['lost']:,} | {fmt(ph['p50_ms'])} | {fmt(ph['p99_ms'])} "
            f"| {fmt(ph['max_ms'])} | {fmt(share)} | {fmt(ph['server_cpu_us_per_delivery'])} "
            f"| {clients_cpu:.2f} | {ph['client_cpu_peak']:.0%} | {fmt(ph.get('other_cores'))} "
            f"| {ph['frames']:,} | {ph['batches']:,} "
            f"| {ph['closed_codes'] or '-'} | {gc_cell(ph)} | {late_cell(ph)} |"
        )
    idle = r["phases"].get("idle", {})
    claims = r["phases"].get("claims_websocket", {})
    busy = r["phases"].get("claims_websocket_fanout", {})
    store_claims = r["phases"].get("claims_store", {})
    e2e = r["phases"].get("e2e", {})
    ceiling = r["phases"].get("ceiling", {})
    out += [
        "",
        "## How these were measured",
        "",
        f"- **Ceiling**: {ceiling.get('concurrency')} concurrent exam chains through "
        "`ExamStore` (create, then ARRIVED, IN_PROGRESS, COMPLETED, FINAL; each move one "
        "conditional write from the exam the previous one returned, as the HL7 ingest "
        f"walks one) for {s['ceiling_s']} s after {s['warmup_s']} s of unmeasured "
        "writes (DynamoDB Local's JIT warms up), on a table no relay reads. "
        f"Writer CPU share: {ceiling.get('cpu_share', {}).get('bench', 'n/a')} of a core.",
        f"- **End to end**: the same writer paced at {E2E_RATE} updates/s with "
        "write-through on (`dynamo.writethrough`: each write's delta published as soon as "
        "DynamoDB acknowledges it; the relay's copy is dropped by version); then at the "
        "same rate with write-through off (the relay alone), and at 90 % of the ceiling "
        "(information: on 2 cores DynamoDB Local alone takes a core). Latency = the "
        "client's receive time - `delta.updated_at`. The store stamps `updated_at` *before* "
        "DynamoDB acknowledges the write, so this overestimates the product's definition "
        "(write acknowledged -> received), which is shown on its own line: the writer notes "
        "when each write was acknowledged. Stages, p50 / p99 ms, stamp -> acknowledged -> "
        "first published (a Redis subscriber in the benchmark) -> received: "
        + "; ".join(
            f"{label} {pair(st.get('stamp_to_ack'))} -> {pair(st.get('ack_to_publish'))} -> "
            f"{pair(st.get('publish_to_client'))} at {ph.get('rate_sent')}/s"
            for label, ph in (
                ("write-through", e2e),
                ("relay alone", r["phases"].get("e2e_relay_only", {})),
                ("write-through at 90 % of the ceiling", r["phases"].get("e2e_ceiling", {})),
            )
            if ph
            for st in [ph.get("stages", {})]
        )
        + ".",
        "- **Fan-out**: deltas published with `WorklistFeed.publish` (the relay's own call) "
        "in 5 ms ticks, `updated_at` = publish time; unique exam ids, so every client must "
        "receive every delta. `lost` counts (delta, client) pairs missing after the drain "
        f"(at most {s['drain_cap_s']} s, or 5 s without progress). "
        f"{_side_by_side_note(r)}",
        "- **CPU per delivery**: the server process's user+system CPU over the phase "
        "(injection and drain) divided by the deliveries clients received. The baseline "
        "(`loadtest/baseline.py`: redis.asyncio pub/sub -> `websockets` `broadcast`, uvloop) "
        "got the same messages at the same rates and client count.",
        "- **Full GCs**: the gateway's full (oldest-generation) collections during the phase "
        "and their pauses in all (its `/metrics`, `gateway_gc_*`); each stops every "
        "client's deliveries while it runs, so one in a short phase can be its p99. "
        "**Read late**: the feed messages the gateway read more than 100 ms after Redis "
        "stamped them (it was behind), and the flush windows it stretched for them.",
        f"- **Idle sessions**: a fresh gateway process; each session opened, "
        f"{'authenticated, ' if r.get('auth') else ''}subscribed to its tenant's (empty) "
        f"feed and left idle, {IDLE_PER_TENANT} users per tenant over {idle.get('tenants')} "
        f"tenants; RSS growth / sessions held. RSS {idle.get('rss_before_mb')} -> "
        f"{idle.get('rss_after_mb')} MB for {idle.get('held')} sessions, opened in "
        f"{idle.get('open_s')} s. The baseline's figure: the bare `websockets` server "
        f"holding {idle.get('baseline_held')} idle connections of the same load clients "
        f"(welcomed, no auth, no subscription).",
        _storm_note(r),
        f"- **Claims**: {CLAIMERS} users claim one exam at once, the winner releases it; "
        + (
            f"over the WebSocket ({CLAIMERS} authenticated sessions, `claim` -> `claimed` or "
            f"`conflict`): {claims.get('rounds')} rounds, "
            f"{claims.get('rounds_without_winner')} without a winner, errors "
            f"{claims.get('errors') or 'none'}, on an idle gateway (`claim_p99_ms_idle`); "
            f"and {busy.get('rounds')} rounds while every load client received "
            f"{busy.get('fanout_per_s')} updates/s (`claim_p99_ms`), errors "
            f"{busy.get('errors') or 'none'}. "
            if claims
            else "the gateway has no `claim` message yet. "
        )
        + f"At the store (`dynamo.claims.Claims`, one aioboto3 client, DynamoDB Local): "
        f"{store_claims.get('rounds')} rounds, {store_claims.get('rounds_without_winner')} "
        "without a winner. Where a claim's time went over the WebSocket (the gateway's "
        "`claim_*_us` counters, mean ms per claim: the claim gate including the wait for "
        "the first claimer's outcome, DynamoDB, the whole handler; the round trip's mean "
        "minus the handler's is the socket and the event loop), and claims that reached "
        "DynamoDB: "
        + "; ".join(
            f"{label} gate {t.get('gate_mean_ms')}, DynamoDB {t.get('store_mean_ms')}, "
            f"handler {t.get('handled_mean_ms')}, outside it {t.get('outside_handler_mean_ms')}, "
            f"{t.get('at_dynamodb')} of {t.get('claims')} at DynamoDB"
            for label, ph in (("idle", claims), ("under fan-out", busy))
            for t in [ph.get("time_split") or {}]
            if t
        )
        + ".",
        f"- Load clients: {CLIENT_TEXT.get(r.get('load_client', 'websockets'), '?')}, "
        f"{s['client_procs']} processes, compression off (so is the baseline's); "
        f"gateway `GATEWAY_CLIENT_QUEUE={r['gateway_client_queue']}`; "
        f"auth {'on' if r.get('auth') else 'off (gateway/auth.py not present yet)'}.",
        f"- DynamoDB Local (a stand-in for a remote service) ran at nice "
        f"{r.get('standin_nice_e2e', 0)} during the e2e runs (`BENCH_STANDIN_NICE`, set "
        "on its session's autogroup: each process the benchmark starts leads its own "
        "session, and with autogroups on, a process's own nice value weighs only "
        "against its session's threads): its acknowledgement starts "
        "`e2e_p99_ms_from_ack`, and on 2 cores it would otherwise take turns with the "
        "relay, Redis, the gateway and the clients measured after it. At nice 0 in the "
        "other phases: a claim's round trip includes its write.",
    ]
    if r.get("other_cores_max", 0) > OTHERS_LIMIT:
        out.append(
            f"- **Disturbed**: processes the benchmark did not start used up to "
            f"{r['other_cores_max']:.2f} cores during a phase (`other_cores` per phase in "
            "bench.json); on a 2-core box every figure above is then pessimistic."
        )
    if r["client_limited"]:
        out.append(
            f"- **Client-limited**: a load-client process used up to "
            f"{r['client_cpu_peak']:.0%} of a core during a phase, so part of the latency "
            "is the clients' own queueing, and the server shared 2 cores with them."
        )
    out += [f"- {note}" for note in r["notes"]]
    for key, prof in r["phases"].items():
        if not key.startswith("profile_") or not prof.get("samples"):
            continue
        out += [
            "",
            f"## Gateway profile: {key[8:]} (py-spy, {prof['samples']} samples)",
            "",
            "| self % | function | | inclusive % | function |",
            "|---|---|---|---|---|",
            *(
                f"| {a[1]} | `{a[0]}` | | {b[1]} | `{b[0]}` |"
                for a, b in zip(prof["self"], prof["inclusive"], strict=False)
            ),
        ]
    return "\n".join(out) + "\n"
