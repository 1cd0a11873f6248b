"""Benchmark load clients: `python -m loadtest.loadclients`, one process holding many
WebSocket connections, driven by the benchmark (`loadtest.bench`) over stdin/stdout.

The orchestrator writes one JSON command per line on stdin and reads one JSON reply
per line on stdout (logs go to stderr). A process opens its connections, subscribes
them, and then only listens: for every delta it records the receive time minus the
delta's `updated_at` and marks the delta as received on that connection. A `report`
writes the raw latencies and per-delta delivery counts to an `.npz` file, so the
orchestrator computes exact percentiles and losses over every (delta, client) pair.

A `patch` (only the changed fields, on the version named `base`) counts as its delta
when the connection holds that base (the newest version it saw of the exam); else the
connection asks for the row (`row` request), as the protocol says, and the `row` reply
counts instead. Every received frame's size is added up (`bytes`).

Which deltas belong to a phase is told by the exam id: the phase names a `prefix` and a
`stride`, and the delta of exam `{prefix}{n}` at version `v` is key `n * stride + v - 1`.

Every connection goes through `open_session`, the one place that speaks the protocol's
opening (welcome, then `auth` when a token is given). The client is `loadtest.rawws` (a
raw `asyncio.Protocol` calling `on_message` synchronously per frame: no task per
connection, no wake-up per message) unless `BENCH_CLIENT=websockets` asks for the
`websockets` asyncio client (a task per connection), kept for comparison.
The process exits when its stdin closes, so an orchestrator that dies takes its clients with it.
"""

from __future__ import annotations

import argparse
import array
import asyncio
import contextlib
import importlib
import importlib.util
import logging
import os
import resource
import signal
import sys
import time
from collections import Counter
from collections.abc import Mapping, Sequence
from functools import partial
from pathlib import Path
from typing import Any, Protocol

import orjson
from websockets.asyncio.client import ClientConnection, connect
from websockets.exceptions import ConnectionClosed

from loadtest import rawws

log = logging.getLogger("loadtest.loadclients")

Frame = dict[str, Any]
Reply = dict[str, Any]
# What a received frame holds, for counting (`LoadProcess._parse`): one entry per delta,
# patch or other frame in it, led by its kind.
Entry = tuple[Any, ...]
Parsed = tuple[int, bool, tuple[Entry, ...]]  # (characters, a batch?, entries)
_DELTA, _PATCH, _FOREIGN, _OTHER, _PATCH_ELSE = range(5)
# Distinct frames remembered (`Phase.parsed`); when full, the memo starts afresh.
PARSED_KEPT = 1_024

# A connection that is not open, welcomed and authenticated by then has failed.
OPEN_TIMEOUT = 30.0

CLIENTS = ("raw", "websockets")


def client_kind() -> str:
    """Which WebSocket client the load clients use: `BENCH_CLIENT`, `raw` by default."""
    kind = os.environ.get("BENCH_CLIENT", "raw")
    if kind not in CLIENTS:
        raise ValueError(f"BENCH_CLIENT must be one of {', '.join(CLIENTS)}, not {kind!r}")
    return kind


class Conn(Protocol):
    """What callers of `open_session` use: both clients have it."""

    @property
    def close_code(self) -> int | None: ...

    async def send(self, message: str, /) -> None: ...

    async def recv(self) -> str | bytes: ...

    async def close(self) -> None: ...


class SessionError(Exception):
    """The server refused or garbled the opening of a session (welcome, auth, subscribe)."""


def raise_nofile_limit() -> int:
    """Lift this process's open-file limit to its hard limit; returns the soft limit."""
    soft, hard = resource.getrlimit(resource.RLIMIT_NOFILE)
    target = hard if hard != resource.RLIM_INFINITY else max(soft, 1 << 20)
    if soft < target:
        with contextlib.suppress(ValueError, OSError):
            resource.setrlimit(resource.RLIMIT_NOFILE, (target, hard))
    return resource.getrlimit(resource.RLIMIT_NOFILE)[0]


# ---- the protocol's opening ----------------------------------------------------------


def auth_available() -> bool:
    """True once the gateway authenticates sessions (gateway/auth.py exists)."""
    return importlib.util.find_spec("gateway.auth") is not None


