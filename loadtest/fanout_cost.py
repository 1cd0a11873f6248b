"""What fanning feed messages out costs the gateway's hub, in instructions (repeatable on
a shared box, unlike CPU seconds).

    python -m loadtest.fanout_cost [--clients N] [--messages M] [--dense K] [--updates]
    python -m loadtest.fanout_cost --callgrind [same options]

`gateway.hub.Hub.on_message` is driven as the feed subscriber drives it, with `--clients`
clients of one tenant, each subscribed once to the whole feed as the bench's load
clients are (same person, same sub id), each with a `gateway.wire.DirectWriter` whose
transport throws the bytes away: what is measured is the hub's work (parsing the
message, routing, patches, the flush window, building and handing out the bytes), not
the kernel's. The loop's clock is simulated: by default messages come 40 ms apart (25/s:
each goes out at once, as in the bench's 25/s phase); with `--dense K`, K messages come
within one flush window, then the window ends (`Hub.flush`). Messages are fresh exams, as
in the bench's fan-out phases; `--updates` makes them changes of 50 exams the clients
hold (patches). `--baseline` drives the bare baseline's fan-out instead
(`loadtest.baseline`: `websockets.broadcast` of each message to every connection).

With `--callgrind` the harness runs itself twice under `valgrind --tool=callgrind` (M
and 2M messages) and prints the difference per message and per delivery, so start-up
and setup cancel out. Without it, it prints CPU seconds (noisy on a shared box).
"""

from __future__ import annotations

import argparse
import asyncio
import json
import re
import subprocess
import sys
import time
from typing import Any

import orjson
from websockets.protocol import State

from gateway.hub import Client, Hub
from gateway.routing import Subscription
from gateway.wire import DirectWriter
from worklist_cache.feed import feed_message
from worklist_cache.views import Scope, View

__all__ = ["main", "run"]

TENANT = "northwind"
EPOCH = "e1"


class _NullTransport:
    def __init__(self) -> None:
        self.bytes = 0

    def write(self, data: bytes) -> None:
        self.bytes += len(data)

    def is_closing(self) -> bool:
        return False


class _Conn:
    state = State.OPEN
    extensions: list[Any] = []


class _Proto:
    """What `DirectWriter` reads of uvicorn's websockets-sansio protocol."""

    def __init__(self) -> None:
        self.transport = _NullTransport()
        self.conn = _Conn()
        self.writable = asyncio.Event()
        self.writable.set()
        self.close_sent = False
        self.live = True  # (`gateway.serverproto`'s protocol keeps `ready`'s answer here)


def _row(n: int, version: int, now: int) -> dict[str, Any]:
    """A delta as the relay publishes it (the bench's synthetic exam)."""
    return {
        "op": "upsert",
        "tenant": TENANT,
        "site": "NW-GEN",
        "exam_id": f"F-{n:07d}",
        "version": version,
        "status": "SCHEDULED" if version % 2 else "ARRIVED",
        "priority": "ROUTINE",
        "modality": "CT",
        "procedure": "CT head without contrast",
        "body_part": "HEAD",
        "subspecialty": "neuro",
        "mrn": f"BM{n:08d}",
        "patient_name": "BENCHMARK^PATIENT",
        "scheduled_at": now,
        "tat_due_at": now + 3_600_000,
        "updated_at": now + version,
    }


