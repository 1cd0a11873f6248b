"""Locust scenarios: radiologists, coordinators and reconnect storms over real WebSockets,
and writers whose number follows an exam-spike shape. `make loadtest` runs them
headless against a stack it starts (see `loadtest/spike.py`); `locust -f
loadtest/locustfile.py` with LOADTEST_* set runs them with the web UI.

Every WebSocket request is reported to locust's statistics as request type "WS" under
its frame type (auth, subscribe, resume, claim, sign, presence); every delta a client
receives is reported as type "DELTA", name "e2e", with the time from the DynamoDB write
(the delta's `updated_at`) to its arrival.

Environment: the LOADTEST_* settings (`loadtest.settings.LoadtestSettings`, one line
each in the README: the gateway, its signing secret, the users and the spike's shape) and
DYNAMO_* (the writers' table).
"""

from __future__ import annotations

import itertools
import json
import random
import socket
import time
from typing import Any

import gevent
import websocket
from gevent.event import AsyncResult
from locust import LoadTestShape, User, between, constant_pacing, task

from gateway.auth import mint_token
from hl7_ingest.mllp import FrameDecoder, wrap
from loadtest.people import PEOPLE
from loadtest.settings import LoadtestSettings
from loadtest.syncwriter import SyncExamWriter

SETTINGS = LoadtestSettings()
GATEWAY = SETTINGS.gateway
SECRET = SETTINGS.jwt_secret
TENANT = SETTINGS.tenant

_ids = itertools.count(1)
_users = itertools.count(1)


class WsSession:
    """One protocol connection: a greenlet reads frames, requests wait for their reply."""

    def __init__(self, user: User, sub: str, name: str, roles: tuple[str, ...]) -> None:
        self.user = user
        self.token = mint_token(SECRET, sub=sub, name=name, tenant=TENANT, roles=roles, ttl_s=3600)
        self.rows: dict[str, dict[str, Any]] = {}
        self.position: dict[str, str] | None = None
        self._waiting: dict[str, AsyncResult] = {}
        self._ws: websocket.WebSocket | None = None
        self._reader: gevent.Greenlet | None = None
        self.view: dict[str, Any] = {}

    def fire(self, kind: str, name: str, started: float, error: Exception | None = None) -> None:
        self.user.environment.events.request.fire(
            request_type=kind,
            name=name,
            response_time=(time.perf_counter() - started) * 1000,
            response_length=0,
            exception=error,
            context={},
        )

    def open(self) -> None:
        started = time.perf_counter()
        try:
            self._ws = websocket.create_connection(GATEWAY, timeout=10)
            welcome = json.loads(self._ws.recv())
            assert welcome["type"] == "welcome", welcome
            self._reader = gevent.spawn(self._read)
            self.request({"type": "auth", "token": self.token}, "auth", expect="authenticated")
        except Exception as exc:
            self.fire("WS", "connect", started, exc)
            raise
        self.fire("WS", "connect", started)

    def close(self) -> None:
        """Send the close frame and drop the socket, without waiting for the server's.

        Not websocket-client's `close()`: it waits up to 3 s for the server's close
        frame inside a bare `except:`, which swallows the `GreenletExit` locust stops a
        user with. A Reconnector stopped there carried on reconnecting, and locust waited
        for it until the run was interrupted (a CI run of `test_loadtest` failed so)."""
        if self._reader is not None:
            self._reader.kill(block=False)
        ws, self._ws = self._ws, None
        if ws is not None:
            try:
                if ws.connected:
                    ws.send_close()
            except Exception:
                pass  # (the connection was already gone)
            ws.shutdown()  # type: ignore[no-untyped-call]

    def _read(self) -> None:
        assert self._ws is not None
        ws = self._ws
        while True:
            try:
                raw = ws.recv()
            except Exception:
                return
            if not raw:
                return
            frame = json.loads(raw)
            frames = frame["frames"] if frame.get("type") == "batch" else [frame]
            for f in frames:
                self._on_frame(f)

    def _on_frame(self, f: dict[str, Any]) -> None:
        kind = f.get("type")
        if kind == "delta" and f.get("leave"):
            self.position = {"epoch": f["epoch"], "offset": f["offset"]}
            self.rows.pop(f["delta"]["exam_id"], None)  # a leave names only the exam
        elif kind == "delta":
            d = f["delta"]
            self.position = {"epoch": f["epoch"], "offset": f["offset"]}
            now_ms = time.time() * 1000
            self.user.environment.events.request.fire(
                request_type="DELTA",
                name="e2e",
                response_time=max(0.0, now_ms - d["updated_at"]),
                response_length=0,
                exception=None,
                context={},
            )
            if d["op"] == "remove":
                self.rows.pop(d["exam_id"], None)
            elif d["version"] > self.rows.get(d["exam_id"], {}).get("version", 0):
                self.rows[d["exam_id"]] = d
        elif kind == "patch":
            # Only the changed fields, on the row held at `base`; else ask for the row.
            self.position = {"epoch": f["epoch"], "offset": f["offset"]}
            held = self.rows.get(f["exam_id"])
            if held is not None and held["version"] >= f["version"]:
                pass
            elif held is None or held["version"] != f["base"]:
                ask = {"type": "row", "id": f"row{next(_ids)}", "sub": f["sub"]}
                if self._ws is not None:
                    self._ws.send(json.dumps({**ask, "exam_id": f["exam_id"]}))
            else:
                self.rows[f["exam_id"]] = {**held, **f["fields"], "version": f["version"]}
                now_ms = time.time() * 1000
                stamp = f["fields"].get("updated_at", now_ms)
                self.user.environment.events.request.fire(
                    request_type="DELTA",
                    name="e2e",
                    response_time=max(0.0, now_ms - stamp),
                    response_length=0,
                    exception=None,
                    context={},
                )
        elif kind == "row" and f.get("sub") is not None:
            row = f.get("row")
            if row is None:
                self.rows.pop(f["exam_id"], None)
            elif row["version"] > self.rows.get(f["exam_id"], {}).get("version", 0):
                self.rows[f["exam_id"]] = row
        elif kind == "snapshot":
            self.rows = {r["exam_id"]: r for r in f["rows"]}
            self.position = {"epoch": f["epoch"], "offset": f["offset"]}
        rid = f.get("id")
        if rid is not None and rid in self._waiting:
            self._waiting.pop(rid).set(f)

    def request(
        self,
        frame: dict[str, Any],
        name: str,
        expect: str | None = None,
        timeout: float = 10,
        tolerate: str = "conflict",
    ) -> dict[str, Any] | None:
        """Send a request, wait for its reply, report the round trip. Errors with a code
        the scenario expects (a lost claim race) are returned, not failed."""
        assert self._ws is not None
        rid = f"r{next(_ids)}"
        waiter = AsyncResult()
        self._waiting[rid] = waiter
        started = time.perf_counter()
        try:
            self._ws.send(json.dumps({**frame, "id": rid}))
            reply: dict[str, Any] = waiter.get(timeout=timeout)
        except Exception as exc:
            self._waiting.pop(rid, None)
            self.fire("WS", name, started, exc)
            return None
        if expect is not None and reply["type"] != expect and reply.get("code") != tolerate:
            self.fire("WS", name, started, RuntimeError(reply.get("code", reply["type"])))
            return reply
        self.fire("WS", name, started)
        return reply

    def subscribe(self, view: dict[str, Any]) -> None:
        """Subscribe; while the tenant's cache is being rebuilt the gateway answers
        `unavailable` (documented), and a client subscribes again shortly."""
        self.view = view
        for _ in range(30):
            frame = {"type": "subscribe", "view": view}
            reply = self.request(frame, "subscribe", expect="snapshot", tolerate="unavailable")
            if reply is None or reply.get("code") != "unavailable":
                return
            gevent.sleep((reply.get("detail") or {}).get("retry_after_ms", 500) / 1000)

    def resume(self) -> None:
        frame: dict[str, Any] = {"type": "subscribe", "view": self.view}
        if self.position:
            frame["since"] = self.position
        self.request(frame, "resume")


