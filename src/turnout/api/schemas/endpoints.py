"""Wire types for endpoints (reference §1.7, §1.9)."""

from __future__ import annotations

from pydantic import Field

from turnout.api.schemas.base import ManagementModel
from turnout.api.schemas.deployments import RolloutPolicySpec, RolloutStatus


class EndpointItem(ManagementModel):
    # reference §1.7
    endpoint_id: str = Field(examples=["my-org-tiny"])
    model_arch_id: str
    created: int
    updated: int
    org_name: str


class EndpointList(ManagementModel):
    # reference §1.7
    endpoints: list[EndpointItem]


class ReplicaCounts(ManagementModel):
    ready: int
    total: int


class ReplicaItem(ManagementModel):
    replica_id: str
    deployment_id: str
    version_id: int | None
    node: str | None
    gpus: list[int]
    state: str


class ReplicaSummary(ManagementModel):
    """Every replica of the endpoint, whichever deployment it belongs to."""

    ready: int
    total: int
    #: How many the endpoint wants.
    wanted: int
    #: Why fewer run than wanted (e.g. no capacity), when that is so.
    problem: str | None = None
    items: list[ReplicaItem]


class DeployedModel(ManagementModel):
    # reference §1.9 `deployed_models[]`
    id: str
    model: str
    version_alias: str | None = None
    created: int
    state: RolloutStatus
    # Turnout extensions (not in the published API)
    serving: bool = False
    replicas: ReplicaCounts | None = None


class EndpointStatus(ManagementModel):
    # reference §1.9
    name: str
    model_arch_id: str
    deployed_models: list[DeployedModel]
    managing_org_name: str
    created: int
    updated: int
    # Turnout extensions (not in the published API)
    replicas: ReplicaSummary | None = None
    follow_alias: str | None = None


class EndpointUpdate(ManagementModel):
    """Turnout extension: PATCH /management/v1/endpoints/{id}. ``follow_alias``: moving this
    alias of the endpoint's architecture deploys its version with ``rollout``; null stops."""

    follow_alias: str | None
    rollout: RolloutPolicySpec | None = None


# Turnout extensions (not in the published API): GET /management/v1/endpoints/{id}/metrics
class VersionMetrics(ManagementModel):
    version_id: int | None
    requests_per_second: float
    #: failed requests (any status but 200) over all requests; 0 without requests
    error_rate: float
    #: gateway receipt to the first byte sent to the client; null without requests
    ttft_p50_ms: float | None
    ttft_p95_ms: float | None


class EndpointMetrics(ManagementModel):
    window_seconds: int
    versions: list[VersionMetrics]
    #: unix seconds when the window ended
    at: int
