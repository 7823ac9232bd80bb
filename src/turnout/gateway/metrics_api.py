"""The Metrics API in Cerebras' format, and the per-version summary the console shows.

Cerebras publishes ``GET https://cloud.cerebras.ai/api/v1/metrics/organizations/{organization_id}``
(Private Preview; inference-docs.cerebras.ai/api-reference/metrics/retrieve-metrics): pulled
with ``Authorization: Bearer <inference key>``, Prometheus text of gauges over the last
complete minute, labelled ``endpoint`` and ``organization_id``, rate-limited to 6 requests a
minute per organization. The gateway serves the same route; ``organization_id`` is the Turnout
org name, and every sample also carries ``version`` (the model version that answered), so a
rollout's two versions can be told apart. A key sees only its own org.

Metrics, as Cerebras names and describes them: ``inference_endpoint_status`` (1 up: it has a
ready replica; 0 down), ``requests_count_total``, ``requests_success_total`` (HTTP 200),
``requests_failure_total`` (by ``code``), ``input_tokens_total`` and ``output_tokens_total``
(successful requests), ``queue_time_seconds`` and ``e2e_latency_seconds`` with
``percentile`` = avg, p50, p90, p95, p99; plus ``ttft_seconds`` (time to the first byte sent,
same percentiles; Cerebras' guide names it).
"""

from __future__ import annotations

from collections.abc import Iterable
from dataclasses import dataclass

from turnout.gateway.traffic import LogHistogram, Tally, Traffic
from turnout.routing.table import EndpointRoute, RoutingTable

_PERCENTILES = (("p50", 0.5), ("p90", 0.9), ("p95", 0.95), ("p99", 0.99))

_HELP = {
    "inference_endpoint_status": (
        "Status of inference endpoint (-1=error calculating status, 0=down, 1=up)"
    ),
    "requests_count_total": "Total request count (all HTTP codes) in the last complete minute",
    "requests_success_total": ("Total successful requests (HTTP 200) in the last complete minute"),
    "requests_failure_total": "Total failed requests by HTTP code in the last complete minute",
    "input_tokens_total": "Total input tokens for successful requests in the last complete minute",
    "output_tokens_total": (
        "Total output tokens for successful requests in the last complete minute"
    ),
    "queue_time_seconds": "Queue time percentiles in seconds",
    "e2e_latency_seconds": "End-to-end API latency percentiles in seconds",
    "ttft_seconds": "Time to first token percentiles in seconds",
}


def _escape(value: str) -> str:
    return value.replace("\\", "\\\\").replace('"', '\\"').replace("\n", "\\n")


def _labels(**labels: str) -> str:
    return "{" + ",".join(f'{k}="{_escape(v)}"' for k, v in labels.items()) + "}"


def _versions(route: EndpointRoute, traffic: Traffic) -> list[str]:
    """The versions to report: those that answered last minute, and those routed now."""
    found = {version for endpoint, version in traffic.last if endpoint == route.endpoint_id}
    if route.version_id is not None:
        found.add(str(route.version_id))
    found.update(str(r.version_id) for r in route.replicas if r.version_id is not None)
    return sorted(found, key=lambda v: (len(v), v))


def render(traffic: Traffic, table: RoutingTable, org: str) -> str:
    """The org's endpoints' last complete minute as Prometheus text."""
    samples: dict[str, list[str]] = {name: [] for name in _HELP}
    routes = sorted(
        (r for r in table.endpoints.values() if r.org_name == org), key=lambda r: r.endpoint_id
    )
    for route in routes:
        serving = "" if route.version_id is None else str(route.version_id)
        up = 1.0 if route.replicas else 0.0
        labels = _labels(endpoint=route.endpoint_id, organization_id=org, version=serving)
        samples["inference_endpoint_status"].append(f"inference_endpoint_status{labels} {up}")
        for version in _versions(route, traffic):
            tally = traffic.last.get((route.endpoint_id, version)) or Tally()
            base = {"endpoint": route.endpoint_id, "organization_id": org, "version": version}
            _add_tally(samples, base, tally)
    lines: list[str] = []
    for name, rows in samples.items():
        lines.append(f"# HELP {name} {_HELP[name]}")
        lines.append(f"# TYPE {name} gauge")
        lines.extend(rows)
    return "\n".join(lines) + "\n"


def _add_tally(samples: dict[str, list[str]], base: dict[str, str], tally: Tally) -> None:
    labels = _labels(**base)
    samples["requests_count_total"].append(f"requests_count_total{labels} {float(tally.requests)}")
    samples["requests_success_total"].append(
        f"requests_success_total{labels} {float(tally.successes)}"
    )
    failures = sorted((s, n) for s, n in tally.by_status.items() if s != 200)
    if not failures:
        samples["requests_failure_total"].append(f"requests_failure_total{labels} 0.0")
    for status, count in failures:
        coded = _labels(**base, code=str(status))
        samples["requests_failure_total"].append(f"requests_failure_total{coded} {float(count)}")
    samples["input_tokens_total"].append(f"input_tokens_total{labels} {float(tally.input_tokens)}")
    samples["output_tokens_total"].append(
        f"output_tokens_total{labels} {float(tally.output_tokens)}"
    )
    for name, histogram in (
        ("queue_time_seconds", tally.queue),
        ("e2e_latency_seconds", tally.latency),
        ("ttft_seconds", tally.ttft),
    ):
        samples[name].extend(_percentile_rows(name, base, histogram))


def _percentile_rows(name: str, base: dict[str, str], histogram: LogHistogram) -> Iterable[str]:
    mean = histogram.mean()
    if mean is None:
        return  # no request in the window: no latency to report
    yield f"{name}{_labels(**base, percentile='avg')} {mean}"
    for label, q in _PERCENTILES:
        yield f"{name}{_labels(**base, percentile=label)} {histogram.quantile(q)}"


@dataclass(frozen=True, slots=True)
class VersionTraffic:
    """One version of an endpoint over the last complete window (the console's view)."""

    version_id: int | None
    requests_per_second: float
    error_rate: float
    ttft_p50_ms: float | None
    ttft_p95_ms: float | None


def version_traffic(
    traffic: Traffic, route: EndpointRoute | None, endpoint_id: str
) -> list[VersionTraffic]:
    versions = {version for endpoint, version in traffic.last if endpoint == endpoint_id}
    if route is not None:
        versions.update(_versions(route, traffic))
    out = []
    for version in sorted(versions, key=lambda v: (len(v), v)):
        tally = traffic.last.get((endpoint_id, version)) or Tally()
        requests = tally.requests
        p50, p95 = tally.ttft.quantile(0.5), tally.ttft.quantile(0.95)
        out.append(
            VersionTraffic(
                version_id=int(version) if version.isdigit() else None,
                requests_per_second=requests / traffic.window,
                error_rate=tally.failures() / requests if requests else 0.0,
                ttft_p50_ms=None if p50 is None else p50 * 1e3,
                ttft_p95_ms=None if p95 is None else p95 * 1e3,
            )
        )
    return out