def mint_bench_token(secret: str, *, sub: str, tenant: str, ttl_s: int = 3600) -> str:
    """An admin token of `tenant` for every site: what a benchmark user may see."""
    auth: Any = importlib.import_module("gateway.auth")
    token = auth.mint_token(
        secret,
        sub=sub,
        name=f"Bench Reader {sub}",
        tenant=tenant,
        roles=["admin"],
        sites=[],
        subspecialties=[],
        ttl_s=ttl_s,
    )
    return str(token)


async def _next_frame(conn: Conn, timeout: float) -> Frame:
    raw = await asyncio.wait_for(conn.recv(), timeout)
    frame = orjson.loads(raw)
    if not isinstance(frame, dict):
        raise SessionError(f"expected a JSON object, got {type(frame).__name__}")
    return frame


async def open_session(url: str, token: str | None, *, timeout: float = OPEN_TIMEOUT) -> Conn:
    """Connect, read `welcome`, authenticate when `token` is given; an open session.

    Compression is off: every load client would otherwise cost the server one deflate
    per frame, and the bare baseline is measured without it too.
    """
    conn: Conn
    if client_kind() == "raw":
        conn = await rawws.connect(url, timeout=timeout)
    else:
        conn = await connect(
            url,
            compression=None,
            open_timeout=timeout,
            ping_interval=None,  # the server pings; the client only answers
            close_timeout=2,
            max_size=None,
            max_queue=256,
        )
    try:
        welcome = await _next_frame(conn, timeout)
        if welcome.get("type") != "welcome":
            raise SessionError(f"expected welcome, got {welcome.get('type')!r}")
        if token is not None:
            await conn.send(orjson.dumps({"type": "auth", "id": "a1", "token": token}).decode())
            while True:
                reply = await _next_frame(conn, timeout)
                if reply.get("id") != "a1":
                    continue
                if reply.get("type") != "authenticated":
                    raise SessionError(f"auth refused: {reply.get('code')} {reply.get('message')}")
                break
    except BaseException:
        with contextlib.suppress(Exception):
            await asyncio.wait_for(conn.close(), 2)
        raise
    return conn


async def subscribe(
    conn: Conn,
    tenant: str,
    view: Mapping[str, Any],
    *,
    sub_id: str = "s1",
    timeout: float = OPEN_TIMEOUT,
) -> Frame:
    """Subscribe to a view; returns the snapshot (the frames before it are dropped)."""
    request = {"type": "subscribe", "id": sub_id, "tenant": tenant, "view": dict(view)}
    deadline = asyncio.get_running_loop().time() + timeout
    await conn.send(orjson.dumps(request).decode())
    while True:
        frame = await _next_frame(conn, timeout)
        if frame.get("id") != sub_id:
            continue
        if frame.get("code") == "unavailable" and asyncio.get_running_loop().time() < deadline:
            # The tenant's cache is being rebuilt: subscribe again shortly, as documented.
            await asyncio.sleep((frame.get("detail") or {}).get("retry_after_ms", 500) / 1000)
            await conn.send(orjson.dumps(request).decode())
            continue
        if frame.get("type") != "snapshot":
            raise SessionError(f"subscribe refused: {frame.get('code')} {frame.get('message')}")
        return frame


# ---- one process's connections -------------------------------------------------------


class Receiver:
    """One connection and what it received during the current phase."""

    __slots__ = ("close_code", "conn", "newest", "received", "task")

    def __init__(self, conn: Conn) -> None:
        self.conn = conn
        # received[key] == 1 once the delta with that key arrived on this connection.
        self.received = bytearray()
        # newest[n]: the newest version of exam n seen (a coalescing server skips some).
        self.newest = bytearray()
        self.close_code: int | None = None
        self.task: asyncio.Task[None] | None = None


class Phase:
    """Counters of the current phase, shared by every connection of the process."""

    def __init__(self, prefix: str = "", stride: int = 1) -> None:
        self.prefix = prefix
        self.plen = len(prefix)
        self.stride = stride
        self.latencies: array.array[float] = array.array("f")
        self.keys: array.array[int] = array.array("i")  # the delta of each latency
        self.delivered = 0
        # Versions received or made moot by a newer one, summed over connections.
        self.covered = 0
        self.duplicates = 0
        self.foreign = 0  # deltas of another phase (or of nobody's)
        self.frames = 0
        self.batches = 0
        self.bytes = 0  # characters of every frame received
        self.patches = 0
        self.patch_mismatches = 0  # patches on another version: the row was asked for
        self.other: Counter[str] = Counter()
        # frame -> what it holds: the same bytes reach most connections, parsed once.
        self.parsed: dict[str | bytes, Parsed] = {}


