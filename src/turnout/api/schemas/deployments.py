"""Wire types for deployments (reference §1.8 and the DESIGN §4 extensions)."""

from __future__ import annotations

from typing import Any, Literal

from pydantic import Field

from turnout.api.schemas.base import ManagementModel, OperationError

RolloutStatus = Literal["not_started", "in_progress", "complete", "failed", "cancelled"]


# Turnout extensions (not in the published API): the rollout policy of DESIGN §8.


class CanaryStepSpec(ManagementModel):
    traffic_percent: int = Field(ge=1, le=99, description="The new version's share, in %.")
    hold_seconds: float = Field(ge=0, le=86_400, description="How long the step is judged.")


class GoldenPromptSpec(ManagementModel):
    messages: list[dict[str, Any]] = Field(min_length=1, max_length=32)
    expect_regex: str = Field(min_length=1, max_length=1000)


class GatesSpec(ManagementModel):
    min_requests: int = Field(default=20, ge=0, le=1_000_000)
    max_error_rate: float | None = Field(default=None, ge=0, le=1)
    max_stream_abort_rate: float | None = Field(default=None, ge=0, le=1)
    max_ttft_p95_ratio: float | None = Field(default=None, gt=0, le=1000)
    max_tpot_p95_ratio: float | None = Field(default=None, gt=0, le=1000)
    golden_prompts: list[GoldenPromptSpec] = Field(default_factory=list, max_length=20)


class RolloutPolicySpec(ManagementModel):
    strategy: Literal["surge", "rolling", "canary", "in_place"] = "surge"
    steps: list[CanaryStepSpec] = Field(default_factory=list, max_length=20)
    sticky: str = Field(default="none", pattern=r"^(none|api_key|header:[A-Za-z0-9-]{1,64})$")
    gates: GatesSpec = Field(default_factory=GatesSpec)
    on_gate_failure: Literal["rollback", "pause"] = "rollback"


class DeployRequest(ManagementModel):
    # reference §1.8
    model: str = Field(
        min_length=1,
        max_length=512,
        examples=["orgs/my-org/models/tiny-llama/versions/production"],
    )
    # Turnout extension (not in the published API); absent: surge.
    rollout: RolloutPolicySpec | None = None


class GateReadingOut(ManagementModel):
    name: str
    threshold: float
    reading: float | None
    verdict: Literal["pass", "fail", "pending"]
    detail: str


class DeploymentEvent(ManagementModel):
    at: float
    step: str
    message: str


class DeploymentInfo(ManagementModel):
    # reference §1.8 `response`
    deployment_id: str
    endpoint_id: str
    org_name: str
    model_arch_id: str
    version_id: int
    created: int
    updated: int
    rollout_status: RolloutStatus
    # Turnout extensions (not in the published API)
    version_alias: str | None = None
    step: str | None = None
    events: list[DeploymentEvent] | None = None
    strategy: str = "surge"
    #: The new version's share of traffic (a canary's weight; 100 once it serves).
    traffic_percent: int | None = None
    gates: list[GateReadingOut] | None = None


class DeploymentOperation(ManagementModel):
    # reference §1.8
    name: str
    done: bool
    response: DeploymentInfo
    # Turnout extension (AIP-151): present when the rollout failed or was cancelled
    error: OperationError | None = None


class DeploymentList(ManagementModel):
    # Turnout extension: GET /management/v1/endpoints/{id}/deployments, newest first
    deployments: list[DeploymentOperation]
