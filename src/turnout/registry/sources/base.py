"""What every weight source shares: the failure type, the fetch context and progress.

A source copies one model directory's files into ``ctx.staging.model`` (keeping only files
that :func:`turnout.registry.validate.is_model_file` accepts) and may keep resume state in
``ctx.staging.work``. Blocking work runs in threads through :func:`run_blocking`, which keeps the
event loop free, reports progress, and on cancellation asks the threads to stop at the next
part boundary so a later sync with the same job id can resume.
"""

from __future__ import annotations

import asyncio
import threading
import time
from collections.abc import Awaitable, Callable
from dataclasses import dataclass, field
from typing import Final, Protocol, TypeVar

from turnout.errors import TurnoutError
from turnout.registry.config import SyncConfig
from turnout.registry.weightstore import Staging

T = TypeVar("T")
ProgressCallback = Callable[[int, int], Awaitable[None]]

#: Progress is reported at most this often (seconds), and once more at the end.
PROGRESS_INTERVAL: Final = 0.25


class SyncFailed(TurnoutError):
    """A sync cannot finish; the message names the file, tensor or object and what to do."""

    default_code = "sync_failed"


class Stopped(Exception):
    """Raised inside worker threads once the sync was cancelled."""


class ProgressMeter:
    """Thread-safe byte counter that forwards (done, total) to an async callback, throttled."""

    def __init__(self, callback: ProgressCallback | None) -> None:
        self._callback = callback
        self._lock = threading.Lock()
        self.done = 0
        self.total = 0
        self._sent: tuple[int, int] | None = None
        self._sent_at = 0.0

    def set_total(self, total: int) -> None:
        with self._lock:
            self.total = total

    def add(self, n: int) -> None:
        with self._lock:
            self.done += n

    async def report(self, *, force: bool = False) -> None:
        if self._callback is None:
            return
        with self._lock:
            now = (self.done, self.total)
        due = time.monotonic() - self._sent_at >= PROGRESS_INTERVAL
        if now != self._sent and (force or due):
            self._sent, self._sent_at = now, time.monotonic()
            await self._callback(*now)


@dataclass(slots=True)
class FetchContext:
    staging: Staging
    config: SyncConfig
    meter: ProgressMeter
    #: Set when the sync is cancelled; worker threads check it between parts.
    stop: threading.Event = field(default_factory=threading.Event)

    def check_stop(self) -> None:
        if self.stop.is_set():
            raise Stopped()


class Source(Protocol):
    @property
    def uri(self) -> str:
        """The URI as the user gave it, for messages."""
        ...

    async def fetch(self, ctx: FetchContext) -> None: ...


async def run_blocking(fn: Callable[[], T], ctx: FetchContext) -> T:
    """Run ``fn`` in a thread, reporting progress while it runs.

    If the caller is cancelled (or the progress callback raises), the threads are told to stop
    and awaited, so that no thread still writes into staging when this returns.
    """
    future = asyncio.get_running_loop().run_in_executor(None, fn)
    try:
        while not future.done():
            await asyncio.wait({future}, timeout=PROGRESS_INTERVAL)
            await ctx.meter.report()
    except BaseException:
        ctx.stop.set()
        await asyncio.wait({future})
        raise
    return future.result()
