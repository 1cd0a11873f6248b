"""Run a process's main coroutine until SIGTERM or SIGINT, then let it clean up."""

from __future__ import annotations

import asyncio
import contextlib
import signal
from collections.abc import Coroutine
from typing import Any


def _loop_factory() -> Any:
    try:
        import uvloop
    except ImportError:  # uvloop is optional (not on every platform)
        return None
    return uvloop.new_event_loop


async def _main(coro: Coroutine[Any, Any, Any]) -> None:
    task = asyncio.ensure_future(coro)
    loop = asyncio.get_running_loop()
    for sig in (signal.SIGTERM, signal.SIGINT):
        loop.add_signal_handler(sig, task.cancel)
    with contextlib.suppress(asyncio.CancelledError):
        await task


def run_until_signalled(coro: Coroutine[Any, Any, Any]) -> None:
    with asyncio.Runner(loop_factory=_loop_factory()) as runner:
        runner.run(_main(coro))
