"""Placement: where replica processes run, behind one small Protocol.

A placement starts a replica from a :class:`ReplicaSpec`, reports whether it is alive and
ready, and stops it. ``local`` runs subprocesses on this machine; ``ray`` (later) runs each
replica as a Ray actor that owns its engine process. Callers (the rollout controller) only see
this module's types.
"""

from __future__ import annotations

from dataclasses import dataclass, field
from pathlib import Path
from typing import Protocol

from turnout.states import ReplicaState


@dataclass(frozen=True, slots=True)
class EngineCommand:
    """How to start an engine: an argv template plus the HTTP paths that report health.

    Placeholders: ``{model_dir}``, ``{port}``, ``{host}``, ``{served_name}``, ``{device}``,
    ``{python}`` (the interpreter running Turnout).
    """

    argv: tuple[str, ...]
    health_path: str = "/health"
    ready_path: str = "/ready"


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
    )
)


@dataclass(frozen=True, slots=True)
class ReplicaSpec:
    replica_id: str
    endpoint_id: str
    deployment_id: str
    model_dir: Path
    served_name: str
    engine: EngineCommand = BUILTIN_ENGINE
    device: str = "cpu"
    env: tuple[tuple[str, str], ...] = ()


@dataclass(frozen=True, slots=True)
class ReplicaHandle:
    """What a placement returns for a started replica; enough to find it again after a restart."""

    replica_id: str
    address: str  # base URL, e.g. "http://127.0.0.1:40123"
    pid: int | None = None


@dataclass(frozen=True, slots=True)
class ReplicaStatus:
    handle: ReplicaHandle
    state: ReplicaState
    restarts: int = 0
    error: str | None = None
    log_path: Path | None = None
    labels: dict[str, str] = field(default_factory=dict)


class Placement(Protocol):
    async def start(self, spec: ReplicaSpec) -> ReplicaHandle:
        """Launch the replica and return at once; readiness is reported by :meth:`probe`."""
        ...

    async def probe(self, handle: ReplicaHandle) -> ReplicaStatus:
        """Current state of one replica (never raises for a dead one: it reports it)."""
        ...

    async def stop(self, handle: ReplicaHandle, *, drain_timeout: float) -> None:
        """SIGTERM, let in-flight requests finish up to ``drain_timeout``, then kill."""
        ...

    async def list_alive(self) -> list[ReplicaHandle]:
        """Every replica this placement knows to be running, including ones adopted on start."""
        ...

    async def close(self) -> None:
        """Stop every replica and release resources; leaves no process behind."""
        ...
