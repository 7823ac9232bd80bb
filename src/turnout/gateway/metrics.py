"""Prometheus series of one gateway app, in a registry of its own (tests build many apps).

Label children are cached per (endpoint, version) so the hot path does dict lookups, not
``labels()`` calls, for every request.
"""

from __future__ import annotations

from dataclasses import dataclass

from prometheus_client import CollectorRegistry, Counter, Gauge, Histogram

# Proxy overhead is sub-millisecond but generations take seconds: cover both ends.
_LATENCY_BUCKETS = (
    0.001, 0.0025, 0.005, 0.01, 0.025, 0.05, 0.1, 0.25, 0.5,
    1.0, 2.5, 5.0, 10.0, 30.0, 60.0, 120.0, 300.0,
)  # fmt: skip


@dataclass(slots=True)
class EndpointSeries:
    """The label children of one (endpoint, version); status children are made on demand."""

    metrics: GatewayMetrics
    endpoint: str
    version: str
    in_flight: Gauge
    latency: Histogram
    ttft: Histogram
    prompt_tokens: Counter
    completion_tokens: Counter
    by_status: dict[int, Counter]

    def finished(self, status: int) -> None:
        counter = self.by_status.get(status)
        if counter is None:
            counter = self.metrics.requests.labels(self.endpoint, self.version, str(status))
            self.by_status[status] = counter
        counter.inc()


class GatewayMetrics:
    def __init__(self) -> None:
        self.registry = CollectorRegistry(auto_describe=True)
        reg = self.registry
        self.requests = Counter(
            "turnout_gateway_requests",
            "Proxied inference requests by final HTTP status.",
            ["endpoint", "version", "status"],
            registry=reg,
        )
        self.errors = Counter(
            "turnout_gateway_errors",
            "Requests the gateway answered with an error or could not complete.",
            ["endpoint", "code"],
            registry=reg,
        )
        self.latency = Histogram(
            "turnout_gateway_request_seconds",
            "Time from request received to last byte sent.",
            ["endpoint", "version"],
            buckets=_LATENCY_BUCKETS,
            registry=reg,
        )
        self.ttft = Histogram(
            "turnout_gateway_ttft_seconds",
            "Streams: time from request received to first body chunk sent.",
            ["endpoint", "version"],
            buckets=_LATENCY_BUCKETS,
            registry=reg,
        )
        self.tokens = Counter(
            "turnout_gateway_tokens",
            "Tokens reported in the responses' usage.",
            ["endpoint", "version", "kind"],
            registry=reg,
        )
        self.in_flight = Gauge(
            "turnout_gateway_in_flight",
            "Proxied requests in flight (streams included).",
            ["endpoint", "version"],
            registry=reg,
        )
        self._series: dict[tuple[str, str], EndpointSeries] = {}
        self._errors: dict[tuple[str, str], Counter] = {}

    def series(self, endpoint: str, version: int | None) -> EndpointSeries:
        key = (endpoint, "" if version is None else str(version))
        found = self._series.get(key)
        if found is None:
            found = self._make_series(*key)
            self._series[key] = found
        return found

    def error(self, endpoint: str, code: str) -> None:
        # Unknown or unauthorised model names are reported under endpoint="" by the caller,
        # so a client cannot grow this dict (or the label set) without bound.
        key = (endpoint, code)
        counter = self._errors.get(key)
        if counter is None:
            counter = self.errors.labels(endpoint, code)
            self._errors[key] = counter
        counter.inc()

    def _make_series(self, endpoint: str, version: str) -> EndpointSeries:
        return EndpointSeries(
            metrics=self,
            endpoint=endpoint,
            version=version,
            in_flight=self.in_flight.labels(endpoint, version),
            latency=self.latency.labels(endpoint, version),
            ttft=self.ttft.labels(endpoint, version),
            prompt_tokens=self.tokens.labels(endpoint, version, "prompt"),
            completion_tokens=self.tokens.labels(endpoint, version, "completion"),
            by_status={},
        )
