"""Background clients for the demo: call the endpoint without pause and record every outcome,
so the summary can show that a rollout under load drops nothing. ``ClientLoop`` is the loop
itself, which the tests and benchmarks that load a gateway build on too."""

from __future__ import annotations

import json
import threading
import time
from dataclasses import dataclass, field
from typing import Self

from turnout.client import ApiError, TurnoutClient

QUESTION = "Tell me a fun fact about trains."


@dataclass(frozen=True)
class Outcome:
    started: float
    finished: float
    version: int | None
    streamed: bool
    error: str | None


@dataclass(kw_only=True)
class ClientLoop:
    """``threads`` clients, each calling ``run(index)`` until ``stopping`` is set.

    The demo's load and the load that tests and benchmarks put on a gateway during a rollout
    share this start/stop so that each of them only says what one client does. Keyword-only, so
    that a dataclass subclass can put its own fields, with or without defaults, first.
    """

    threads: int = 1
    #: How long ``stop`` waits for each client's last request; None: as long as it takes.
    join_timeout: float | None = 60.0
    stopping: threading.Event = field(default_factory=threading.Event, repr=False)
    workers: list[threading.Thread] = field(default_factory=list, init=False, repr=False)

    def run(self, index: int) -> None:
        """One client's loop; it returns once ``stopping`` is set."""
        raise NotImplementedError

    def start(self) -> Self:
        # Daemon threads: a client stuck in a request must not keep the process alive.
        self.workers = [
            threading.Thread(target=self.run, args=(i,), daemon=True) for i in range(self.threads)
        ]
        for worker in self.workers:
            worker.start()
        return self

    def stop(self) -> None:
        self.stopping.set()
        for worker in self.workers:
            worker.join(timeout=self.join_timeout)

    def __enter__(self) -> Self:
        return self.start()

    def __exit__(self, *exc: object) -> None:
        self.stop()


class Load(ClientLoop):
    """``streaming + plain`` clients calling the gateway in a loop until stopped."""

    def __init__(
        self, url: str, key: str, endpoint: str, *, streaming: int = 1, plain: int = 2
    ) -> None:
        super().__init__(threads=streaming + plain, join_timeout=120)
        self.url, self.key, self.endpoint = url, key, endpoint
        self.streaming = streaming
        self.outcomes: list[Outcome] = []
        self._lock = threading.Lock()

    def run(self, index: int) -> None:
        stream = index < self.streaming
        with TurnoutClient(self.url, self.key, timeout=120) as client:
            while not self.stopping.is_set():
                started = time.time()
                try:
                    version, error = self._call(client, stream), None
                except Exception as exc:  # every failure is an outcome the summary counts
                    version, error = None, f"{type(exc).__name__}: {exc}"
                with self._lock:
                    self.outcomes.append(Outcome(started, time.time(), version, stream, error))

    def _call(self, client: TurnoutClient, stream: bool) -> int:
        body = {
            "model": self.endpoint,
            "messages": [{"role": "user", "content": QUESTION}],
            "max_tokens": 16,
            "stream": stream,
        }
        if not stream:
            resp = client.request("POST", "/v1/chat/completions", body)
            if resp.status_code != 200:
                raise ApiError.from_response(resp)
            if resp.json()["choices"][0]["finish_reason"] not in ("stop", "length"):
                raise RuntimeError(f"unexpected finish_reason in {resp.text[:200]}")
            return int(resp.headers["x-turnout-version"])
        with client.stream("/v1/chat/completions", body) as resp:
            finish = None
            for line in resp.iter_lines():
                if not line.startswith("data:") or line.endswith("[DONE]"):
                    continue
                chunk = json.loads(line[len("data:") :])
                for choice in chunk.get("choices") or []:
                    finish = choice.get("finish_reason") or finish
            if finish is None:
                # A stream cut off before its last chunk is a failure the client would see.
                raise RuntimeError("stream ended without a finish_reason")
            return int(resp.headers["x-turnout-version"])


@dataclass
class Summary:
    served: dict[int, int] = field(default_factory=dict)
    failed: int = 0
    errors: list[str] = field(default_factory=list)
    switch_s: float = 0.0
    #: phase -> (count, p50 seconds, p99 seconds)
    latency: dict[str, tuple[int, float, float]] = field(default_factory=dict)


def percentile(values: list[float], q: float) -> float:
    if not values:
        return 0.0
    ordered = sorted(values)
    return ordered[min(len(ordered) - 1, round(q * (len(ordered) - 1)))]


def summarize(outcomes: list[Outcome], submitted: float, complete: float) -> Summary:
    """Count requests per version and latency before/during/after the rollout window."""
    summary = Summary(switch_s=complete - submitted)
    phases: dict[str, list[float]] = {"before": [], "during": [], "after": []}
    for o in outcomes:
        if o.error is not None:
            summary.failed += 1
            summary.errors.append(o.error)
            continue
        if o.version is not None:
            summary.served[o.version] = summary.served.get(o.version, 0) + 1
        phase = (
            "before" if o.finished < submitted else "after" if o.started > complete else "during"
        )
        phases[phase].append(o.finished - o.started)
    for name, values in phases.items():
        summary.latency[name] = (len(values), percentile(values, 0.5), percentile(values, 0.99))
    return summary
