"""Wire types for deployments (reference §1.8 and the DESIGN §4 extensions)."""

from __future__ import annotations

from typing import Literal

from pydantic import Field

from turnout.api.schemas.base import ManagementModel, OperationError

RolloutStatus = Literal["not_started", "in_progress", "complete", "failed", "cancelled"]


class DeployRequest(ManagementModel):
    # reference §1.8
    model: str = Field(
        min_length=1,
        max_length=512,
        examples=["orgs/my-org/models/tiny-llama/versions/production"],
    )


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
