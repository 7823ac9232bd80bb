"""The trivial loop that drives a controller: reconcile, then wait for a wakeup or a tick."""

from __future__ import annotations

import asyncio
import contextlib
import logging
from collections.abc import Awaitable, Callable

log = logging.getLogger(__name__)


async def run_control_loop(
    name: str,
    reconcile: Callable[[], Awaitable[None]],
    wakeup: asyncio.Event,
    stopping: asyncio.Event,
    interval: float = 1.0,
) -> None:
    while not stopping.is_set():
        try:
            await reconcile()
        except Exception:  # one guarded boundary per loop: log, keep the loop alive
            log.exception("%s: reconcile failed", name)
        with contextlib.suppress(TimeoutError):
            await asyncio.wait_for(wakeup.wait(), timeout=interval)
        wakeup.clear()