class FeedProbe:
    """A Redis subscriber to a tenant's channel noting when each delta of a phase was
    published (epoch ms of its first sighting): where the relay's stage ends."""

    def __init__(self, redis_url: str, channel: str, prefix: str, stride: int) -> None:
        from redis.asyncio import Redis

        self._redis = Redis.from_url(redis_url)
        self._pubsub = self._redis.pubsub()
        self._channel = channel
        self._prefix = prefix
        self._stride = stride
        self.seen: dict[int, float] = {}
        self.sizes: dict[int, int] = {}  # key -> the published message's length
        self._task: asyncio.Task[None] | None = None

    async def start(self) -> None:
        await self._pubsub.subscribe(self._channel)
        self._task = asyncio.create_task(self._listen(), name="feed-probe")

    async def _listen(self) -> None:
        plen = len(self._prefix)
        async for message in self._pubsub.listen():
            if message["type"] != "message":
                continue
            now = time.time() * 1000.0
            delta = orjson.loads(message["data"])["delta"]
            exam_id: str = delta["exam_id"]
            if exam_id.startswith(self._prefix):
                key = int(exam_id[plen:]) * self._stride + int(delta["version"]) - 1
                self.seen.setdefault(key, now)
                self.sizes[key] = len(message["data"])

    async def stop(self) -> None:
        if self._task is not None:
            self._task.cancel()
            await asyncio.gather(self._task, return_exceptions=True)
        await self._pubsub.aclose()  # type: ignore[no-untyped-call]
        await self._redis.aclose()


def _closed(receiver: Receiver, code: int) -> None:
    receiver.close_code = code


