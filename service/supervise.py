"""Long-lived background tasks that never die silently.

A `Supervisor` runs coroutine functions as tasks and restarts each, with capped
backoff, whenever it raises or returns. Every failure is logged (the exception's type
and where it was raised, never its text, which may quote data) and counted in
`failures[name]` for `/metrics`; `down` names the tasks waiting to be restarted, and
readiness is false while any is.
"""

from __future__ import annotations

import asyncio
import logging
import traceback
from collections import Counter
from collections.abc import Awaitable, Callable

log = logging.getLogger("service.supervise")


class Supervisor:
    def __init__(self, *, first_backoff: float = 0.1, max_backoff: float = 5.0) -> None:
        self.failures: Counter[str] = Counter()
        self.down: set[str] = set()
        self._first_backoff = first_backoff
        self._max_backoff = max_backoff
        self._tasks: dict[str, asyncio.Task[None]] = {}

    def start(self, name: str, run: Callable[[], Awaitable[None]]) -> asyncio.Task[None]:
        """Run `run()` now, and again after every failure, until `aclose`."""
        task = asyncio.create_task(self._guard(name, run), name=name)
        self._tasks[name] = task
        return task

    @property
    def healthy(self) -> bool:
        return not self.down and all(not t.done() for t in self._tasks.values())

    async def _guard(self, name: str, run: Callable[[], Awaitable[None]]) -> None:
        backoff = self._first_backoff
        while True:
            try:
                await run()
                log.error("background task %s returned; restarting it", name)
            except asyncio.CancelledError:
                raise
            except Exception as exc:
                where = traceback.extract_tb(exc.__traceback__)[-1:]
                at = f"{where[0].filename}:{where[0].lineno}" if where else "?"
                log.error(
                    "background task %s failed (%s at %s); restarting it in %.1fs",
                    name,
                    type(exc).__name__,
                    at,
                    backoff,
                )
            self.failures[name] += 1
            self.down.add(name)
            try:
                await asyncio.sleep(backoff)
            finally:
                self.down.discard(name)
            backoff = min(backoff * 2, self._max_backoff)

    async def aclose(self) -> None:
        """Cancel every task and wait for them (safe to call twice)."""
        tasks = list(self._tasks.values())
        self._tasks.clear()
        for task in tasks:
            task.cancel()
        await asyncio.gather(*tasks, return_exceptions=True)
