"""What a load client costs per received frame: `python -m loadtest.client_cost`.

A `websockets` server in a child process (its CPU is not counted) broadcasts N delta
frames, shaped like the gateway's, to M connections held by this process's
`LoadProcess` (the benchmark's load client, `BENCH_CLIENT` as set, or both with
`--client both`). This process's user+system CPU over the receive window, divided by
the frames received, is the figure; RSS growth per connection is measured while the
connections are opened. Prints one JSON line per client.

Measured 2026-12-05 (load average 2.2-2.8 on 2 shared cores), 2,000 connections x 100
frames of 444 bytes at 100/s: raw 10.6 us CPU per frame and 3.1 KB RSS per connection,
`websockets` 16.1 us and 15.0 KB (and it fell behind: p50 725 ms against 23.5 ms); at
500 connections x 400 frames: raw 10.8-11.2 us, `websockets` 18.6-20.5 us per frame.
2026-12-06, 500 x 200 frames: raw 13.3 us per frame before each distinct frame was parsed
once per process (`Phase.parsed`), 10.9 us after; of that, `data_received` and
`on_message` take about 2.5 us, and the rest is the event loop and the socket.
"""

from __future__ import annotations

import argparse
import asyncio
import os
import resource
import subprocess
import sys
import time
from typing import Any

import orjson

from loadtest.loadclients import LoadProcess, raise_nofile_limit

PREFIX = "cc-"


def _delta_frame(n: int) -> bytes:
    row = {
        "exam_id": f"{PREFIX}{n}",
        "version": 1,
        "updated_at": time.time() * 1000.0,
        "tenant": "northwind",
        "site": "NW-ORT",
        "status": "COMPLETED",
        "modality": "MR",
        "body_part": "KNEE",
        "subspecialty": "MSK",
        "priority": "ROUTINE",
        "accession": f"ACC{n:08d}",
        "patient_id": f"P{n:07d}",
        "description": "MR KNEE WITHOUT CONTRAST LEFT",
        "scheduled_at": "2026-12-05T10:00:00Z",
        "completed_at": "2026-12-05T10:30:00Z",
        "claimed_by": None,
        "claimed_at": None,
    }
    return orjson.dumps({"type": "delta", "sub": "s1", "delta": row})


async def _serve(frames: int, rate: float) -> None:
    """The child: serve on a free port, print it, broadcast when stdin says go."""
    from websockets.asyncio.server import ServerConnection, broadcast, serve

    clients: set[ServerConnection] = set()

    async def handler(conn: ServerConnection) -> None:
        clients.add(conn)
        try:
            await conn.send('{"type":"welcome","protocol":"cost"}')
            async for _ in conn:
                pass
        finally:
            clients.discard(conn)

    loop = asyncio.get_running_loop()
    reader = asyncio.StreamReader()
    await loop.connect_read_pipe(lambda: asyncio.StreamReaderProtocol(reader), sys.stdin)
    async with serve(handler, "127.0.0.1", 0, compression=None) as server:
        print(server.sockets[0].getsockname()[1], flush=True)
        while await reader.readline():
            tick = 0.005
            per_tick = max(1, round(rate * tick))
            sent = 0
            while sent < frames:
                for _ in range(min(per_tick, frames - sent)):
                    broadcast(clients, _delta_frame(sent).decode())
                    sent += 1
                await asyncio.sleep(tick)
            print("done", flush=True)


def _rss_kb() -> int:
    with open(f"/proc/{os.getpid()}/statm") as f:
        return int(f.read().split()[1]) * (os.sysconf("SC_PAGE_SIZE") // 1024)


def _cpu() -> float:
    r = resource.getrusage(resource.RUSAGE_SELF)
    return r.ru_utime + r.ru_stime


async def measure(client: str, conns: int, frames: int, rate: float) -> dict[str, Any]:
    os.environ["BENCH_CLIENT"] = client
    server = await asyncio.create_subprocess_exec(
        sys.executable,
        "-m",
        "loadtest.client_cost",
        "--serve",
        "--frames",
        str(frames),
        "--rate",
        str(rate),
        stdin=asyncio.subprocess.PIPE,
        stdout=asyncio.subprocess.PIPE,
    )
    assert server.stdin is not None and server.stdout is not None
    try:
        port = int(await server.stdout.readline())
        process = LoadProcess("cost")
        rss0 = _rss_kb()
        opened = await process.open(
            f"ws://127.0.0.1:{port}/ws",
            conns,
            tenant="northwind",
            view=None,
            secret=None,
            concurrency=100,
        )
        rss1 = _rss_kb()
        process.start_phase(PREFIX, 1)
        cpu0, t0 = _cpu(), time.monotonic()
        server.stdin.write(b"go\n")
        await server.stdin.drain()
        await server.stdout.readline()  # the server sent everything
        expected = opened["opened"] * frames
        deadline = time.monotonic() + 120
        # Polling (no hook in the hot path to set an event from): 10 ms steps.
        while process.phase.delivered < expected and time.monotonic() < deadline:  # noqa: ASYNC110
            await asyncio.sleep(0.01)
        cpu1, t1 = _cpu(), time.monotonic()
        phase = process.phase
        await process.close_all()
        return {
            "client": client,
            "conns": opened["opened"],
            "frames": phase.frames,
            "delivered": phase.delivered,
            "expected": expected,
            "cpu_s": round(cpu1 - cpu0, 3),
            "wall_s": round(t1 - t0, 3),
            "cpu_us_per_frame": round((cpu1 - cpu0) / max(1, phase.frames) * 1e6, 2),
            "rss_kb_per_conn": round((rss1 - rss0) / max(1, opened["opened"]), 2),
            "latency_p50_ms": round(sorted(phase.latencies)[len(phase.latencies) // 2], 1)
            if phase.latencies
            else None,
        }
    finally:
        server.stdin.close()
        await server.wait()


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--client", choices=["raw", "websockets", "both"], default="both")
    parser.add_argument("--conns", type=int, default=500)
    parser.add_argument("--frames", type=int, default=200, help="frames per connection")
    parser.add_argument("--rate", type=float, default=100.0, help="frames per second")
    parser.add_argument("--serve", action="store_true", help=argparse.SUPPRESS)
    args = parser.parse_args()
    raise_nofile_limit()
    import uvloop

    if args.serve:
        with asyncio.Runner(loop_factory=uvloop.new_event_loop) as runner:
            runner.run(_serve(args.frames, args.rate))
        return
    if args.client == "both":
        # Each client in a fresh process: RSS per connection is not muddled by the other's.
        for client in ("raw", "websockets"):
            argv = [sys.executable, "-m", "loadtest.client_cost", "--client", client]
            argv += ["--conns", str(args.conns), "--frames", str(args.frames)]
            subprocess.run([*argv, "--rate", str(args.rate)], check=True)
        return
    with asyncio.Runner(loop_factory=uvloop.new_event_loop) as runner:
        result = runner.run(measure(args.client, args.conns, args.frames, args.rate))
    print(orjson.dumps(result).decode(), flush=True)


if __name__ == "__main__":
    main()
