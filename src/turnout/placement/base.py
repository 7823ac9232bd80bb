"""Placement: where replica processes run, behind one small Protocol.

A placement reports its capacity (nodes, GPUs), starts a replica from a :class:`ReplicaSpec`
on a node with room for it (or refuses with :class:`NoCapacity`), reports whether it is alive
and ready, and stops it. ``local`` runs subprocesses on this machine; ``ray`` runs each replica
as a detached Ray actor that owns its engine process on a node of the cluster. Callers (the
rollout controller) only see this module's types.
"""

from __future__ import annotations

from collections.abc import Mapping
from dataclasses import dataclass, field
from pathlib import Path
from typing import Protocol

from turnout.states import ReplicaState


@dataclass(frozen=True, slots=True)
class EngineCommand:
    """How to start an engine: an argv template plus the HTTP paths that report health.

    Placeholders: ``{model_dir}``, ``{port}``, ``{host}``, ``{served_name}``, ``{device}``,
    ``{python}`` (the interpreter running Turnout), ``{gpus}`` (how many GPUs the replica
    has), ``{tensor_parallel_size}`` (the same, at least 1), ``{max_model_len}`` and
    ``{dtype}`` (the architecture's serving defaults).
    """

    argv: tuple[str, ...]
    health_path: str = "/health"
    ready_path: str = "/ready"
    #: The route that reloads weights inside the running engine (SGLang's
    #: ``/update_weights_from_disk`` wire: ``{"model_path"}`` -> ``{"success", "message"}``);
    #: None: the engine cannot, and an ``in_place`` rollout falls back to rolling.
    reload_path: str | None = None
    #: Variables of the server's environment the engine gets beyond the allow-list
    #: (:func:`turnout.placement.engines.engine_environment`), e.g. ``HF_TOKEN``.
    env: tuple[str, ...] = ()


BUILTIN_ENGINE = EngineCommand(
    argv=(
        "{python}",
        "-m",
        "turnout.engine",
        "serve",
        "--model-dir",
        "{model_dir}",
        "--host",
        "{host}",
        "--port",
        "{port}",
        "--served-name",
        "{served_name}",
        "--device",
        "{device}",
    ),
    reload_path="/update_weights_from_disk",
)


@dataclass(frozen=True, slots=True)
class WeightSource:
    """How a node without the control plane's weight store gets a version's files: from the
    control plane's internal weights route, each file checked against the digest."""

    #: "sha256:<hex>": the version's digest (the sha256 of its manifest).
    digest: str
    #: Base URL of the control plane as the nodes reach it, e.g. "http://10.0.0.1:8080".
    url: str
    #: Bearer token of the internal route.
    token: str


@dataclass(frozen=True, slots=True)
class ReplicaSpec:
    replica_id: str
    endpoint_id: str
    deployment_id: str
    #: The version's directory in the control plane's weight store (used where it is
    #: reachable: on this machine, or on a node that shares the filesystem).
    model_dir: Path
    served_name: str
    engine: EngineCommand = BUILTIN_ENGINE
    device: str = "cpu"
    #: GPUs the replica needs on one node (its tensor-parallel size); 0: none.
    gpus: int = 0
    max_model_len: int = 2048
    dtype: str = "auto"
    env: tuple[tuple[str, str], ...] = ()
    #: For nodes that do not share the weight store; None: the placement uses ``model_dir``.
    weights: WeightSource | None = None


@dataclass(frozen=True, slots=True)
class ReplicaHandle:
    """What a placement returns for a started replica; enough to find it again after a restart."""

    replica_id: str
    address: str  # base URL, e.g. "http://127.0.0.1:40123"
    pid: int | None = None
    #: The placement's name for the node it runs on.
    node: str = "local"
    #: The GPU ids it was given on that node (its CUDA_VISIBLE_DEVICES).
    gpus: tuple[int, ...] = ()


@dataclass(frozen=True, slots=True)
class ReplicaStatus:
    handle: ReplicaHandle
    state: ReplicaState
    restarts: int = 0
    error: str | None = None
    #: What it is doing now, e.g. "fetching weights: 120/540 MiB".
    detail: str | None = None
    log_path: Path | None = None
    labels: Mapping[str, str] = field(default_factory=dict)


@dataclass(frozen=True, slots=True)
class NodeCapacity:
    node: str
    gpus_total: int
    gpus_free: int
    #: Replicas of this placement running there.
    replicas: int


@dataclass(frozen=True, slots=True)
class Capacity:
    nodes: tuple[NodeCapacity, ...]

    @property
    def replicas(self) -> int:
        return sum(n.replicas for n in self.nodes)

    def fits(self, count: int, gpus_each: int, freed: Mapping[str, int] | None = None) -> bool:
        """Whether ``count`` more replicas of ``gpus_each`` GPUs fit, each on one node;
        ``freed`` adds GPUs per node that replicas about to stop give back."""
        if count <= 0 or gpus_each <= 0:
            return True  # CPU replicas are bounded by TURNOUT_MAX_REPLICAS, not here
        extra = freed or {}
        slots = sum((n.gpus_free + extra.get(n.node, 0)) // gpus_each for n in self.nodes)
        return slots >= count

    def __str__(self) -> str:
        parts = [f"{n.node}: {n.gpus_free}/{n.gpus_total} GPUs free" for n in self.nodes]
        return "; ".join(parts) or "no nodes"


class ReloadFailed(Exception):
    """The engine did not take the new weights; it still serves the ones it had."""


class NoCapacity(Exception):
    """No node has room for the replica; ``reason`` says what is missing, for people."""

    def __init__(self, reason: str) -> None:
        super().__init__(reason)
        self.reason = reason


class Placement(Protocol):
    async def capacity(self) -> Capacity:
        """Nodes with their GPUs (total and free) and the replicas running on each."""
        ...

    async def start(self, spec: ReplicaSpec) -> ReplicaHandle:
        """Launch the replica on a node with room and return at once; readiness is reported
        by :meth:`probe`. Raises :class:`NoCapacity` when no node has room."""
        ...

    async def probe(self, handle: ReplicaHandle) -> ReplicaStatus:
        """Current state of one replica (never raises for a dead one: it reports it)."""
        ...

    async def stop(self, handle: ReplicaHandle, *, drain_timeout: float) -> None:
        """SIGTERM, let in-flight requests finish up to ``drain_timeout``, then kill."""
        ...

    async def reload(self, handle: ReplicaHandle, spec: ReplicaSpec) -> ReplicaHandle:
        """Load ``spec``'s weights into the running replica (its engine's reload route), so
        it serves them from now on and restarts with them; :class:`ReloadFailed` otherwise."""
        ...

    async def list_alive(self) -> list[ReplicaHandle]:
        """Every replica this placement knows to be running, including ones adopted on start."""
        ...

    async def close(self, *, stop_replicas: bool) -> None:
        """Release resources; with ``stop_replicas`` also stop every replica (an orderly
        shutdown of a developer's all-in-one server), else leave them serving (they are
        adopted by the next process)."""
        ...