class Radiologist(User):
    """Logs in, watches the ready-to-read list, claims, reads a while, signs."""

    fixed_count = SETTINGS.radiologists
    wait_time = between(1, 4)

    def on_start(self) -> None:
        n = next(_users)
        self.ws = WsSession(self, f"lt-rad-{n % PEOPLE}", f"Load Radiologist {n}", ("radiologist",))
        self.ws.open()
        self.ws.subscribe({"statuses": ["COMPLETED", "PRELIMINARY"]})

    def on_stop(self) -> None:
        self.ws.close()

    @task
    def read_one(self) -> None:
        free = [r for r in self.ws.rows.values() if not r.get("claimed_by")]
        if not free:
            return
        exam = random.choice(free)["exam_id"]
        reply = self.ws.request({"type": "claim", "exam_id": exam}, "claim", expect="claimed")
        if not reply or reply["type"] != "claimed":
            return  # somebody else got it first: that is the scenario, not a failure
        gevent.sleep(random.uniform(2, 8))  # reading
        self.ws.request(
            {"type": "sign", "exam_id": exam, "status": "FINAL"}, "sign", expect="signed"
        )


class Coordinator(User):
    """Watches the whole tenant, the peer-review board and who is online."""

    fixed_count = SETTINGS.coordinators
    wait_time = between(5, 10)

    def on_start(self) -> None:
        n = next(_users)
        self.ws = WsSession(
            self, f"lt-coord-{n % PEOPLE}", f"Load Coordinator {n}", ("coordinator",)
        )
        self.ws.open()
        self.ws.subscribe({"statuses": []})
        self.ws.request({"type": "review_list"}, "review_list", expect="reviews")

    def on_stop(self) -> None:
        self.ws.close()

    @task
    def presence(self) -> None:
        self.ws.request({"type": "presence"}, "presence", expect="presence_state")

    @task
    def review_board(self) -> None:
        self.ws.request({"type": "review_list"}, "review_list", expect="reviews")