def messages(count: int, updates: bool) -> list[bytes]:
    now = 1_750_000_000_000
    out = []
    for i in range(count):
        n, version = (i % 50, 1 + i // 50) if updates else (i, 1)
        row = _row(n, version, now)
        out.append(feed_message(EPOCH, f"{now + i}-0", orjson.dumps(row)).encode())
    return out


async def run_baseline(clients: int, count: int) -> dict[str, Any]:
    """The bare baseline's fan-out (`loadtest.baseline`): `websockets.broadcast` of each
    message as it came, to connections whose transport throws the bytes away."""
    from websockets.asyncio.server import ServerConnection, broadcast
    from websockets.server import ServerProtocol

    conns, transports = [], []
    for _ in range(clients):
        conn = ServerConnection(ServerProtocol(), None, ping_interval=None)  # type: ignore[arg-type]
        conn.protocol.state = State.OPEN
        transport = _NullTransport()
        conn.transport = transport  # type: ignore[assignment]
        conns.append(conn)
        transports.append(transport)
    raws = messages(count, False)
    started = time.process_time()
    for raw in raws:
        broadcast(conns, raw, text=True)
    cpu = time.process_time() - started
    return {
        "clients": clients,
        "messages": count,
        "bytes": sum(t.bytes for t in transports),
        "cpu_s": round(cpu, 4),
    }


async def run(clients: int, count: int, dense: int, updates: bool) -> dict[str, Any]:
    loop = asyncio.get_running_loop()
    clock = [1000.0]
    loop.time = lambda: clock[0]  # type: ignore[method-assign]
    try:
        return _drive(clients, count, dense, updates, clock)
    finally:
        del loop.time  # the loop's own clock again


def _drive(
    clients: int, count: int, dense: int, updates: bool, clock: list[float]
) -> dict[str, Any]:
    hub = Hub(flush_s=0.010)
    view = View(statuses=[])
    scope = Scope(TENANT)
    writers = []
    for _ in range(clients):
        client = Client(1000, lambda _c: None, max_bytes=4 << 20, hub=hub)
        proto = _Proto()
        client.writer = DirectWriter(proto)
        writers.append(proto.transport)
        sub = Subscription("s1", TENANT, view, view.matcher("bench-reader"), scope)
        sub.pending, sub.epoch = None, EPOCH
        client.subs["s1"] = sub
        hub.attach(client, TENANT)
    if updates:  # the clients hold the 50 exams at version 0 (their snapshot)
        for client in hub._by_tenant[TENANT]:
            sub = client.subs["s1"]
            sub.held = {f"F-{n:07d}": 0 for n in range(50)}
    raws = messages(count, updates)
    on_message = hub.on_message
    started = time.process_time()
    for i, raw in enumerate(raws):
        if dense:
            clock[0] += 0.010 / dense
            on_message(TENANT, raw)
            if (i + 1) % dense == 0:
                hub.flush()
        else:
            clock[0] += 0.040
            on_message(TENANT, raw)
    hub.flush()
    cpu = time.process_time() - started
    return {
        "clients": clients,
        "messages": count,
        "bytes": sum(w.bytes for w in writers),
        "frames_out": hub.frames_out,
        "cpu_s": round(cpu, 4),
    }


_COLLECTED = re.compile(r"Collected\s*:\s*(\d+)")


def _instructions(argv: list[str]) -> int:
    cmd = ["valgrind", "--tool=callgrind", "--callgrind-out-file=/dev/null", *argv]
    proc = subprocess.run(cmd, capture_output=True, text=True, check=True)
    found = _COLLECTED.findall(proc.stderr)
    if not found:
        raise RuntimeError("callgrind printed no instruction count")
    return int(found[-1])


def callgrind(args: argparse.Namespace) -> dict[str, Any]:
    base = [sys.executable, "-m", "loadtest.fanout_cost", "--clients", str(args.clients)]
    base += ["--dense", str(args.dense)] + (["--updates"] if args.updates else [])
    base += ["--baseline"] if args.baseline else []
    small = _instructions([*base, "--messages", str(args.messages)])
    large = _instructions([*base, "--messages", str(2 * args.messages)])
    per_message = (large - small) / args.messages
    return {
        "clients": args.clients,
        "messages": args.messages,
        "dense": args.dense,
        "updates": args.updates,
        "baseline": args.baseline,
        "instructions_per_message": round(per_message),
        "instructions_per_delivery": round(per_message / args.clients),
    }


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--clients", type=int, default=200)
    parser.add_argument("--messages", type=int, default=100)
    parser.add_argument("--dense", type=int, default=0, help="messages per flush window")
    parser.add_argument("--updates", action="store_true", help="changes of held exams")
    parser.add_argument(
        "--baseline", action="store_true", help="websockets.broadcast instead of the hub"
    )
    parser.add_argument("--callgrind", action="store_true")
    args = parser.parse_args()
    if args.callgrind:
        print(json.dumps(callgrind(args)))
        return
    if args.baseline:
        print(json.dumps(asyncio.run(run_baseline(args.clients, args.messages))))
        return
    print(json.dumps(asyncio.run(run(args.clients, args.messages, args.dense, args.updates))))


if __name__ == "__main__":
    main()
