"""A deployment's rollout policy (DESIGN §8) as frozen values, shared by the API (which
validates the wire form), the store (which keeps it as JSON) and the rollout worker.

Absent policy = ``surge``, the published behaviour.
"""

from __future__ import annotations

import json
from collections.abc import Mapping
from dataclasses import asdict, dataclass, field
from enum import StrEnum
from typing import Any, Final


class Strategy(StrEnum):
    #: Start the whole new replica set next to the old one, then switch all traffic.
    SURGE = "surge"
    #: Replace one replica at a time behind the same gates (also what surge falls back to).
    ROLLING = "rolling"
    #: Weighted steps of traffic to the new version, each held while its gates are judged.
    CANARY = "canary"
    #: Reload the new weights inside the running replicas, one at a time (no spare GPUs).
    IN_PLACE = "in_place"


class OnGateFailure(StrEnum):
    #: Traffic back to 0 % at once, the new replicas stopped, the deployment failed.
    ROLLBACK = "rollback"
    #: Hold the step (traffic unchanged) until someone resumes, promotes or cancels.
    PAUSE = "pause"


@dataclass(frozen=True, slots=True)
class CanaryStep:
    traffic_percent: int
    hold_seconds: float


@dataclass(frozen=True, slots=True)
class GoldenPrompt:
    messages: tuple[Mapping[str, Any], ...]
    expect_regex: str


@dataclass(frozen=True, slots=True)
class Gates:
    """Thresholds judged new-vs-serving over the same window; None: not judged."""

    #: Requests the new version must have answered in the window before the rates and ratios
    #: decide (until then their verdict is "pending").
    min_requests: int = 20
    max_error_rate: float | None = None
    max_stream_abort_rate: float | None = None
    max_ttft_p95_ratio: float | None = None
    max_tpot_p95_ratio: float | None = None
    golden_prompts: tuple[GoldenPrompt, ...] = ()


@dataclass(frozen=True, slots=True)
class RolloutPolicy:
    strategy: Strategy = Strategy.SURGE
    steps: tuple[CanaryStep, ...] = ()
    #: ``none`` (per request), ``api_key``, or ``header:NAME``: sessions hashed into buckets
    #: that move old -> new monotonically as the new version's weight grows.
    sticky: str = "none"
    gates: Gates = field(default_factory=Gates)
    on_gate_failure: OnGateFailure = OnGateFailure.ROLLBACK

    def to_json(self) -> str:
        return json.dumps(asdict(self))

    @classmethod
    def from_json(cls, text: str | None) -> RolloutPolicy:
        if not text:
            return SURGE
        raw = json.loads(text)
        gates = raw.get("gates") or {}
        return cls(
            strategy=Strategy(raw["strategy"]),
            steps=tuple(CanaryStep(**s) for s in raw.get("steps") or ()),
            sticky=raw.get("sticky", "none"),
            gates=Gates(
                **{k: v for k, v in gates.items() if k != "golden_prompts"},
                golden_prompts=tuple(
                    GoldenPrompt(tuple(g["messages"]), g["expect_regex"])
                    for g in gates.get("golden_prompts") or ()
                ),
            ),
            on_gate_failure=OnGateFailure(raw.get("on_gate_failure", "rollback")),
        )

    @property
    def sticky_header(self) -> str | None:
        """The header a session is keyed by (lower case), for ``header:NAME``."""
        kind, _, name = self.sticky.partition(":")
        return name.lower() if kind == "header" else None


SURGE: Final = RolloutPolicy()


class Verdict(StrEnum):
    PASS = "pass"
    FAIL = "fail"
    #: Not enough requests in the window to judge yet.
    PENDING = "pending"


@dataclass(frozen=True, slots=True)
class GateReading:
    name: str
    threshold: float
    reading: float | None
    verdict: Verdict
    #: For people: e.g. "error rate 0.31 > 0.02 over 212 requests".
    detail: str = ""
