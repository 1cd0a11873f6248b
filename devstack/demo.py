"""`make demo`: the whole product on its embedded defaults, on loopback.

Starts (unless given) a private redis-server and DynamoDB Local, creates the table,
then the stream relay, the gateway and the simulator as their own processes, prints
the worklist's URL and waits. Ctrl-C or SIGTERM stops everything it started.
"""

from __future__ import annotations

import asyncio
import os
import signal
import subprocess
import sys
import time
from pathlib import Path
from types import FrameType

from devstack.postgres import PostgresCluster, start_postgres
from devstack.procs import ManagedProcess, free_port, port_open, wait_for_port
from devstack.services import ROOT, start_dynamodb_local, start_redis
from dynamo.client import dynamodb_client
from dynamo.settings import DynamoSettings
from dynamo.table import ensure_table

LOG_DIR = ROOT / ".run" / "logs"


def _redis_reachable(url: str) -> bool:
    import redis

    try:
        redis.Redis.from_url(url, socket_connect_timeout=1).ping()
    except Exception:
        return False
    return True


def _say(message: str) -> None:
    print(message, flush=True)


class Demo:
    """The whole stack on loopback. `extra_env` reaches every process it starts (the
    load test passes a known signing secret); `simulate=False` leaves the simulator out."""

    def __init__(self, extra_env: dict[str, str] | None = None, simulate: bool = True) -> None:
        self.procs: list[ManagedProcess] = []
        self.clusters: list[PostgresCluster] = []
        self.database_url = ""
        self.env: dict[str, str] = {}
        self.extra_env = extra_env or {}
        self.simulate = simulate
        self._stopping = False

    def start(self) -> str:
        LOG_DIR.mkdir(parents=True, exist_ok=True)
        redis_url = os.environ.get("REDIS_URL", "")
        if redis_url and _redis_reachable(redis_url):
            _say(f"using Redis at {redis_url}")
        else:
            proc, redis_url = start_redis()
            self.procs.append(proc)
            _say(f"started redis-server at {redis_url}")

        endpoint = os.environ.get("DYNAMO_ENDPOINT_URL", "")
        if not endpoint:
            proc, endpoint = start_dynamodb_local()
            self.procs.append(proc)
            _say(f"started DynamoDB Local at {endpoint}")
        dynamo = DynamoSettings(endpoint_url=endpoint)
        asyncio.run(_create_table(dynamo))
        _say(f"table {dynamo.table} ready (streams: NEW_AND_OLD_IMAGES)")

        database_url = os.environ.get("DATABASE_URL", "")
        if not database_url:
            cluster = start_postgres()
            self.clusters.append(cluster)
            database_url = cluster.url
            _say(f"started PostgreSQL at {database_url} (the audit trail; psql it)")
        self.database_url = database_url

        port = int(os.environ.get("GATEWAY_PORT", "0")) or (
            8080 if not port_open(8080) else free_port()
        )
        hl7_port = int(os.environ.get("HL7_PORT", "0")) or free_port()
        self.env = {
            "REDIS_URL": redis_url,
            "DYNAMO_ENDPOINT_URL": endpoint,
            "DYNAMO_TABLE": dynamo.table,
            "GATEWAY_PORT": str(port),
            "GATEWAY_HOST": "127.0.0.1",
            # The demo's users log in from the page; tokens die with this run.
            "GATEWAY_DEMO": os.environ.get("GATEWAY_DEMO", "true"),
            # The simulator plays a RIS: its day reaches the store as HL7 over MLLP.
            "HL7_PORT": str(hl7_port),
            "SIM_TRANSPORT": os.environ.get("SIM_TRANSPORT", "hl7"),
            "SIM_HL7_PORT": str(hl7_port),
            "AUDIT_DATABASE_URL": database_url,
            **self.extra_env,
        }
        self._seed_directory()
        self._spawn("relay", [sys.executable, "-m", "relay"])
        self._spawn("audit", [sys.executable, "-m", "audit"])
        gateway = self._spawn("gateway", [sys.executable, "-m", "gateway"])
        wait_for_port(port, 30, gateway)
        hl7 = self._spawn("hl7-ingest", [sys.executable, "-m", "hl7_ingest"])
        wait_for_port(hl7_port, 30, hl7)
        if self.simulate:
            self._spawn("simulator", [sys.executable, "-m", "loadtest.simulator"])
        return f"http://127.0.0.1:{port}/"

    def _seed_directory(self) -> None:
        """The demo's groups, sites and people, loaded with the operator's own import
        (idempotent: a restart over the same table changes nothing)."""
        from devstack.seed import SEED

        argv = [sys.executable, "-m", "dynamo.directory", "--actor", "make-demo"]
        done = subprocess.run(
            [*argv, "import", str(SEED)],
            env={**os.environ, **self.env},
            cwd=ROOT,
            capture_output=True,
            text=True,
            timeout=120,
            check=False,
        )
        if done.returncode != 0:
            raise RuntimeError(f"seeding the directory failed: {done.stderr.strip()}")
        _say("directory seeded from " + _rel(SEED))

    def _spawn(self, name: str, argv: list[str]) -> ManagedProcess:
        log = (LOG_DIR / f"{name}.log").open("ab")
        proc = ManagedProcess(name, argv, env=self.env, cwd=ROOT, log=log)
        self.procs.append(proc)
        _say(f"started {name} (pid {proc.pid}, log {_rel(LOG_DIR / f'{name}.log')})")
        return proc

    def watch(self) -> int:
        """Block until a signal or until a child dies; return the exit code."""
        while not self._stopping:
            for proc in self.procs:
                code = proc.poll()
                if code is not None:
                    _say(f"{proc.name} exited with {code}; stopping the demo")
                    return 1
            time.sleep(0.25)
        return 0

    def request_stop(self, signum: int, _frame: FrameType | None) -> None:
        self._stopping = True

    def stop(self) -> None:
        # Reverse order: writers and readers first, the stores they use last.
        for proc in reversed(self.procs):
            proc.stop(timeout=10)
        self.procs.clear()
        for cluster in self.clusters:
            cluster.destroy()
        self.clusters.clear()


def _rel(path: Path) -> str:
    try:
        return str(path.relative_to(Path.cwd()))
    except ValueError:
        return str(path)


async def _create_table(settings: DynamoSettings) -> None:
    async with dynamodb_client(settings) as client:
        await ensure_table(client, settings.table)


def main() -> int:
    demo = Demo()
    signal.signal(signal.SIGTERM, demo.request_stop)
    signal.signal(signal.SIGINT, demo.request_stop)
    code = 1
    try:
        url = demo.start()
        _say("")
        _say(f"Live worklist: {url}")
        _say(f"Audit trail (PostgreSQL): {demo.database_url}")
        _say("Press Ctrl-C to stop.")
        code = demo.watch()
    finally:
        _say("stopping...")
        demo.stop()
        _say("stopped.")
    return code


if __name__ == "__main__":
    sys.exit(main())
