"""The summary table: each figure beside its target, PASS or MISS."""

from __future__ import annotations

from collections.abc import Mapping
from typing import Any

from loadtest.bench.config import CLAIMERS, E2E_RATE

__all__ = ["fmt", "pair", "verdicts"]


def fmt(value: Any, unit: str = "") -> str:
    if value is None:
        return "n/a"
    if isinstance(value, bool):
        return "yes" if value else "no"
    if isinstance(value, float):
        text = f"{value:,.1f}" if abs(value) >= 10 else f"{value:.2f}"
    else:
        text = f"{value:,}" if isinstance(value, int) else str(value)
    return f"{text} {unit}".strip()


def pair(stats: Mapping[str, Any] | None) -> str:
    if not stats:
        return "n/a"
    return f"{fmt(stats.get('p50_ms'))} / {fmt(stats.get('p99_ms'))}"


def _verdict(ok: bool | None) -> str:
    return "n/a" if ok is None else ("PASS" if ok else "MISS")


def _lt(value: float | None, limit: float) -> bool | None:
    return None if value is None else value < limit


def _ratio(gw: float | None, base: float | None) -> str:
    return "n/a" if gw is None or not base else f"{gw / base:.2f}x"


def _within(gw: float | None, base: float | None, factor: float) -> bool | None:
    return None if gw is None or base is None else gw <= factor * base


def verdicts(r: Mapping[str, Any]) -> list[tuple[str, str, str, str]]:
    """(figure, measured, target, verdict) rows of the summary table."""
    return [
        *_verdicts(r),
        (
            f"HL7 over MLLP: messages/s, ACK p50 / p99 ({r.get('hl7_messages')} messages, "
            f"{r.get('hl7_connections')} connections)",
            f"{fmt(r.get('hl7_messages_per_s'), '/s')}, "
            f"{fmt(r.get('hl7_ack_p50_ms'))} / {fmt(r.get('hl7_ack_p99_ms'), 'ms')}",
            "every message acknowledged AA once",
            "PASS"
            if r.get("hl7_refused") == 0 and r.get("hl7_accepted") == r.get("hl7_messages")
            else "MISS",
        ),
    ]


