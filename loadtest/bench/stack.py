"""Every process the benchmark starts, and stopping them all (also on Ctrl-C or an error)."""

from __future__ import annotations

import asyncio
import contextlib
import os
import signal
from collections.abc import Mapping, Sequence
from pathlib import Path

from devstack import ManagedProcess
from devstack.services import ROOT
from loadtest.loadclients import (
    ClientPool,
    LoadClientProcess,
)

__all__ = ["Stack"]


class Stack:
    """Every process the benchmark started. `stop()` ends them all; safe to call twice."""

    def __init__(self, logs: Path) -> None:
        self.logs = logs
        self.procs: list[ManagedProcess] = []
        self.pools: list[ClientPool] = []
        self.extra_pids: set[int] = set()  # py-spy
        logs.mkdir(parents=True, exist_ok=True)

    def adopt(self, proc: ManagedProcess) -> ManagedProcess:
        self.procs.append(proc)
        return proc

    def spawn(self, name: str, argv: Sequence[str], env: Mapping[str, str]) -> ManagedProcess:
        with (self.logs / f"{name}.log").open("wb") as log:  # this run only
            return self.adopt(ManagedProcess(name, argv, env=env, cwd=ROOT, log=log))

    async def stop_one(self, proc: ManagedProcess) -> None:
        await asyncio.to_thread(proc.stop, 10)
        with contextlib.suppress(ValueError):
            self.procs.remove(proc)

    async def pool(self, name: str, size: int) -> ClientPool:
        procs = []
        for i in range(size):
            procs.append(
                await LoadClientProcess.start(
                    f"{name}{i}", cwd=ROOT, log_path=self.logs / f"clients-{name}{i}.log"
                )
            )
        pool = ClientPool(procs)
        self.pools.append(pool)
        return pool

    async def close_pool(self, pool: ClientPool) -> None:
        await pool.stop()
        with contextlib.suppress(ValueError):
            self.pools.remove(pool)

    def stop(self) -> None:
        for pool in self.pools:
            pool.kill()
        self.pools.clear()
        for pid in self.extra_pids:
            with contextlib.suppress(ProcessLookupError, PermissionError):
                os.kill(pid, signal.SIGKILL)
        # Reverse order: servers first, the stores they use last.
        for proc in reversed(self.procs):
            proc.stop(timeout=10)
        self.procs.clear()
