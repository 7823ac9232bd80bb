"""The door every generation request passes: open, or closed while the weights are swapped.

A request enters before it is tokenized and leaves when its response has been sent (streams
included), so "nobody inside" means no request holds anything of the loaded model: not a
prompt tokenized by its tokenizer, not a sequence in the batch, not a response that will name
its fingerprint. A swap closes the door, waits until nobody is inside, swaps, and opens it;
requests that arrive meanwhile wait at the door (bounded) instead of being refused.
"""

from __future__ import annotations

import asyncio
import time
from collections.abc import AsyncIterator
from contextlib import asynccontextmanager
from dataclasses import dataclass

from turnout.errors import EndpointNotReady


class DrainTimeout(Exception):
    """Requests were still inside when a closed gate's drain deadline passed."""

    def __init__(self, inside: int, timeout: float) -> None:
        super().__init__(f"{inside} request(s) still running after {timeout:g} s")
        self.inside = inside


@dataclass(slots=True)
class Closure:
    """What happened while the gate was closed."""

    #: Requests that arrived while closed and waited for it to open.
    held: int = 0


class AdmissionGate:
    def __init__(self) -> None:
        self._open = asyncio.Event()
        self._open.set()
        self._empty = asyncio.Event()
        self._empty.set()
        self._inside = 0
        self._waiting = 0
        self._closure: Closure | None = None

    @property
    def inside(self) -> int:
        return self._inside

    @property
    def waiting(self) -> int:
        return self._waiting

    @property
    def closed(self) -> bool:
        return not self._open.is_set()

    async def enter(self, timeout: float) -> None:
        """Wait (at most ``timeout`` seconds) until the gate is open, then count this request in.

        Raises :class:`EndpointNotReady` (503) when the gate stays closed too long.
        """
        if not self._open.is_set():
            await self._wait_open(timeout)
        # No await between the check above and this count: a swap that closes the gate later
        # sees this request inside and waits for it.
        self._inside += 1
        self._empty.clear()

    def leave(self) -> None:
        self._inside -= 1
        if self._inside == 0:
            self._empty.set()

    @asynccontextmanager
    async def closed_for_swap(self, drain_timeout: float) -> AsyncIterator[Closure]:
        """Close the gate, wait until nobody is inside, and reopen it on exit.

        Raises :class:`DrainTimeout` (gate reopened, nothing swapped) if requests are still
        inside after ``drain_timeout`` seconds.
        """
        closure = Closure()
        self._closure = closure
        self._open.clear()
        try:
            try:
                await asyncio.wait_for(self._empty.wait(), drain_timeout)
            except TimeoutError:
                raise DrainTimeout(self._inside, drain_timeout) from None
            yield closure
        finally:
            self._closure = None
            self._open.set()

    async def _wait_open(self, timeout: float) -> None:
        if self._closure is not None:
            self._closure.held += 1
        self._waiting += 1
        deadline = time.monotonic() + timeout
        try:
            # Loop: between the gate opening and this task running, another swap may close it.
            while not self._open.is_set():
                left = deadline - time.monotonic()
                if left <= 0:
                    raise TimeoutError
                await asyncio.wait_for(self._open.wait(), left)
        except TimeoutError:
            raise EndpointNotReady(
                f"The engine is swapping its weights and did not finish within {timeout:g} s; "
                "retry the request.",
                code="weights_swapping",
            ) from None
        finally:
            self._waiting -= 1
