"""A real local Redis Cluster for the tests and the benchmark: three masters
(`redis-server --cluster-enabled yes`) on free loopback ports in a temporary directory,
joined by `redis-cli --cluster create`, keeping nothing on disk but their node tables.

    with RedisClusterProcs.start() as cluster:
        cluster.url               # redis://127.0.0.1:PORT/0 (any master: clients discover the rest)
        cluster.restart(port)     # one master loses its data and comes back with its slots
        cluster.move_slot(s, p)   # one slot and its keys move to another master
"""

from __future__ import annotations

import shutil
import socket
import subprocess
import tempfile
import time
from pathlib import Path
from types import TracebackType

from devstack.procs import ManagedProcess, free_port, wait_for_port


def _bindable(port: int) -> bool:
    """Whether nothing holds `port` on loopback now."""
    with socket.socket(socket.AF_INET, socket.SOCK_STREAM) as s:
        try:
            s.bind(("127.0.0.1", port))
        except OSError:
            return False
    return True


def _cli(port: int, *args: str, timeout: float = 10.0) -> str:
    exe = shutil.which("redis-cli")
    if exe is None:
        raise RuntimeError("redis-cli is not installed (Debian's redis-tools; make deps)")
    done = subprocess.run(
        [exe, "-h", "127.0.0.1", "-p", str(port), *args],
        capture_output=True,
        text=True,
        timeout=timeout,
        check=False,
    )
    if done.returncode != 0:
        raise RuntimeError(f"redis-cli {' '.join(args)}: {done.stderr.strip() or done.stdout}")
    return done.stdout


class RedisClusterProcs:
    """Three cluster masters (no replicas), started and stopped together; `stop` is safe
    to call twice."""

    def __init__(self, ports: list[int], workdir: Path) -> None:
        self.ports = ports
        self.workdir = workdir
        self.procs: dict[int, ManagedProcess] = {}

    @classmethod
    def start(cls, masters: int = 3, timeout: float = 30.0) -> RedisClusterProcs:
        if shutil.which("redis-server") is None:
            raise RuntimeError("redis-server is not installed (make deps installs it)")
        ports: list[int] = []
        cluster = cls(ports, Path(tempfile.mkdtemp(prefix="ris-cluster-")))
        try:
            for _ in range(masters):
                cluster._spawn_on_free_port()
            _cli(
                ports[0],
                "--cluster",
                "create",
                *(f"127.0.0.1:{p}" for p in ports),
                "--cluster-replicas",
                "0",
                "--cluster-yes",
                timeout=timeout,
            )
            cluster.wait_ok(timeout)
        except BaseException:
            cluster.stop()
            raise
        return cluster

    def _spawn_on_free_port(self, attempts: int = 5) -> None:
        """One more master on a free port whose cluster bus port (+10000) is free too;
        another port when the server exits before listening (taken meanwhile)."""
        for attempt in range(attempts):
            port = free_port()
            if port + 10_000 >= 65_536 or port in self.ports or not _bindable(port + 10_000):
                continue
            try:
                self._spawn(port)
            except RuntimeError:
                self.procs.pop(port, None)
                if attempt == attempts - 1:
                    raise
                continue
            self.ports.append(port)
            return
        raise RuntimeError(f"no free port pair for a cluster master in {attempts} attempts")

    def _spawn(self, port: int) -> None:
        exe = shutil.which("redis-server")
        assert exe is not None
        log = open(self.workdir / f"{port}.log", "ab")
        self.procs[port] = ManagedProcess(
            f"redis-cluster-{port}",
            [
                exe,
                "--port",
                str(port),
                "--bind",
                "127.0.0.1",
                "--cluster-enabled",
                "yes",
                "--cluster-config-file",
                f"nodes-{port}.conf",
                "--cluster-node-timeout",
                "2000",
                "--save",
                "",
                "--appendonly",
                "no",
                "--dir",
                str(self.workdir),
                "--protected-mode",
                "yes",
            ],
            log=log,
        )
        log.close()
        wait_for_port(port, 15, self.procs[port])

    @property
    def url(self) -> str:
        return f"redis://127.0.0.1:{self.ports[0]}/0"

    def wait_ok(self, timeout: float = 30.0) -> None:
        """Until every master reports `cluster_state:ok` and agrees on all 16384 slots."""
        deadline = time.monotonic() + timeout
        while True:
            try:
                infos = [_cli(p, "cluster", "info") for p in self.ports]
            except (RuntimeError, subprocess.TimeoutExpired):
                infos = []
            if infos and all(
                "cluster_state:ok" in i and "cluster_slots_ok:16384" in i for i in infos
            ):
                return
            if time.monotonic() > deadline:
                raise TimeoutError(f"the cluster on {self.ports} was not ok within {timeout}s")
            time.sleep(0.1)

    def port_of_slot(self, slot: int) -> int:
        """The port of the master serving `slot` now."""
        for line in _cli(self.ports[0], "cluster", "nodes").splitlines():
            fields = line.split()
            if "master" not in fields[2] or "fail" in fields[2]:
                continue
            port = int(fields[1].split("@")[0].rsplit(":", 1)[1])
            for spec in fields[8:]:
                if spec.startswith("["):
                    continue  # a slot being migrated
                low, _, high = spec.partition("-")
                if int(low) <= slot <= int(high or low):
                    return port
        raise LookupError(f"no master serves slot {slot}")

    def keyslot(self, key: str) -> int:
        return int(_cli(self.ports[0], "cluster", "keyslot", key).strip())

    def move_slot(self, slot: int, to_port: int) -> None:
        """Move one slot, keys included, to the master on `to_port` (what
        `redis-cli --cluster reshard` does, for one chosen slot)."""
        src = self.port_of_slot(slot)
        if src == to_port:
            return
        ids = {p: _cli(p, "cluster", "myid").strip() for p in self.ports}
        _cli(to_port, "cluster", "setslot", str(slot), "importing", ids[src])
        _cli(src, "cluster", "setslot", str(slot), "migrating", ids[to_port])
        while True:
            names = _cli(src, "cluster", "getkeysinslot", str(slot), "100").split()
            if not names:
                break
            _cli(src, "migrate", "127.0.0.1", str(to_port), "", "0", "5000", "keys", *names)
        for port in (to_port, src, *(p for p in self.ports if p not in (src, to_port))):
            _cli(port, "cluster", "setslot", str(slot), "node", ids[to_port])
        self.wait_ok()

    def restart(self, port: int, *, down_seconds: float = 0.0) -> None:
        """Kill one master (as a crash would: its data is gone), keep it down for
        `down_seconds`, start it again with its node table (so it serves the same slots,
        empty) and wait for the cluster to be ok."""
        self.procs[port].kill()
        time.sleep(down_seconds)
        self._spawn(port)
        self.wait_ok()

    def stop(self) -> None:
        for proc in self.procs.values():
            proc.stop()
        shutil.rmtree(self.workdir, ignore_errors=True)

    def __enter__(self) -> RedisClusterProcs:
        return self

    def __exit__(
        self,
        exc_type: type[BaseException] | None,
        exc: BaseException | None,
        tb: TracebackType | None,
    ) -> None:
        self.stop()


def start_redis_cluster(masters: int = 3) -> RedisClusterProcs:
    """A running local Redis Cluster (see `RedisClusterProcs`)."""
    return RedisClusterProcs.start(masters)