def _verdicts(r: Mapping[str, Any]) -> list[tuple[str, str, str, str]]:
    scale = r["scale"]
    fan_ok = _lt(r["fanout_p99_ms_at_200"], 100)
    if fan_ok is not None:
        fan_ok = fan_ok and r.get("fanout_lost_at_200") == 0
    gw, base = r["gateway_cpu_us_per_delta"], r["baseline_cpu_us_per_delta"]
    gw25, base25 = r.get("gateway_cpu_us_per_delta_at_25"), r.get("baseline_cpu_us_per_delta_at_25")
    # A baseline that lost deliveries measured something else (its CPU over fewer
    # deliveries, its latency over the survivors): nothing is judged against it.
    base_lost = r.get("baseline_lost")
    judged = base_lost == 0

    def against(ok: bool | None) -> str:
        return _verdict(ok if judged else None)

    ceiling = r["dynamo_ceiling_writes_per_s"]
    rate = r["e2e_updates_per_s"]
    rows = [
        (
            "DynamoDB Local write ceiling (Python writer)",
            fmt(ceiling, "writes/s"),
            "~300 writes/s (reference)",
            "info",
        ),
        (
            "end-to-end write rate (writes through our store, write-through on)",
            fmt(rate, "updates/s"),
            f">= {E2E_RATE} updates/s",
            _verdict(None if rate is None else rate >= E2E_RATE),
        ),
        (
            # From the store's `updated_at`, stamped before the write is sent: DynamoDB
            # Local's own time to acknowledge is in it, and the product's goal (the next
            # row) starts at the acknowledgement.
            f"end-to-end p50 / p99 / max from the store's stamp, {r['clients']} clients",
            f"{fmt(r['e2e_p50_ms'])} / {fmt(r['e2e_p99_ms'])} / {fmt(r.get('e2e_max_ms'))} ms",
            "(DynamoDB Local's own write time included)",
            "info",
        ),
        (
            "end-to-end p50 / p99 from the write's acknowledgement",
            f"{fmt(r.get('e2e_p50_ms_from_ack'))} / {fmt(r.get('e2e_p99_ms_from_ack'))} ms",
            "p99 < 150 ms (the product's own definition)",
            _verdict(_lt(r.get("e2e_p99_ms_from_ack"), 150)),
        ),
        (
            "end-to-end lost deliveries",
            fmt(r.get("e2e_lost")),
            "0",
            _verdict(None if r.get("e2e_lost") is None else r["e2e_lost"] == 0),
        ),
        (
            "end-to-end p50 / p99 from the acknowledgement, the relay alone (write-through off)",
            f"{fmt(r.get('e2e_relay_only_p50_ms_from_ack'))} / "
            f"{fmt(r.get('e2e_relay_only_p99_ms_from_ack'))} ms "
            f"at {fmt(r.get('e2e_relay_only_updates_per_s'), 'updates/s')}",
            "(for comparison)",
            "info",
        ),
        (
            "end-to-end p50 / p99 from the acknowledgement at 90 % of the ceiling",
            f"{fmt(r.get('e2e_ceiling_p50_ms_from_ack'))} / "
            f"{fmt(r.get('e2e_ceiling_p99_ms_from_ack'))} ms "
            f"at {fmt(r.get('e2e_ceiling_updates_per_s'), 'updates/s')}, "
            f"lost {fmt(r.get('e2e_ceiling_lost'))}",
            "(DynamoDB Local alone takes a core)",
            "info",
        ),
        _storm_row(r),
        _snapshot_row(r),
        _cluster_row(r),
        (
            "bytes per delivery, end to end (patches; as whole rows)",
            f"{fmt(r.get('bytes_per_delivery'))}; {fmt(r.get('bytes_per_delivery_full_rows'))} B "
            f"({fmt(r.get('e2e_patches'))} patches, "
            f"{fmt(r.get('e2e_patch_mismatches'))} asked for the row)",
            "fewer than whole rows",
            _verdict(
                None
                if r.get("bytes_per_delivery") is None
                or r.get("bytes_per_delivery_full_rows") is None
                else r["bytes_per_delivery"] < r["bytes_per_delivery_full_rows"]
            ),
        ),
        (
            "fan-out p50 / p99 at 25 updates/s, side by side (gateway; baseline)",
            f"{fmt(r.get('fanout_p50_ms_at_25'))} / {fmt(r.get('fanout_p99_ms_at_25'))} ms; "
            f"{fmt(r.get('baseline_p50_ms_at_25'))} / {fmt(r.get('baseline_p99_ms_at_25'))} ms",
            "p99 <= the baseline's",
            against(_within(r.get("fanout_p99_ms_at_25"), r.get("baseline_p99_ms_at_25"), 1.0)),
        ),
        (
            "gateway / baseline CPU per delivered delta at 25/s (no backlog)",
            f"{fmt(gw25)} / {fmt(base25, 'us')} = {_ratio(gw25, base25)}",
            "<= 1.0x",
            against(_within(gw25, base25, 1.0)),
        ),
        (
            "fan-out p50 / p99 at 200 updates/s",
            f"{fmt(r['fanout_p50_ms_at_200'])} / {fmt(r['fanout_p99_ms_at_200'])} ms",
            "p99 < 100 ms, nothing lost",
            _verdict(fan_ok),
        ),
        (
            "fan-out p50 / p99 at 1,000 updates/s",
            f"{fmt(r['fanout_p50_ms_at_1000'])} / {fmt(r['fanout_p99_ms_at_1000'])} ms",
            "(no target)",
            "info",
        ),
        (
            "fan-out lost deliveries (25/s + 200/s + 1,000/s)",
            fmt(r["fanout_lost"]),
            "0",
            _verdict(r["fanout_lost"] == 0),
        ),
        (
            "gateway CPU per delivered delta (200/s)",
            f"{fmt(gw, 'us')} = {_ratio(gw, base)} the baseline's ({fmt(base, 'us')})",
            "<= 0.5x the baseline's (batching)",
            against(_within(gw, base, 0.5)),
        ),
        (
            "baseline lost deliveries (25/s + 200/s + 1,000/s)",
            fmt(base_lost),
            "0 (else nothing is judged against it)",
            _verdict(None if base_lost is None else base_lost == 0),
        ),
        (
            "baseline CPU per delivered delta (200/s)",
            fmt(base, "us"),
            "~14 us (reference)",
            "info",
        ),
        (
            "gateway / baseline CPU per delta at 1,000/s",
            f"{fmt(r.get('gateway_cpu_us_per_delta_at_1000'))} / "
            f"{fmt(r.get('baseline_cpu_us_per_delta_at_1000'))} us",
            "(no target)",
            "info",
        ),
        (
            "gateway: full collections and the longest one's pause over e2e and fan-out",
            f"{fmt(r.get('gateway_gc_full_collections'))}; "
            f"{fmt(r.get('gateway_gc_pause_max_ms'), 'ms')}",
            "(info: every client waits for it)",
            "info",
        ),
        (
            "gateway: feed messages read > 100 ms after Redis stamped them, of all read; "
            "flush windows stretched (e2e and fan-out)",
            f"{fmt(r.get('gateway_feed_late_messages'))} of "
            f"{fmt(r.get('gateway_feed_messages'))}; "
            f"{fmt(r.get('gateway_flush_windows_stretched'))}",
            "(info: the node's backlog)",
            "info",
        ),
        (
            "idle sessions held by one gateway",
            fmt(r["max_connections"]),
            f">= {scale['idle_connections']:,}",
            _verdict(
                None
                if r["max_connections"] is None
                else r["max_connections"] >= scale["idle_connections"]
            ),
        ),
        (
            "memory per idle session",
            fmt(r["kb_per_connection"], "KB"),
            "<= 20 KB",
            _verdict(None if r["kb_per_connection"] is None else r["kb_per_connection"] <= 20),
        ),
        (
            "memory per idle connection: gateway / bare websockets baseline",
            f"{fmt(r['kb_per_connection'])} / {fmt(r.get('baseline_kb_per_connection'), 'KB')}"
            f" = {_ratio(r['kb_per_connection'], r.get('baseline_kb_per_connection'))}",
            "(no target)",
            "info",
        ),
        (
            "claim round trip p99, idle gateway (websocket)",
            fmt(r.get("claim_p99_ms_idle"), "ms"),
            "p99 < 30 ms",
            _verdict(_lt(r.get("claim_p99_ms_idle"), 30)),
        ),
        (
            f"claim round trip p50 / p99 ({r.get('claim_measured_at')}"
            + (
                f", while {r['clients']} clients receive {r['claim_under_fanout_per_s']} updates/s)"
                if r.get("claim_under_fanout_per_s")
                else ")"
            ),
            f"{fmt(r.get('claim_p50_ms'))} / {fmt(r['claim_p99_ms'])} ms",
            "p99 < 60 ms" if r.get("claim_under_fanout_per_s") else "p99 < 30 ms",
            _verdict(_lt(r["claim_p99_ms"], 60 if r.get("claim_under_fanout_per_s") else 30)),
        ),
        (
            "claim round trip p50 / p99 at the store (for comparison)",
            f"{fmt(r.get('claim_p50_ms_store'))} / {fmt(r.get('claim_p99_ms_store'))} ms",
            "(no target)",
            "info",
        ),
        (
            f"double claims in {fmt(r['claim_rounds'])} rounds of {CLAIMERS}"
            + (
                f" (+ {r['claim_rounds_store']} at the store)"
                if r.get("claim_rounds_store")
                else ""
            ),
            fmt(r["double_claims"]),
            "0",
            _verdict(None if r["double_claims"] is None else r["double_claims"] == 0),
        ),
        (
            "client-limited (a load client near 100 % of a core)",
            fmt(r["client_limited"]),
            "no",
            _verdict(None if r["client_limited"] is None else not r["client_limited"]),
        ),
    ]
    return rows