class LoadProcess:
    def __init__(self, name: str) -> None:
        self.name = name
        self.receivers: list[Receiver] = []
        self.phase = Phase()
        self.probe: FeedProbe | None = None
        self._open_failures: Counter[str] = Counter()
        self._asking: set[asyncio.Task[None]] = set()  # row requests being sent

    # -- the hot path: one call per received frame --

    def on_message(self, receiver: Receiver, message: str | bytes) -> None:
        """Count one received frame on `receiver`. Its contents are parsed once per
        distinct frame (`Phase.parsed`): the server writes the same bytes to most
        clients, so a process holding hundreds of them parses each once; what is per
        connection (received, newest version, latency from this frame's receive time)
        is still counted per connection."""
        now = time.time() * 1000.0
        phase = self.phase
        phase.frames += 1
        parsed = phase.parsed.get(message)
        if parsed is None:
            parsed = self._parse(message)
        chars, batch, entries = parsed
        phase.bytes += chars
        if batch:
            phase.batches += 1
        for entry in entries:
            kind = entry[0]
            if kind == _DELTA:
                self._deliver(receiver, entry[1], entry[2], entry[3], now)
            elif kind == _PATCH:
                self._patch(receiver, entry, now)
            elif kind == _FOREIGN:
                phase.foreign += 1
            elif kind == _PATCH_ELSE:
                phase.patches += 1
            else:
                phase.other[entry[1]] += 1

    def _parse(self, message: str | bytes) -> Parsed:
        """What a frame holds, as entries `on_message` counts, remembered in the
        phase's memo (`Phase.parsed`)."""
        phase = self.phase
        if isinstance(message, bytes) and not message.isascii():
            chars = len(message.decode())  # characters, as the text client counts
        else:
            chars = len(message)
        frame = orjson.loads(message)
        kind = frame.get("type")
        entries: list[Entry] = []
        batch = False
        if kind == "delta":
            entries.append(self._delta_entry(frame["delta"]))
        elif kind == "patch":
            entries.extend(self._patch_entries(frame))
        elif kind == "batch":
            batch = True
            for inner in frame["frames"]:
                if inner.get("type") == "delta":
                    entries.append(self._delta_entry(inner["delta"]))
                elif inner.get("type") == "patch":
                    entries.extend(self._patch_entries(inner))
                else:
                    entries.append((_OTHER, str(inner.get("type"))))
        elif kind == "row" and frame.get("row") is not None:
            entries.append((_OTHER, "row"))
            entries.append(self._delta_entry(frame["row"]))
        elif kind is None and "delta" in frame:
            # The bare baseline forwards the feed's message as it is.
            entries.append(self._delta_entry(frame["delta"]))
        else:
            entries.append((_OTHER, str(kind)))
        parsed = (chars, batch, tuple(entries))
        if len(phase.parsed) >= PARSED_KEPT:
            phase.parsed.clear()  # (the same frame reaches its clients within moments)
        phase.parsed[message] = parsed
        return parsed

    def _delta_entry(self, delta: Frame) -> Entry:
        phase = self.phase
        if "updated_at" not in delta:
            return (_OTHER, "leave")  # a leave placeholder: no row, no latency
        exam_id: str = delta["exam_id"]
        if not exam_id.startswith(phase.prefix) or not phase.prefix:
            return (_FOREIGN,)
        n = int(exam_id[phase.plen :])
        return (_DELTA, n, min(int(delta["version"]), 255), float(delta["updated_at"]))

    def _patch_entries(self, frame: Frame) -> list[Entry]:
        phase = self.phase
        exam_id: str = frame["exam_id"]
        updated_at = frame["fields"].get("updated_at")
        if phase.prefix and exam_id.startswith(phase.prefix):
            n = int(exam_id[phase.plen :])
            version = min(int(frame["version"]), 255)
            return [(_PATCH, n, version, frame["base"], updated_at, frame["sub"], exam_id)]
        # Not of this phase: counted as a patch, then as what its delta would be.
        return [(_PATCH_ELSE,), (_OTHER, "leave") if updated_at is None else (_FOREIGN,)]

    def _patch(self, receiver: Receiver, entry: Entry, now: float) -> None:
        _, n, version, base, updated_at, sub, exam_id = entry
        phase = self.phase
        phase.patches += 1
        held = receiver.newest[n] if n < len(receiver.newest) else 0
        if held >= version:
            phase.duplicates += 1
            return
        if held != base:
            phase.patch_mismatches += 1
            self._ask_row(receiver, sub, exam_id)
            return
        if updated_at is None:
            phase.other["leave"] += 1
            return
        self._deliver(receiver, n, version, float(updated_at), now)

    def _ask_row(self, receiver: Receiver, sub: str, exam_id: str) -> None:
        request = {"type": "row", "id": f"row-{self.phase.patch_mismatches}", "sub": sub}
        request["exam_id"] = exam_id
        conn = receiver.conn
        if isinstance(conn, rawws.RawConnection):
            conn.send_text(orjson.dumps(request))
            return
        task = asyncio.create_task(conn.send(orjson.dumps(request).decode()))
        self._asking.add(task)
        task.add_done_callback(self._asking.discard)

    def _deliver(
        self, receiver: Receiver, n: int, version: int, updated_at: float, now: float
    ) -> None:
        """The delta of exam `n` at `version` arrived on `receiver` at `now`."""
        phase = self.phase
        newest = receiver.newest
        if n >= len(newest):
            newest.extend(bytes(n - len(newest) + 1024))
        if version > newest[n]:
            phase.covered += version - newest[n]
            newest[n] = version
        key = n * phase.stride + version - 1
        seen = receiver.received
        if key >= len(seen):
            seen.extend(bytes(key - len(seen) + 4096))
        if seen[key]:
            phase.duplicates += 1
            return
        seen[key] = 1
        phase.delivered += 1
        phase.latencies.append(now - updated_at)
        phase.keys.append(key)

    async def _listen(self, receiver: Receiver) -> None:
        conn = receiver.conn
        assert isinstance(conn, ClientConnection)
        try:
            async for message in conn:
                self.on_message(receiver, message)
        except ConnectionClosed:
            pass
        except Exception:
            log.exception("%s: a connection's listener failed", self.name)
        receiver.close_code = conn.close_code

    # -- commands --

    async def open(
        self,
        url: str,
        count: int,
        *,
        tenant: str | Sequence[str],
        view: Mapping[str, Any] | None,
        secret: str | None,
        concurrency: int,
        users: int = 0,
    ) -> Reply:
        """Open `count` sessions (and subscribe each to `view` unless it is None).

        With several tenants, session i belongs to tenant i modulo their number. Every
        session is the person `bench-reader`; with `users`, session i is
        `bench-reader-{i % users}` (a tenant with that many people, each with tabs).
        """
        tenants = [tenant] if isinstance(tenant, str) else list(tenant)
        limit = asyncio.Semaphore(max(1, concurrency))
        start = len(self.receivers)

        async def one(index: int) -> None:
            tenant = tenants[index % len(tenants)]
            token = None
            if secret is not None:
                sub = f"bench-reader-{index % users}" if users else "bench-reader"
                token = mint_bench_token(secret, sub=sub, tenant=tenant)
            async with limit:
                try:
                    conn = await open_session(url, token)
                except Exception as exc:
                    self._open_failures[f"{type(exc).__name__}: {exc}"[:200]] += 1
                    return
                try:
                    if view is not None:
                        await subscribe(conn, tenant, view)
                except Exception as exc:
                    self._open_failures[f"{type(exc).__name__}: {exc}"[:200]] += 1
                    with contextlib.suppress(Exception):
                        await asyncio.wait_for(conn.close(), 2)
                    return
            receiver = Receiver(conn)
            if isinstance(conn, rawws.RawConnection):
                conn.listen(partial(self.on_message, receiver), partial(_closed, receiver))
            else:
                receiver.task = asyncio.create_task(self._listen(receiver))
            self.receivers.append(receiver)

        self._open_failures.clear()
        await asyncio.gather(*(one(start + i) for i in range(count)))
        failures = self._open_failures.most_common(3)
        return {
            "opened": len(self.receivers) - start,
            "failed": sum(self._open_failures.values()),
            "errors": [f"{n} x {text}" for text, n in failures],
        }

    def start_phase(self, prefix: str, stride: int) -> Reply:
        self.phase = Phase(prefix, stride)
        for receiver in self.receivers:
            receiver.received = bytearray()
            receiver.newest = bytearray()
        return {"conns": self.open_count()}

    def open_count(self) -> int:
        return sum(1 for r in self.receivers if r.close_code is None)

    def progress(self) -> Reply:
        return {
            "delivered": self.phase.delivered,
            "covered": self.phase.covered,
            "frames": self.phase.frames,
            "bytes": self.phase.bytes,
            "open": self.open_count(),
        }

    def report(self, path: str) -> Reply:
        """Write the phase's raw data to `path` (.npz); reply with its counters.

        `received[k]`: connections that got delta k; `covered[k]`: connections that got
        delta k or a newer version of the same exam (a coalescing server may skip
        intermediate versions; only an exam left behind is a loss).
        """
        import numpy as np

        phase = self.phase
        stride = phase.stride
        width = max((len(r.received) for r in self.receivers), default=0)
        width = -(-width // stride) * stride  # whole exams
        received = np.zeros(width, dtype=np.int32)
        covered = np.zeros(width, dtype=np.int32)
        for r in self.receivers:
            bits = np.zeros(width, dtype=np.uint8)
            bits[: len(r.received)] = np.frombuffer(bytes(r.received), dtype=np.uint8)
            received += bits
            if stride > 1 and width:
                # Reverse cumulative max over each exam's versions: got v or later.
                per_exam = bits.reshape(-1, stride)[:, ::-1]
                bits = np.maximum.accumulate(per_exam, axis=1)[:, ::-1].reshape(-1)
            covered += bits
        latencies = np.frombuffer(phase.latencies, dtype=np.float32)
        keys = np.frombuffer(phase.keys, dtype=np.int32)
        np.savez(path, latencies=latencies, keys=keys, received=received, covered=covered)
        closed = Counter(str(r.close_code) for r in self.receivers if r.close_code is not None)
        return {
            "conns": len(self.receivers),
            "open": self.open_count(),
            "delivered": phase.delivered,
            "duplicates": phase.duplicates,
            "foreign": phase.foreign,
            "frames": phase.frames,
            "batches": phase.batches,
            "bytes": phase.bytes,
            "patches": phase.patches,
            "patch_mismatches": phase.patch_mismatches,
            "other": dict(phase.other),
            "closed": dict(closed),
        }

    async def start_probe(self, redis_url: str, channel: str, prefix: str, stride: int) -> Reply:
        if self.probe is not None:
            await self.probe.stop()
        self.probe = FeedProbe(redis_url, channel, prefix, stride)
        await self.probe.start()
        return {}

    async def probe_report(self) -> Reply:
        """Stop the probe; its sightings as {"seen": [[key, epoch_ms], ...]} and the
        published messages' lengths as {"sizes": [[key, length], ...]}."""
        probe, self.probe = self.probe, None
        if probe is None:
            return {"seen": [], "sizes": []}
        await probe.stop()
        return {
            "seen": [[k, v] for k, v in probe.seen.items()],
            "sizes": [[k, v] for k, v in probe.sizes.items()],
        }

    async def close_all(self) -> Reply:
        receivers, self.receivers = self.receivers, []
        limit = asyncio.Semaphore(200)

        async def close(receiver: Receiver) -> None:
            async with limit:
                with contextlib.suppress(Exception):
                    await asyncio.wait_for(receiver.conn.close(), 5)
            if receiver.task is not None:
                receiver.task.cancel()

        await asyncio.gather(*(close(r) for r in receivers))
        tasks = [r.task for r in receivers if r.task is not None]
        await asyncio.gather(*tasks, return_exceptions=True)
        return {"closed": len(receivers)}

    async def handle(self, command: Frame) -> Reply:
        cmd = command.get("cmd")
        if cmd == "open":
            return await self.open(
                command["url"],
                int(command["count"]),
                tenant=command["tenant"],
                view=command.get("view"),
                secret=command.get("secret"),
                concurrency=int(command.get("concurrency", 50)),
                users=int(command.get("users", 0)),
            )
        if cmd == "phase":
            return self.start_phase(command["prefix"], int(command["stride"]))
        if cmd == "progress":
            return self.progress()
        if cmd == "report":
            return self.report(command["path"])
        if cmd == "close":
            return await self.close_all()
        if cmd == "probe":
            return await self.start_probe(
                command["redis_url"], command["channel"], command["prefix"], int(command["stride"])
            )
        if cmd == "probe_report":
            return await self.probe_report()
        if cmd == "exit":
            return {}
        raise ValueError(f"unknown command {cmd!r}")


async def serve_commands(name: str) -> None:
    """Answer the orchestrator's commands until `exit` or until stdin closes."""
    loop = asyncio.get_running_loop()
    reader = asyncio.StreamReader(limit=1 << 20)
    await loop.connect_read_pipe(lambda: asyncio.StreamReaderProtocol(reader), sys.stdin)
    process = LoadProcess(name)
    out = sys.stdout.buffer
    commands: asyncio.Queue[Frame] = asyncio.Queue()

    def answer(command: Frame, reply: Reply) -> None:
        reply["id"] = command.get("id")
        out.write(orjson.dumps(reply) + b"\n")
        out.flush()

    async def work() -> None:
        # One command at a time, in order: a phase's commands depend on each other.
        while True:
            command = await commands.get()
            try:
                reply = await process.handle(command)
                reply["ok"] = True
            except Exception as exc:
                log.exception("%s: command %s failed", name, command.get("cmd"))
                reply = {"ok": False, "error": f"{type(exc).__name__}: {exc}"}
            answer(command, reply)

    worker = asyncio.create_task(work(), name="commands")
    try:
        while True:
            line = await reader.readline()
            if not line:
                return  # the orchestrator is gone
            command = orjson.loads(line)
            if command.get("cmd") == "exit":
                # Cut in, even in the middle of opening thousands of sessions; the
                # kernel closes the sockets when the process ends.
                answer(command, {"ok": True})
                return
            commands.put_nowait(command)
    finally:
        worker.cancel()
        await asyncio.gather(worker, return_exceptions=True)
        if process.probe is not None:
            await process.probe.stop()


# ---- the orchestrator's handle on one load-client process ----------------------------


class LoadClientProcess:
    """A `python -m loadtest.loadclients` child in its own session, spoken to by line."""

    def __init__(self, name: str, proc: asyncio.subprocess.Process) -> None:
        self.name = name
        self._proc = proc
        self._ids = 0
        self._lock = asyncio.Lock()

    @classmethod
    async def start(
        cls, name: str, *, cwd: Path, log_path: Path, env: Mapping[str, str] | None = None
    ) -> LoadClientProcess:
        with log_path.open("wb") as log_file:
            proc = await asyncio.create_subprocess_exec(
                sys.executable,
                "-m",
                "loadtest.loadclients",
                "--name",
                name,
                stdin=asyncio.subprocess.PIPE,
                stdout=asyncio.subprocess.PIPE,
                stderr=log_file,
                cwd=cwd,
                env={**os.environ, **(env or {})},
                start_new_session=True,
                limit=1 << 20,
            )
        return cls(name, proc)

    @property
    def pid(self) -> int:
        return self._proc.pid

    async def call(self, cmd: str, *, timeout: float = 120.0, **args: Any) -> Reply:
        async with self._lock:
            assert self._proc.stdin is not None and self._proc.stdout is not None
            self._ids += 1
            request = {"cmd": cmd, "id": self._ids, **args}
            self._proc.stdin.write(orjson.dumps(request) + b"\n")
            await self._proc.stdin.drain()
            while True:
                line = await asyncio.wait_for(self._proc.stdout.readline(), timeout)
                if not line:
                    code = self._proc.returncode
                    raise RuntimeError(f"load client {self.name} exited (code {code})")
                reply: Reply = orjson.loads(line)
                if reply.get("id") == request["id"]:
                    break  # an earlier reply belongs to a request that was cancelled
        if not reply.get("ok"):
            raise RuntimeError(f"load client {self.name}: {cmd} failed: {reply.get('error')}")
        return reply

    async def stop(self, timeout: float = 10.0) -> None:
        """Ask it to close its connections and exit; then make sure. Safe to call twice."""
        if self._proc.returncode is None:
            with contextlib.suppress(Exception):
                await self.call("exit", timeout=timeout)
            with contextlib.suppress(Exception):
                await asyncio.wait_for(self._proc.wait(), timeout)
        self.kill()

    def kill(self) -> None:
        """SIGKILL its process group (synchronous: usable from any `finally`)."""
        with contextlib.suppress(ProcessLookupError, PermissionError):
            os.killpg(self._proc.pid, signal.SIGKILL)


class ClientPool:
    """Several load-client processes used as one."""

    def __init__(self, procs: Sequence[LoadClientProcess]) -> None:
        self.procs = list(procs)

    @property
    def pids(self) -> list[int]:
        return [p.pid for p in self.procs]

    async def call(self, cmd: str, *, timeout: float = 120.0, **args: Any) -> list[Reply]:
        return list(
            await asyncio.gather(*(p.call(cmd, timeout=timeout, **args) for p in self.procs))
        )

    async def open(
        self,
        url: str,
        total: int,
        *,
        tenant: str | Sequence[str],
        view: Mapping[str, Any] | None,
        secret: str | None,
        concurrency: int = 50,
        timeout: float = 300.0,
        users: int = 0,
    ) -> Reply:
        """Spread `total` sessions over the processes; returns opened/failed/errors."""
        n = len(self.procs)
        counts = [total // n + (1 if i < total % n else 0) for i in range(n)]
        replies = await asyncio.gather(
            *(
                p.call(
                    "open",
                    timeout=timeout,
                    url=url,
                    count=c,
                    tenant=tenant,
                    view=view,
                    secret=secret,
                    concurrency=concurrency,
                    users=users,
                )
                for p, c in zip(self.procs, counts, strict=True)
            )
        )
        return {
            "opened": sum(r["opened"] for r in replies),
            "failed": sum(r["failed"] for r in replies),
            "errors": [e for r in replies for e in r["errors"]][:5],
        }

    async def covered(self) -> int:
        """Deliveries so far, counting versions a newer one made moot as delivered."""
        return sum(r["covered"] for r in await self.call("progress", timeout=30))

    async def stop(self) -> None:
        await asyncio.gather(*(p.stop() for p in self.procs))

    def kill(self) -> None:
        for p in self.procs:
            p.kill()


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--name", default=f"lc{os.getpid()}")
    args = parser.parse_args()
    logging.basicConfig(level=logging.INFO, stream=sys.stderr)
    raise_nofile_limit()
    # The orchestrator stops us through stdin (or SIGKILL); Ctrl-C belongs to it alone.
    signal.signal(signal.SIGINT, signal.SIG_IGN)
    try:
        import uvloop
    except ImportError:  # optional, as in service/runner.py
        asyncio.run(serve_commands(args.name))
    else:
        with asyncio.Runner(loop_factory=uvloop.new_event_loop) as runner:
            runner.run(serve_commands(args.name))


if __name__ == "__main__":
    main()
