"""Wire types for the operator's admin API (/admin/v1; Turnout only)."""

from __future__ import annotations

from typing import Literal

from pydantic import Field

from turnout.api.schemas.base import ManagementModel


class OrgCreate(ManagementModel):
    name: str = Field(min_length=2, max_length=128, examples=["my-org"])


class OrgOut(ManagementModel):
    name: str
    created: int
    architectures: list[str]
    #: requests in flight over all the org's endpoints (per gateway); null: no limit
    max_concurrent: int | None = None


class OrgLimitUpdate(ManagementModel):
    """A field left out keeps its value; null removes the limit."""

    max_concurrent: int | None = Field(default=None, ge=1, le=1_000_000)


class OrgList(ManagementModel):
    orgs: list[OrgOut]


class KeyCreate(ManagementModel):
    org: str
    kind: Literal["management", "inference"]


class KeyOut(ManagementModel):
    id: str
    org: str
    kind: str
    prefix: str
    created: int
    revoked: int | None = None
    #: Inference keys: requests and tokens per minute (per gateway); null: no limit.
    rpm: int | None = None
    tpm: int | None = None
    #: Only in the response that creates the key; never stored.
    key: str | None = None


class KeyLimitUpdate(ManagementModel):
    """A field left out keeps its value; null removes the limit."""

    rpm: int | None = Field(default=None, ge=1, le=1_000_000_000)
    tpm: int | None = Field(default=None, ge=1, le=1_000_000_000_000)


class KeyList(ManagementModel):
    keys: list[KeyOut]


class ArchOut(ManagementModel):
    arch_id: str
    description: str
    config: dict[str, int | float | str | bool]
    serving: dict[str, int | float | str | bool]


class ArchList(ManagementModel):
    architectures: list[ArchOut]


class GrantCreate(ManagementModel):
    org: str


class EndpointCreate(ManagementModel):
    endpoint_id: str = Field(min_length=2, max_length=128, examples=["my-org-tiny"])
    org: str
    arch: str
    replicas: int = Field(default=1, ge=1, le=64)
    #: An engine template name; default: the architecture's serving default.
    engine: str | None = None
    #: GPUs per replica (its tensor-parallel size); default: the architecture's.
    gpus_per_replica: int | None = Field(default=None, ge=0, le=64)


class EndpointOut(ManagementModel):
    endpoint_id: str
    org: str
    arch: str
    replicas: int
    engine: str
    gpus_per_replica: int
    created: int
    serving_deployment_id: str | None = None
    replica_problem: str | None = None


class EndpointOutList(ManagementModel):
    endpoints: list[EndpointOut]


class ReplicaOut(ManagementModel):
    replica_id: str
    endpoint_id: str
    deployment_id: str
    version_id: int | None
    node: str | None
    address: str | None
    #: Device ids on its node (its CUDA_VISIBLE_DEVICES).
    gpus: list[int]
    state: str
    # What else an operator wants to see of it.
    error: str | None = None
    detail: str | None = None
    restarts: int = 0


class ReplicaList(ManagementModel):
    replicas: list[ReplicaOut]


class SourceAllow(ManagementModel):
    #: s3://bucket[/prefix], an absolute directory (or file:///dir), or hf://namespace[/repo].
    uri: str = Field(min_length=1, max_length=1024, examples=["s3://acme-weights/models"])
    #: s3: an AWS profile of the server (its credentials file); hf: the server environment
    #: variable that holds the org's token. Never the secret itself.
    credentials: str | None = Field(default=None, max_length=256, examples=["acme"])


class SourceRemove(ManagementModel):
    uri: str = Field(min_length=1, max_length=1024)


class SourceOut(ManagementModel):
    org: str
    scheme: str
    uri: str
    credentials: str | None = None
    created: int


class SourceList(ManagementModel):
    sources: list[SourceOut]


class DeploymentDetail(ManagementModel):
    """What the operator sees of a deployment: its full error and events, engine log lines
    and server paths included (tenants see them redacted)."""

    deployment_id: str
    endpoint_id: str
    org: str
    version_id: int
    state: str
    step: str
    error_code: str | None = None
    error_message: str | None = None
    events: list[str]
