"""Replica operations with their intent persisted: start, gate (ready + warm-up), stop.

Every replica row is written before the process starts, so a crash between the two leaves a
row that recovery can reconcile with what really runs.
"""

from __future__ import annotations

import asyncio
import logging
import re
import secrets
from collections.abc import Awaitable, Callable, Collection, Sequence
from dataclasses import dataclass
from pathlib import Path

import httpx

from turnout.placement.base import (
    Placement,
    ReplicaHandle,
    ReplicaSpec,
    ReplicaStatus,
    WeightSource,
)
from turnout.placement.engines import EngineCatalog
from turnout.policy import GoldenPrompt
from turnout.registry.architectures import ServingDefaults, get_architecture, gpus_per_replica
from turnout.states import REPLICA_GONE, ReplicaState
from turnout.store import replicas as rows
from turnout.store.db import Database
from turnout.store.records import Deployment, Endpoint, ModelVersion, Replica

log = logging.getLogger(__name__)


class GateFailed(Exception):
    """A replica did not pass its gates; ``code`` is the deployment's error code."""

    def __init__(self, code: str, message: str) -> None:
        super().__init__(message)
        self.code = code
        self.message = message


@dataclass(frozen=True, slots=True)
class GateConfig:
    engines: EngineCatalog
    ready_timeout: float
    probe_interval: float
    stop_timeout: float
    device: str
    #: The control plane's URL as nodes reach it and the internal token, so replicas on nodes
    #: without the weight store can fetch their weights; None: nodes share this filesystem.
    weights_url: str | None = None
    internal_token: str = ""


def endpoint_gpus(endpoint: Endpoint) -> int:
    return gpus_per_replica(endpoint.arch_id, endpoint.gpus_per_replica)


