"""Child processes that always die with their parent's intent: each runs in its own
process group, and `stop()` sends SIGTERM to the group, waits with a bound, then SIGKILL.
On Linux each child also gets SIGTERM from the kernel when its parent dies however it
dies (SIGKILL, a closed terminal), so nothing outlives `make demo` holding its ports."""

from __future__ import annotations

import ctypes
import os
import signal
import socket
import subprocess
import sys
import time
from collections.abc import Callable, Mapping, Sequence
from pathlib import Path
from typing import IO


def free_port() -> int:
    """A TCP port on loopback that nobody listens on right now."""
    with socket.socket(socket.AF_INET, socket.SOCK_STREAM) as s:
        s.bind(("127.0.0.1", 0))
        return int(s.getsockname()[1])


def port_open(port: int, host: str = "127.0.0.1") -> bool:
    with socket.socket(socket.AF_INET, socket.SOCK_STREAM) as s:
        s.settimeout(0.2)
        return s.connect_ex((host, port)) == 0


def wait_for_port(port: int, timeout: float = 30.0, proc: ManagedProcess | None = None) -> None:
    deadline = time.monotonic() + timeout
    while time.monotonic() < deadline:
        if port_open(port):
            return
        if proc is not None and proc.poll() is not None:
            raise RuntimeError(f"{proc.name} exited with {proc.poll()} before opening port {port}")
        time.sleep(0.05)
    raise TimeoutError(f"nothing listened on 127.0.0.1:{port} within {timeout:.0f}s")


_PR_SET_PDEATHSIG = 1


def _die_with(parent: int) -> Callable[[], None] | None:
    """A preexec hook: the kernel sends the child SIGTERM when `parent` dies."""
    if not sys.platform.startswith("linux"):
        return None

    def setup() -> None:
        libc = ctypes.CDLL(None, use_errno=True)
        libc.prctl(_PR_SET_PDEATHSIG, int(signal.SIGTERM), 0, 0, 0)
        if os.getppid() != parent:  # the parent died before the hook ran
            os._exit(1)

    return setup


class ManagedProcess:
    """A subprocess in its own session (so its whole tree gets our signals)."""

    def __init__(
        self,
        name: str,
        argv: Sequence[str],
        *,
        env: Mapping[str, str] | None = None,
        cwd: str | Path | None = None,
        log: IO[bytes] | int | None = None,
    ) -> None:
        self.name = name
        self.argv = list(argv)
        full_env = dict(os.environ)
        if env:
            full_env.update(env)
        self._popen = subprocess.Popen(
            self.argv,
            env=full_env,
            cwd=cwd,
            stdout=log if log is not None else subprocess.DEVNULL,
            stderr=subprocess.STDOUT if log is not None else subprocess.DEVNULL,
            start_new_session=True,
            preexec_fn=_die_with(os.getpid()),
        )

    @property
    def pid(self) -> int:
        return self._popen.pid

    def session_nice(self, nice: int) -> bool:
        """Set the CPU priority of the process's whole session (its autogroup) to
        `nice`; False where the kernel has no autogroups or refuses (a higher priority
        than before needs CAP_SYS_NICE).

        The process leads its own session, and with autogroups on (Linux's default,
        `kernel.sched_autogroup_enabled`) the scheduler shares the CPU between
        sessions first and between a session's threads second: a process's own nice
        value weighs only against its session's other threads, and a session's weight
        against the others is its autogroup's nice value."""
        try:
            Path(f"/proc/{self.pid}/autogroup").write_text(f"{nice}\n")
        except OSError:
            return False
        return True

    def poll(self) -> int | None:
        return self._popen.poll()

    def stop(self, timeout: float = 10.0) -> int | None:
        """SIGTERM the process group, wait up to `timeout`, then SIGKILL. Safe to call twice."""
        if self._popen.poll() is None:
            self._signal_group(signal.SIGTERM)
            try:
                self._popen.wait(timeout)
            except subprocess.TimeoutExpired:
                self._signal_group(signal.SIGKILL)
                self._popen.wait(5)
        # Grandchildren that outlived the leader still belong to the group.
        self._signal_group(signal.SIGKILL)
        return self._popen.returncode

    def kill(self) -> None:
        """SIGKILL at once, as a crash would."""
        self._signal_group(signal.SIGKILL)
        self._popen.wait(5)

    def _signal_group(self, sig: int) -> None:
        try:
            os.killpg(self._popen.pid, sig)
        except (ProcessLookupError, PermissionError):
            pass
