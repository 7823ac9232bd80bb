"""The routing table (which replicas serve each endpoint) and the key entries gateways check
callers against, as frozen values.

The rollout worker's feed builds it from the store (:mod:`turnout.routing.feed`); a gateway
swaps it in whole and reads it on every request without touching the store. This module
imports nothing of Turnout, so the gateway and the feed can share it.
"""

from __future__ import annotations

from collections.abc import Mapping
from dataclasses import dataclass, field
from types import MappingProxyType


@dataclass(frozen=True, slots=True)
class ReplicaRoute:
    replica_id: str
    address: str  #: base URL, e.g. "http://127.0.0.1:8101"
    # Set when this replica runs another version than its endpoint's (a "rolling" rollout
    # serves two versions from one endpoint for a while); None: the endpoint's value holds.
    deployment_id: str | None = None
    version_id: int | None = None
    fingerprint: str | None = None

    def __str__(self) -> str:
        return f"{self.replica_id}@{self.address}"


@dataclass(frozen=True, slots=True)
class CanaryRoute:
    """A canary's new version: it gets ``percent`` of the endpoint's requests.

    With ``sticky`` ``api_key`` or ``header:<name>`` a session is hashed into one of 10,000
    buckets and goes to the new version when its bucket is below the weight: as the weight
    only grows, a session moves old -> new once and never back. ``none``: per request.
    """

    deployment_id: str
    version_id: int
    fingerprint: str | None
    percent: int
    sticky: str
    replicas: tuple[ReplicaRoute, ...]


@dataclass(frozen=True, slots=True)
class EndpointRoute:
    endpoint_id: str
    org_name: str
    deployment_id: str | None  #: None while nothing serves yet
    version_id: int | None
    #: "fp_" + first 10 hex of the version digest [+ "_" + suffix]; computed by the controller.
    fingerprint: str | None
    replicas: tuple[ReplicaRoute, ...] = ()
    #: when the endpoint was created (unix seconds; ``/v1/models`` reports it)
    created: int = 0
    #: A canary in progress, else None.
    canary: CanaryRoute | None = None
    #: While its only replicas swap weights in place, requests wait this long for them
    #: (TURNOUT_HOLD_SECONDS) instead of a 503; 0: no hold.
    hold_seconds: float = 0.0

    def __str__(self) -> str:
        return f"{self.endpoint_id} (org {self.org_name}, version {self.version_id})"


@dataclass(frozen=True, slots=True)
class RoutingTable:
    endpoints: Mapping[str, EndpointRoute] = field(default_factory=lambda: MappingProxyType({}))
    generation: int = 0

    def __str__(self) -> str:
        return f"routing table generation {self.generation} ({len(self.endpoints)} endpoints)"


@dataclass(frozen=True, slots=True)
class KeyEntry:
    """One active inference key as the gateway needs it. ``None``: no limit."""

    org: str
    key_id: str
    #: requests per minute for this key
    rpm: int | None = None
    #: tokens per minute for this key (prompt + completion, as the replicas' usage counts them)
    tpm: int | None = None
    #: the key's org's cap on requests in flight, over all its endpoints (streams included)
    org_max_concurrent: int | None = None

    @property
    def limited(self) -> bool:
        return self.rpm is not None or self.tpm is not None or self.org_max_concurrent is not None