def _storm_row(r: Mapping[str, Any]) -> tuple[str, str, str, str]:
    n = r.get("storm_sessions")
    if r.get("storm_resubscribed_s") is None or not n:
        return ("reconnect storm of one tenant", "not run", "-", _verdict(None))
    gw = r.get("storm_gateway_cpu_growth")
    redis = r.get("storm_redis_cpu_growth")
    linear = None if gw is None or redis is None else gw <= 1.5 and redis <= 1.5
    ok = None if linear is None else linear and r.get("storm_resubscribed") == n
    return (
        f"reconnect storm: {n:,} sessions of one tenant resubscribed; CPU per session "
        f"at N over N/2 (gateway, Redis)",
        f"{fmt(r.get('storm_resubscribed'))} in {fmt(r['storm_resubscribed_s'], 's')}; "
        f"{fmt(r.get('storm_gateway_cpu_us_per_session_at_half'))} -> "
        f"{fmt(r.get('storm_gateway_cpu_us_per_session'))} us ({fmt(gw)}x), "
        f"{fmt(r.get('storm_redis_cpu_us_per_session_at_half'))} -> "
        f"{fmt(r.get('storm_redis_cpu_us_per_session'))} us ({fmt(redis)}x)",
        "all resubscribed; per session at N within 1.5x of N/2",
        _verdict(ok),
    )


def _snapshot_row(r: Mapping[str, Any]) -> tuple[str, str, str, str]:
    cost = r.get("snapshot_large_tenant") or {}
    return (
        f"snapshot / resume p99, one tenant with {fmt(cost.get('open'))} open and "
        f"{fmt(cost.get('closed'))} closed exams (slowest view; Redis memory)",
        f"{fmt(r.get('snapshot_p99_ms_large_tenant'), 'ms')}; "
        f"{fmt(cost.get('used_memory_mb'), 'MB')}",
        "bounded as history grows (info)",
        _verdict(None),
    )


def _cluster_row(r: Mapping[str, Any]) -> tuple[str, str, str, str]:
    by_nodes = r.get("cluster_cpu_us_per_delta_by_nodes") or {}
    values = [v for v in by_nodes.values() if v is not None]
    flat = None if len(values) < 2 else max(values) <= 1.25 * min(values)
    return (
        "Redis Cluster: gateway CPU per delivery with 1 / 2 / 3 nodes (25/s)",
        " / ".join(fmt(by_nodes.get(n)) for n in ("1", "2", "3")) + " us"
        if by_nodes
        else "not run at this scale",
        "flat (within 25 %)",
        _verdict(flat),
    )