class Replicas:
    def __init__(self, db: Database, placement: Placement, config: GateConfig) -> None:
        self.db = db
        self.placement = placement
        self.config = config
        self.handles: dict[str, ReplicaHandle] = {}
        self._http = httpx.AsyncClient(timeout=httpx.Timeout(60.0, connect=5.0))

    async def close(self) -> None:
        await self._http.aclose()

    def spec(
        self, deployment: Deployment, endpoint: Endpoint, version: ModelVersion
    ) -> ReplicaSpec:
        """What to start for one replica of ``deployment``, under a new id (ids are never
        reused, so logs and events of a replaced replica stay its own)."""
        assert version.weight_path and version.digest
        arch = get_architecture(endpoint.arch_id)
        serving = arch.serving if arch else ServingDefaults()
        weights = None
        if self.config.weights_url:
            weights = WeightSource(
                version.digest, self.config.weights_url, self.config.internal_token
            )
        return ReplicaSpec(
            replica_id=f"{endpoint.endpoint_id}-{deployment.id[:8]}-{secrets.token_hex(3)}",
            endpoint_id=endpoint.endpoint_id,
            deployment_id=deployment.id,
            model_dir=Path(version.weight_path),
            served_name=endpoint.endpoint_id,
            engine=self.config.engines.command(endpoint.engine),
            device=self.config.device,
            gpus=endpoint_gpus(endpoint),
            max_model_len=serving.max_model_len,
            dtype=serving.dtype,
            weights=weights,
        )

    async def start(
        self, deployment: Deployment, endpoint: Endpoint, version: ModelVersion
    ) -> ReplicaHandle:
        """Start one replica: its row first (so a crash in between leaves a row to reconcile),
        then the process. :class:`NoCapacity` from the placement removes the row again."""
        spec = self.spec(deployment, endpoint, version)
        await self._save(
            spec.replica_id, spec.endpoint_id, spec.deployment_id, ReplicaState.STARTING
        )
        try:
            handle = await self.placement.start(spec)
        except BaseException:
            async with self.db.session() as s:
                await rows.forget_replica(s, spec.replica_id)
            raise
        self.handles[spec.replica_id] = handle
        await self._save(
            spec.replica_id, spec.endpoint_id, spec.deployment_id, ReplicaState.STARTING, handle
        )
        return handle

    async def _save(
        self,
        replica_id: str,
        endpoint_id: str,
        deployment_id: str,
        state: ReplicaState,
        handle: ReplicaHandle | None = None,
        error: str | None = None,
        detail: str | None = None,
        restarts: int | None = None,
    ) -> None:
        async with self.db.session() as s:
            await rows.upsert_replica(
                s,
                replica_id,
                endpoint_id=endpoint_id,
                deployment_id=deployment_id,
                state=state,
                address=handle.address if handle else None,
                pid=handle.pid if handle else None,
                node=handle.node if handle else None,
                gpus=handle.gpus if handle else None,
                error=error,
                detail=detail,
                restarts=restarts,
            )

    async def set_state(
        self, replica: Replica, state: ReplicaState, error: str | None = None
    ) -> None:
        await self._save(replica.id, replica.endpoint_id, replica.deployment_id, state, error=error)

    async def record(self, replica: Replica, status: ReplicaStatus) -> None:
        """Store what the placement reports of a replica (state, node, GPUs, progress)."""
        await self._save(
            replica.id,
            replica.endpoint_id,
            replica.deployment_id,
            status.state,
            status.handle,
            status.error,
            status.detail,
            status.restarts,
        )

    async def _save_detail(self, replica_id: str, status: ReplicaStatus) -> None:
        async with self.db.session() as s:
            row = next((r for r in await rows.list_replicas(s) if r.id == replica_id), None)
        if row is not None:
            await self._save(
                row.id, row.endpoint_id, row.deployment_id, row.state, status.handle,
                row.error, status.detail,
            )  # fmt: skip

    async def mark(
        self, replica_ids: Collection[str], state: ReplicaState, error: str | None = None
    ) -> None:
        async with self.db.session() as s:
            found = [r for r in await rows.list_replicas(s) if r.id in replica_ids]
        for replica in found:
            await self.set_state(replica, state, error)

    async def gate(
        self,
        handles: list[ReplicaHandle],
        served_name: str,
        still_wanted: Callable[[], Awaitable[None]] | None = None,
    ) -> None:
        """Wait until every replica is ready, then run one warm-up generation on each.

        What the placement reports meanwhile (its address once known, weight-fetch progress)
        is stored on the replica's row. ``still_wanted`` is awaited between probes and raises
        to abandon the wait (a cancel).
        """
        loop = asyncio.get_running_loop()
        deadline = loop.time() + self.config.ready_timeout
        pending = {h.replica_id: h for h in handles}
        seen: dict[str, tuple[str, str | None]] = {}
        while pending:
            if still_wanted is not None:
                await still_wanted()
            for replica_id, handle in list(pending.items()):
                status = await self.placement.probe(handle)
                if (status.handle.address, status.detail) != seen.get(replica_id):
                    seen[replica_id] = (status.handle.address, status.detail)
                    self.handles[replica_id] = status.handle
                    await self._save_detail(replica_id, status)
                if status.state is ReplicaState.READY:
                    del pending[replica_id]
                elif status.state in REPLICA_GONE:
                    raise GateFailed(
                        "replica_failed",
                        f"replica {replica_id} failed to start: {status.error or status.state}",
                    )
            if pending and loop.time() > deadline:
                raise GateFailed(
                    "readiness_timeout",
                    f"replica(s) {', '.join(pending)} not ready within "
                    f"{self.config.ready_timeout:g}s (TURNOUT_READY_TIMEOUT)",
                )
            if pending:
                await asyncio.sleep(self.config.probe_interval)
        for handle in handles:
            await self._warm_up(self.handles.get(handle.replica_id, handle), served_name)

    async def _warm_up(self, handle: ReplicaHandle, served_name: str) -> None:
        try:
            resp = await self._http.post(
                f"{handle.address}/v1/completions",
                json={"model": served_name, "prompt": "Hello", "max_tokens": 1},
            )
            resp.raise_for_status()
            tokens = int((resp.json().get("usage") or {}).get("completion_tokens", 0))
        except (httpx.HTTPError, ValueError) as exc:
            raise GateFailed(
                "warmup_failed", f"warm-up generation on {handle.replica_id} failed: {exc}"
            ) from exc
        if tokens < 1:
            raise GateFailed(
                "warmup_failed", f"warm-up generation on {handle.replica_id} returned no tokens"
            )

    async def golden(
        self, handle: ReplicaHandle, served_name: str, prompts: Sequence[GoldenPrompt]
    ) -> str | None:
        """Send each golden prompt straight to the replica (greedy); the first mismatch, for
        people, or None when every answer matches its ``expect_regex``."""
        address = self.handles.get(handle.replica_id, handle).address
        for number, prompt in enumerate(prompts, 1):
            body = {
                "model": served_name,
                "messages": list(prompt.messages),
                "max_tokens": 64,
                "temperature": 0,
            }
            try:
                resp = await self._http.post(f"{address}/v1/chat/completions", json=body)
                resp.raise_for_status()
                answer = str(resp.json()["choices"][0]["message"]["content"] or "")
            except (httpx.HTTPError, ValueError, KeyError, IndexError) as exc:
                return f"golden prompt {number} failed on {handle.replica_id}: {exc!r}"
            if not re.search(prompt.expect_regex, answer):
                return (
                    f"golden prompt {number}: the answer {answer[:120]!r} of "
                    f"{handle.replica_id} does not match {prompt.expect_regex!r}"
                )
        return None

    async def stop(self, replicas: Collection[Replica]) -> None:
        """Stop replicas (concurrently) and forget their rows."""

        async def stop_one(replica: Replica) -> None:
            handle = self.handles.pop(replica.id, None)
            if handle is not None:
                await self.placement.stop(handle, drain_timeout=self.config.stop_timeout)
            async with self.db.session() as s:
                await rows.forget_replica(s, replica.id)

        await asyncio.gather(*(stop_one(r) for r in replicas))

    async def stop_unrecorded(self, handles: Collection[ReplicaHandle]) -> None:
        """Stop processes that have no row (started by a process that crashed before writing)."""
        await asyncio.gather(*(self.placement.stop(h, drain_timeout=0) for h in handles))
