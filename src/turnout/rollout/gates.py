"""Judging a canary: the new version against the serving one over the same window (pure).

Rates are judged against their thresholds once the new version has answered ``min_requests``
in the window; latency ratios compare the new version's p95 with the serving one's. Until
there are enough requests a gate's verdict is ``pending``; a failing gate says its numbers.
"""

from __future__ import annotations

from turnout.policy import GateReading, Gates, Verdict
from turnout.routing.stats import Histogram, VersionStats


def judge(gates: Gates, new: VersionStats, serving: VersionStats) -> list[GateReading]:
    enough = new.requests >= gates.min_requests
    readings = [
        GateReading(
            "min_requests",
            float(gates.min_requests),
            float(new.requests),
            Verdict.PASS if enough else Verdict.PENDING,
            f"{new.requests} requests in the window (needs {gates.min_requests})",
        )
    ]
    if gates.max_error_rate is not None:
        rate = new.errors / new.requests if new.requests else None
        readings.append(
            _rate("max_error_rate", gates.max_error_rate, rate, enough, "error rate", new.requests)
        )
    if gates.max_stream_abort_rate is not None:
        rate = new.stream_aborts / new.streams if new.streams else None
        readings.append(
            _rate(
                "max_stream_abort_rate",
                gates.max_stream_abort_rate,
                rate,
                enough,
                "stream abort rate",
                new.streams,
            )
        )
    if gates.max_ttft_p95_ratio is not None:
        readings.append(
            _ratio("max_ttft_p95_ratio", gates.max_ttft_p95_ratio, new.ttft, serving.ttft, enough)
        )
    if gates.max_tpot_p95_ratio is not None:
        readings.append(
            _ratio("max_tpot_p95_ratio", gates.max_tpot_p95_ratio, new.tpot, serving.tpot, enough)
        )
    return readings


def _rate(
    name: str, threshold: float, rate: float | None, enough: bool, what: str, over: int
) -> GateReading:
    if rate is None or not enough:
        return GateReading(name, threshold, rate, Verdict.PENDING, f"{what}: too few requests")
    verdict = Verdict.FAIL if rate > threshold else Verdict.PASS
    sign = ">" if verdict is Verdict.FAIL else "<="
    return GateReading(
        name,
        threshold,
        round(rate, 4),
        verdict,
        f"{what} {rate:.2f} {sign} {threshold:g} over {over} requests",
    )


def _ratio(
    name: str, threshold: float, new: Histogram, serving: Histogram, enough: bool
) -> GateReading:
    label = name.removeprefix("max_").removesuffix("_ratio").replace("_", " ")
    new_p95, old_p95 = new.quantile(0.95), serving.quantile(0.95)
    if not enough or new_p95 is None or not old_p95:
        return GateReading(name, threshold, None, Verdict.PENDING, f"{label}: too few samples")
    ratio = new_p95 / old_p95
    verdict = Verdict.FAIL if ratio > threshold else Verdict.PASS
    sign = ">" if verdict is Verdict.FAIL else "<="
    detail = (
        f"{label} ratio {ratio:.2f} {sign} {threshold:g} "
        f"(new {new_p95 * 1000:.0f} ms vs serving {old_p95 * 1000:.0f} ms)"
    )
    return GateReading(name, threshold, round(ratio, 3), verdict, detail)


def failing(readings: list[GateReading]) -> list[GateReading]:
    return [r for r in readings if r.verdict is Verdict.FAIL]