class Reconnector(User):
    """A flaky network: drops its connection and resumes from its last position."""

    fixed_count = SETTINGS.reconnectors
    wait_time = between(5, 15)

    def on_start(self) -> None:
        n = next(_users)
        self.ws = WsSession(self, f"lt-flaky-{n % PEOPLE}", f"Load Flaky {n}", ("radiologist",))
        self.ws.open()
        self.ws.subscribe({})

    def on_stop(self) -> None:
        self.ws.close()

    @task
    def drop_and_resume(self) -> None:
        self.ws.close()
        self.ws.open()
        self.ws.resume()


class ExamWriter(User):
    """A source of exam traffic: creates an exam and walks it to COMPLETED, one write
    per second per writer. The shape sets how many writers there are."""

    weight = 1
    wait_time = constant_pacing(1.0)

    def on_start(self) -> None:
        self.writer = SyncExamWriter.from_env(f"LT{next(_users):04d}")

    @task
    def step(self) -> None:
        started = time.perf_counter()
        try:
            name = self.writer.step()
        except Exception as exc:
            self.environment.events.request.fire(
                request_type="DYNAMO",
                name="write",
                response_time=(time.perf_counter() - started) * 1000,
                response_length=0,
                exception=exc,
                context={},
            )
            return
        self.environment.events.request.fire(
            request_type="DYNAMO",
            name=name,
            response_time=(time.perf_counter() - started) * 1000,
            response_length=0,
            exception=None,
            context={},
        )


class Hl7Sender(User):
    """A RIS sending exam bursts as HL7 over MLLP: a new order, then its status moves,
    each acknowledged (ACK latency reported as type "HL7")."""

    fixed_count = SETTINGS.hl7_senders
    wait_time = constant_pacing(0.5)

    def on_start(self) -> None:
        from hl7_ingest.mapping import load_mappings
        from loadtest.hl7.builder import MessageBuilder

        n = next(_users)
        mapping = load_mappings().for_site(TENANT, "NW-GEN")
        assert mapping is not None
        self.builder = MessageBuilder(mapping)
        self.prefix = f"H{n:03d}"
        self.count = itertools.count(1)
        self.exam: Any = None
        self.steps: list[Any] = []
        self.sock = socket.create_connection(
            (SETTINGS.hl7_host, SETTINGS.hl7_port),
            timeout=30,
        )
        self.decoder = FrameDecoder()

    def on_stop(self) -> None:
        self.sock.close()

    @task
    def send(self) -> None:
        from dynamo.states import ExamStatus

        if not self.steps:
            self.exam = planned_exam(self.prefix, next(self.count))
            message: str | None = self.builder.new_order(self.exam)
            name = "ORM NW"
            self.steps = [ExamStatus.ARRIVED, ExamStatus.IN_PROGRESS, ExamStatus.COMPLETED]
        else:
            status = self.steps.pop(0)
            message = self.builder.status_update(self.exam, status)
            name = "ORM SC"
        if message is None:
            return
        started = time.perf_counter()
        error: Exception | None = None
        try:
            self.sock.sendall(wrap(message))
            ack = self._ack()
            if "MSA|AA" not in ack:
                error = RuntimeError("not AA")
        except Exception as exc:
            error = exc
        self.environment.events.request.fire(
            request_type="HL7",
            name=name,
            response_time=(time.perf_counter() - started) * 1000,
            response_length=0,
            exception=error,
            context={},
        )

    def _ack(self) -> str:
        while True:
            data = self.sock.recv(65536)
            if not data:  # the listener closed the connection: no ACK is coming
                raise ConnectionError("the MLLP connection closed before the ACK")
            frames = self.decoder.feed(data)
            if frames:
                return bytes(frames[0]).decode(errors="replace")


def planned_exam(prefix: str, n: int) -> Any:
    from devstack.sites import DEMO_TENANTS
    from dynamo.states import Priority
    from loadtest.plan import exam_now

    tenant = next(t for t in DEMO_TENANTS if t.code == TENANT)
    return exam_now(tenant, "NW-GEN", f"{prefix}{n:07d}", n, priority=Priority.STAT)


class ExamSpike(LoadTestShape):
    """A normal day, then a spike of `LOADTEST_SPIKE_FACTOR` times the writers (a
    trauma night, a backlog flush after an RIS outage), then back to normal."""

    def tick(self) -> tuple[int, float] | None:
        normal, factor = SETTINGS.normal_writers, SETTINGS.spike_factor
        normal_s, spike_s = SETTINGS.normal_s, SETTINGS.spike_s
        fixed = (
            Radiologist.fixed_count
            + Coordinator.fixed_count
            + Reconnector.fixed_count
            + Hl7Sender.fixed_count
        )
        t = self.get_run_time()  # type: ignore[no-untyped-call]
        if t < normal_s:
            writers = normal
        elif t < normal_s + spike_s:
            writers = normal * factor
        elif t < 2 * normal_s + spike_s:
            writers = normal
        else:
            return None
        return fixed + writers, 20.0
