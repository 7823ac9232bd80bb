"""Per-minute traffic of each (endpoint, version): what the Metrics API and the console show.

The Metrics API reports gauges over the *last complete minute* (Cerebras'
``/api/v1/metrics/organizations/{id}``). Each request that ends adds to the current window's
:class:`Tally` (a few integer increments and three histogram bucket bumps, no lock, no
allocation once the tally exists); at each wall-clock minute boundary :meth:`Traffic.roll`
moves the current window to ``last`` in one assignment. Readers only ever see ``last``.

Percentiles come from log-spaced histograms (buckets 10 % apart from 0.1 ms to ~20 min), so
they are within 10 % of the true value; averages are exact.
"""

from __future__ import annotations

import asyncio
import bisect
import math
import time
from dataclasses import dataclass, field

#: Bucket upper bounds in seconds: 0.1 ms × 1.1^i.
_BOUNDS = tuple(1e-4 * 1.1**i for i in range(172))


class LogHistogram:
    __slots__ = ("counts", "count", "total")

    def __init__(self) -> None:
        self.counts = [0] * (len(_BOUNDS) + 1)
        self.count = 0
        self.total = 0.0

    def add(self, seconds: float) -> None:
        self.counts[bisect.bisect_left(_BOUNDS, seconds)] += 1
        self.count += 1
        self.total += seconds

    def mean(self) -> float | None:
        return self.total / self.count if self.count else None

    def quantile(self, q: float) -> float | None:
        """The geometric middle of the bucket holding the q-quantile (None when empty)."""
        if not self.count:
            return None
        rank = max(1, math.ceil(q * self.count))
        seen = 0
        for i, n in enumerate(self.counts):
            seen += n
            if seen >= rank:
                if i == 0:
                    return _BOUNDS[0]
                if i == len(_BOUNDS):
                    return _BOUNDS[-1]
                return math.sqrt(_BOUNDS[i - 1] * _BOUNDS[i])
        return _BOUNDS[-1]  # pragma: no cover - the counts add up to count


@dataclass(slots=True)
class Tally:
    """One (endpoint, version) over one window."""

    by_status: dict[int, int] = field(default_factory=dict)
    #: prompt and completion tokens of the successful requests (from their usage)
    input_tokens: int = 0
    output_tokens: int = 0
    #: gateway receipt → first byte from the replica (streams), or → request sent plus the
    #: engine's own reported queue time (whole answers)
    queue: LogHistogram = field(default_factory=LogHistogram)
    #: gateway receipt → first byte sent to the client (a whole answer's first byte is all of it)
    ttft: LogHistogram = field(default_factory=LogHistogram)
    #: gateway receipt → last byte sent
    latency: LogHistogram = field(default_factory=LogHistogram)

    @property
    def requests(self) -> int:
        return sum(self.by_status.values())

    @property
    def successes(self) -> int:
        return self.by_status.get(200, 0)

    def failures(self) -> int:
        return self.requests - self.successes


Key = tuple[str, str]  # (endpoint id, version id or "")


class Traffic:
    """The current and the last complete window of every (endpoint, version)."""

    def __init__(self, window: float = 60.0, *, clocked: bool = True) -> None:
        #: seconds per window; the requests-per-second figures divide by it
        self.window = window
        #: roll at each wall-clock window boundary (``run``); False: only on ``roll()`` calls
        self.clocked = clocked
        self.current: dict[Key, Tally] = {}
        self.last: dict[Key, Tally] = {}
        #: unix seconds where ``last`` begins and ends
        self.last_start = self.last_end = self.current_start = time.time()

    def tally(self, endpoint: str, version: int | None) -> Tally:
        key = (endpoint, "" if version is None else str(version))
        found = self.current.get(key)
        if found is None:
            found = self.current[key] = Tally()
        return found

    def roll(self) -> None:
        """Close the current window: it becomes ``last`` (one assignment each)."""
        now = time.time()
        self.last, self.current = self.current, {}
        self.last_start, self.last_end, self.current_start = self.current_start, now, now

    async def run(self, stopping: asyncio.Event) -> None:
        """Roll at every wall-clock multiple of ``window`` (minute boundaries) until stopped."""
        while not stopping.is_set():
            try:
                await asyncio.wait_for(stopping.wait(), self.window - time.time() % self.window)
            except TimeoutError:
                self.roll()
