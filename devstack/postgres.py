"""A private PostgreSQL cluster on a free loopback port, for the demo and the tests.

`initdb` into a temporary directory, then `pg_ctl start` with the port, the socket
directory and the listen address on its command line, so the machine's own PostgreSQL
(if any, usually on 5432) is never touched. initdb refuses to run as root; as root the
cluster is made and run by the `postgres` user (Debian's package creates it), in a
directory that user owns.

`stop()` and `start()` can be called again on the same cluster (the tests stop it to
play an outage); `destroy()` stops it and removes its files. All are safe to call twice.
"""

from __future__ import annotations

import atexit
import glob
import os
import pwd
import shutil
import subprocess
import tempfile
from pathlib import Path

from devstack.procs import free_port

__all__ = ["PostgresCluster", "postgres_bin", "start_postgres"]


def postgres_bin(name: str) -> str:
    """Path of a PostgreSQL server binary (`initdb`, `pg_ctl`): Debian keeps them off
    PATH in /usr/lib/postgresql/<major>/bin; the newest major wins."""
    for candidate in sorted(glob.glob(f"/usr/lib/postgresql/*/bin/{name}"), reverse=True):
        return candidate
    found = shutil.which(name)
    if found is None:
        raise RuntimeError(f"{name} is not installed (make deps installs postgresql)")
    return found


def _as_postgres_user() -> list[str]:
    """The prefix that runs a command as a non-root user when we are root."""
    if os.geteuid() != 0:
        return []
    return ["runuser", "-u", "postgres", "--"]


class PostgresCluster:
    """One throwaway cluster: `url` names its `postgres` database (trust auth, loopback)."""

    def __init__(self, port: int | None = None) -> None:
        self.port = port or free_port()
        self.workdir = Path(tempfile.mkdtemp(prefix="ris-pg-"))
        self.datadir = self.workdir / "data"
        self.logfile = self.workdir / "postgres.log"
        self._prefix = _as_postgres_user()
        if self._prefix:
            entry = pwd.getpwnam("postgres")
            os.chown(self.workdir, entry.pw_uid, entry.pw_gid)
        self._initialized = False
        self._destroyed = False

    @property
    def url(self) -> str:
        return f"postgresql://postgres@127.0.0.1:{self.port}/postgres"

    def _run(self, argv: list[str], timeout: float) -> None:
        proc = subprocess.run(
            [*self._prefix, *argv],
            capture_output=True,
            text=True,
            timeout=timeout,
            check=False,
        )
        if proc.returncode != 0:
            raise RuntimeError(
                f"{Path(argv[0]).name} failed ({proc.returncode}): {proc.stderr.strip()[-2000:]}"
            )

    def _initdb(self) -> None:
        self._run(
            [
                postgres_bin("initdb"),
                "-D",
                str(self.datadir),
                "-U",
                "postgres",
                "-A",
                "trust",
                "-E",
                "UTF8",
                "--locale=C",
                "--no-sync",
            ],
            timeout=120,
        )
        self._initialized = True

    def start(self, timeout: float = 60.0) -> None:
        """Create the cluster on first use, then start it and wait until it accepts."""
        if self._destroyed:
            raise RuntimeError("this cluster was destroyed; make a new one")
        if not self._initialized:
            self._initdb()
        options = (
            f"-p {self.port} -k {self.workdir} -h 127.0.0.1"
            # A scratch cluster: speed over durability of the machine's own crashes
            # (a killed *client* still sees PostgreSQL's full transactional semantics).
            " -c fsync=off -c full_page_writes=off -c synchronous_commit=off"
        )
        self._run(
            [
                postgres_bin("pg_ctl"),
                "-D",
                str(self.datadir),
                "-o",
                options,
                "-l",
                str(self.logfile),
                "-w",
                "-t",
                str(int(timeout)),
                "start",
            ],
            timeout=timeout + 10,
        )

    def stop(self, mode: str = "fast", timeout: float = 60.0) -> None:
        """Stop the server (`fast`: disconnect clients, roll back their transactions;
        `immediate`: as a crash would). Nothing happens when it is not running."""
        if not self._initialized or not (self.datadir / "postmaster.pid").exists():
            return
        self._run(
            [
                postgres_bin("pg_ctl"),
                "-D",
                str(self.datadir),
                "-m",
                mode,
                "-w",
                "-t",
                str(int(timeout)),
                "stop",
            ],
            timeout=timeout + 10,
        )

    def destroy(self) -> None:
        if self._destroyed:
            return
        try:
            self.stop("immediate")
        finally:
            self._destroyed = True
            shutil.rmtree(self.workdir, ignore_errors=True)


def start_postgres(port: int | None = None) -> PostgresCluster:
    """A started private cluster, destroyed at interpreter exit if nobody did it before."""
    cluster = PostgresCluster(port)
    atexit.register(cluster.destroy)
    cluster.start()
    return cluster
