"""Frozen records that the store hands out. Rows never leave ``store/``."""

from __future__ import annotations

from collections.abc import Mapping
from dataclasses import dataclass
from enum import StrEnum

from turnout.policy import SURGE, GateReading, RolloutPolicy
from turnout.states import DeploymentState, ReplicaState, Step


class KeyKind(StrEnum):
    MANAGEMENT = "management"
    INFERENCE = "inference"


class SyncStatus(StrEnum):
    #: Registered; waiting for the sync worker.
    QUEUED = "queued"
    #: Being copied and verified.
    IN_PROGRESS = "in_progress"
    #: Published in the weight store; deployable.
    DONE = "done"
    #: Gave up; ``sync_error`` says why. Nothing was published.
    FAILED = "failed"


@dataclass(frozen=True, slots=True)
class Org:
    id: int
    name: str
    created: int
    #: the operator's cap on the org's requests in flight (per gateway); None: no limit
    max_concurrent: int | None = None


@dataclass(frozen=True, slots=True)
class ApiKey:
    id: str
    org_id: int
    org_name: str
    kind: KeyKind
    prefix: str
    created: int
    revoked: int | None
    #: inference keys: the operator's requests and tokens per minute (per gateway); None: none
    rpm: int | None = None
    tpm: int | None = None


@dataclass(frozen=True, slots=True)
class KeyGrant:
    """An active inference key as a gateway needs it: its org and the operator's limits."""

    key_hash: str
    key_id: str
    org_name: str
    rpm: int | None
    tpm: int | None
    org_max_concurrent: int | None


@dataclass(frozen=True, slots=True)
class ArchitectureRecord:
    arch_id: str
    description: str
    config: Mapping[str, object]
    serving: Mapping[str, object]


@dataclass(frozen=True, slots=True)
class ModelVersion:
    id: int
    org_id: int
    org_name: str
    arch_id: str
    version_number: int
    weight_uri: str
    fingerprint_suffix: str | None
    sync_status: SyncStatus
    sync_error: str | None
    bytes_done: int
    bytes_total: int
    digest: str | None
    weight_path: str | None
    aliases: tuple[str, ...]
    created: int
    updated: int

    @property
    def name(self) -> str:
        return f"orgs/{self.org_name}/models/{self.arch_id}/versions/{self.version_number}"

    @property
    def fingerprint(self) -> str | None:
        """``fp_`` + 10 hex digits of the digest, then ``_suffix`` (DESIGN §4)."""
        if not self.digest:
            return None
        hex_digest = self.digest.split(":", 1)[-1]
        base = f"fp_{hex_digest[:10]}"
        return f"{base}_{self.fingerprint_suffix}" if self.fingerprint_suffix else base


@dataclass(frozen=True, slots=True)
class Endpoint:
    endpoint_id: str
    org_id: int
    org_name: str
    arch_id: str
    replicas: int
    engine: str
    #: The operator's override; None: the architecture's serving default.
    gpus_per_replica: int | None
    serving_deployment_id: str | None
    #: Why the endpoint runs fewer replicas than it wants (e.g. no capacity), else None.
    replica_problem: str | None
    created: int
    updated: int
    follow_alias: str | None = None
    follow_policy: RolloutPolicy | None = None


@dataclass(frozen=True, slots=True)
class DeploymentEvent:
    at: float
    step: str
    message: str


@dataclass(frozen=True, slots=True)
class Deployment:
    id: str
    seq: int
    endpoint_id: str
    org_id: int
    org_name: str
    arch_id: str
    version_id: int
    version_number: int
    alias_used: str | None
    state: DeploymentState
    step: Step
    error_code: str | None
    error_message: str | None
    created: int
    updated: int
    policy: RolloutPolicy = SURGE
    traffic_percent: int = 0
    gates: tuple[GateReading, ...] = ()

    @property
    def model_name(self) -> str:
        return f"orgs/{self.org_name}/models/{self.arch_id}/versions/{self.version_number}"


@dataclass(frozen=True, slots=True)
class Replica:
    id: str
    endpoint_id: str
    deployment_id: str
    address: str | None
    pid: int | None
    state: ReplicaState
    error: str | None
    created: int
    updated: int
    node: str | None = None
    gpus: tuple[int, ...] = ()
    detail: str | None = None
    restarts: int = 0


@dataclass(frozen=True, slots=True)
class SourceGrant:
    """A weight source an org may sync from (see ``store.sources``)."""

    scheme: str
    prefix: str
    credentials: str | None
    created: int
