"""Ray placement: each replica is a named, detached Ray actor that runs its engine on a node.

``start`` reserves the replica's resources with a placement group (STRICT_PACK, one bundle per
GPU, so a tensor-parallel replica stays on one node; one CPU bundle for a CPU replica) and
starts the actor ``replica-<id>`` in namespace ``turnout`` in it. The actor

1. holds one GPU lease actor per bundle, so Ray assigns it the node's GPU ids (the engine
   gets exactly those as ``CUDA_VISIBLE_DEVICES``);
2. finds the version's weights on its node: the weight store's path when the node shares the
   filesystem, else a node-local copy fetched from the control plane by digest
   (:mod:`turnout.registry.nodecache`), with progress in the replica's status;
3. runs the engine with a :class:`~turnout.placement.local.LocalPlacement` of its own, bound
   to the node's address: the same supervision (restart with backoff, SIGTERM → drain →
   SIGKILL), and the engine dies with the actor.

The actors and their placement groups are detached: they outlive the control plane, which
finds them again by name (:meth:`RayPlacement.list_alive`). A dead actor or node shows as a
``lost`` replica, which the controller replaces on remaining capacity.

With ``placement/local.py`` this is the only module that touches processes; the only one that
imports ``ray``.
"""

from __future__ import annotations

import asyncio
import logging
import os
from dataclasses import dataclass, replace
from pathlib import Path
from typing import Any

import ray
from ray.util.placement_group import (
    PlacementGroup,
    get_placement_group,
    placement_group,
    remove_placement_group,
)
from ray.util.scheduling_strategies import PlacementGroupSchedulingStrategy

from turnout.placement.base import (
    Capacity,
    NoCapacity,
    NodeCapacity,
    ReloadFailed,
    ReplicaHandle,
    ReplicaSpec,
    ReplicaStatus,
)
from turnout.placement.local import LocalPlacement, LocalPlacementConfig
from turnout.registry.nodecache import FetchFailed, ensure_local
from turnout.states import ReplicaState

log = logging.getLogger(__name__)

PREFIX = "replica-"


@dataclass(frozen=True, slots=True)
class RayPlacementConfig:
    address: str
    namespace: str = "turnout"
    #: Fetch weights onto every node even where the weight store's path exists.
    always_fetch: bool = False
    #: How long a replica's placement group may wait for resources before NoCapacity.
    schedule_timeout: float = 60.0
    #: How long one call to a replica's actor may take before it counts as unanswered.
    call_timeout: float = 10.0
    #: One in-place weight reload, fetching the weights to the node included.
    reload_timeout: float = 1800.0


# -- on the node -------------------------------------------------------------------------


@ray.remote(num_cpus=0, num_gpus=1)
class GpuLease:
    """Holds one GPU of a replica's placement group; reports which one Ray gave it."""

    def ids(self) -> list[int]:
        return [int(i) for i in ray.get_gpu_ids()]


@ray.remote(max_restarts=0)
class ReplicaActor:
    """One replica on its node: GPU leases, weights, and the engine process."""

    def __init__(self, spec: ReplicaSpec, always_fetch: bool) -> None:
        self.spec = spec
        self.always_fetch = always_fetch
        # Ray's own function carries no annotations.
        self.node: str = ray.util.get_node_ip_address()  # type: ignore[no-untyped-call]
        self.cache = Path(os.environ.get("TURNOUT_NODE_CACHE", "~/.cache/turnout")).expanduser()
        self.gpus: tuple[int, ...] = ()
        self.leases: list[Any] = []
        self.engine: LocalPlacement | None = None
        self.handle = ReplicaHandle(spec.replica_id, "", None, self.node)
        self.detail: str | None = "reserving resources"
        self.error: str | None = None
        self.task: asyncio.Task[None] | None = None

    async def start(self) -> dict[str, Any]:
        group = ray.util.get_current_placement_group()
        assert group is not None  # started in its replica's placement group
        self.leases = [
            GpuLease.options(  # type: ignore[attr-defined]
                scheduling_strategy=PlacementGroupSchedulingStrategy(group, i)
            ).remote()
            for i in range(self.spec.gpus)
        ]
        ids = await asyncio.gather(*(lease.ids.remote() for lease in self.leases))
        self.gpus = tuple(sorted(g for got in ids for g in got))
        self.handle = replace(self.handle, gpus=self.gpus)
        self.task = asyncio.create_task(self._run())
        return self.describe()

    async def _run(self) -> None:
        try:
            self.detail = "finding weights"
            model_dir = await asyncio.to_thread(self._model_dir)
            self.detail = None
            self.engine = LocalPlacement(
                LocalPlacementConfig(
                    run_dir=self.cache / "run" / self.spec.replica_id,
                    host=self.node,
                    gpu_ids=self.gpus,
                    node=self.node,
                    die_with_parent=True,
                )
            )
            handle = await self.engine.start(replace(self.spec, model_dir=model_dir))
            self.handle = replace(handle, node=self.node, gpus=self.gpus)
        except (FetchFailed, OSError, ValueError, NoCapacity) as exc:
            self.error = f"replica {self.spec.replica_id} on {self.node}: {exc}"
            log.error("%s", self.error)

    def _model_dir(self) -> Path:
        if not self.always_fetch and self.spec.model_dir.is_dir():
            return self.spec.model_dir  # this node shares the weight store's filesystem
        weights = self.spec.weights
        if weights is None:
            raise FetchFailed(
                f"{self.spec.model_dir} is not on node {self.node} and the control plane gave "
                "no URL to fetch it from (set TURNOUT_ADVERTISE_URL)"
            )

        def progress(done: int, total: int) -> None:
            self.detail = f"fetching weights: {done >> 20}/{total >> 20} MiB"

        return ensure_local(
            weights.digest, weights.url, weights.token, self.cache / "weights", progress
        )

    def describe(self) -> dict[str, Any]:
        return {
            "replica_id": self.handle.replica_id,
            "address": self.handle.address,
            "pid": self.handle.pid,
            "node": self.node,
            "gpus": list(self.gpus),
        }

    async def status(self) -> dict[str, Any]:
        found: dict[str, Any] = {"handle": self.describe(), "restarts": 0, "detail": self.detail}
        if self.error is not None:
            return {**found, "state": ReplicaState.FAILED.value, "error": self.error}
        if self.engine is None:
            return {**found, "state": ReplicaState.STARTING.value, "error": None}
        status = await self.engine.probe(self.handle)
        return {
            **found,
            "state": status.state.value,
            "error": status.error,
            "restarts": status.restarts,
        }

    async def reload(self, spec: ReplicaSpec) -> dict[str, Any]:
        """Load another version's weights into the running engine (fetched first if needed)."""
        if self.engine is None:
            raise ReloadFailed(f"replica {self.spec.replica_id} has no engine running yet")
        self.spec = spec
        model_dir = await asyncio.to_thread(self._model_dir)
        self.handle = await self.engine.reload(self.handle, replace(spec, model_dir=model_dir))
        self.handle = replace(self.handle, node=self.node, gpus=self.gpus)
        return self.describe()

    async def stop(self, drain_timeout: float) -> None:
        if self.task is not None:
            self.task.cancel()
        if self.engine is not None:
            await self.engine.stop(self.handle, drain_timeout=drain_timeout)
            await self.engine.close(stop_replicas=True)


# -- in the control plane ------------------------------------------------------------------


def _handle(described: dict[str, Any]) -> ReplicaHandle:
    return ReplicaHandle(
        described["replica_id"],
        described["address"],
        described["pid"],
        described["node"],
        tuple(described["gpus"]),
    )


class RayPlacement:
    """Places replicas on a Ray cluster. Implements ``Placement``."""

    def __init__(self, config: RayPlacementConfig) -> None:
        self._cfg = config
        self._known: dict[str, ReplicaHandle] = {}
        self._connected = False

    async def _connect(self) -> None:
        if not self._connected:
            await asyncio.to_thread(
                ray.init,
                address=self._cfg.address,
                namespace=self._cfg.namespace,
                log_to_driver=False,
                logging_level=logging.WARNING,
            )
            self._connected = True

    def _actor(self, replica_id: str) -> Any:
        return ray.get_actor(PREFIX + replica_id, namespace=self._cfg.namespace)

    async def _call(self, ref: Any, timeout: float | None = None) -> Any:
        return await asyncio.wait_for(ref, timeout or self._cfg.call_timeout)

    async def capacity(self) -> Capacity:
        await self._connect()
        nodes = await asyncio.to_thread(ray.nodes)
        found = []
        for node in nodes:
            if not node.get("Alive"):
                continue
            name = node["NodeManagerAddress"]
            mine = [h for h in self._known.values() if h.node == name]
            total = int(node.get("Resources", {}).get("GPU", 0))
            used = sum(len(h.gpus) for h in mine)
            found.append(NodeCapacity(name, total, max(0, total - used), len(mine)))
        return Capacity(tuple(sorted(found, key=lambda n: n.node)))

    async def start(self, spec: ReplicaSpec) -> ReplicaHandle:
        capacity = await self.capacity()
        if not capacity.fits(1, spec.gpus):
            raise NoCapacity(
                f"no node has {spec.gpus} free GPU(s) for replica {spec.replica_id} ({capacity})"
            )
        bundles = [{"GPU": 1.0}] * spec.gpus if spec.gpus else [{"CPU": 1.0}]
        group = placement_group(
            bundles, strategy="STRICT_PACK", name=PREFIX + spec.replica_id, lifetime="detached"
        )
        try:
            await self._call(group.ready(), self._cfg.schedule_timeout)
        except TimeoutError:
            remove_placement_group(group)
            raise NoCapacity(
                f"replica {spec.replica_id} ({spec.gpus} GPU(s) on one node) found no room "
                f"within {self._cfg.schedule_timeout:g}s ({capacity})"
            ) from None
        actor = ReplicaActor.options(  # type: ignore[attr-defined]
            name=PREFIX + spec.replica_id,
            namespace=self._cfg.namespace,
            lifetime="detached",
            num_cpus=0 if spec.gpus else 1,
            scheduling_strategy=PlacementGroupSchedulingStrategy(
                group, 0, placement_group_capture_child_tasks=True
            ),
        ).remote(spec, self._cfg.always_fetch)
        handle = _handle(await self._call(actor.start.remote(), self._cfg.schedule_timeout))
        self._known[spec.replica_id] = handle
        log.info("replica %s placed on %s (GPUs %s)", spec.replica_id, handle.node, handle.gpus)
        return handle

    async def probe(self, handle: ReplicaHandle) -> ReplicaStatus:
        await self._connect()
        try:
            found = await self._call(self._actor(handle.replica_id).status.remote())
        except (ValueError, ray.exceptions.RayActorError) as exc:
            known = self._known.get(handle.replica_id, handle)
            return ReplicaStatus(
                known,
                ReplicaState.LOST,
                error=f"the replica's actor on {known.node} is gone (node lost?): {exc}",
            )
        except TimeoutError:
            return ReplicaStatus(
                self._known.get(handle.replica_id, handle),
                ReplicaState.STARTING,
                error=f"its actor did not answer within {self._cfg.call_timeout:g}s",
            )
        now = _handle(found["handle"])
        self._known[handle.replica_id] = now
        return ReplicaStatus(
            now,
            ReplicaState(found["state"]),
            restarts=found["restarts"],
            error=found["error"],
            detail=found["detail"],
        )

    async def reload(self, handle: ReplicaHandle, spec: ReplicaSpec) -> ReplicaHandle:
        await self._connect()
        try:
            found = await self._call(
                self._actor(handle.replica_id).reload.remote(spec), self._cfg.reload_timeout
            )
        except (ValueError, TimeoutError, ray.exceptions.RayError) as exc:
            raise ReloadFailed(f"replica {handle.replica_id}: {exc}") from exc
        self._known[handle.replica_id] = _handle(found)
        return self._known[handle.replica_id]

    async def stop(self, handle: ReplicaHandle, *, drain_timeout: float) -> None:
        await self._connect()
        try:
            actor = self._actor(handle.replica_id)
            await self._call(actor.stop.remote(drain_timeout), drain_timeout + 30)
            ray.kill(actor)
        except (ValueError, TimeoutError, ray.exceptions.RayActorError) as exc:
            log.info("replica %s: its actor is gone or stuck (%s)", handle.replica_id, exc)
            self._kill_quietly(handle.replica_id)
        self._remove_group(handle.replica_id)
        self._known.pop(handle.replica_id, None)

    def _kill_quietly(self, replica_id: str) -> None:
        try:
            ray.kill(self._actor(replica_id))
        except (ValueError, ray.exceptions.RayActorError):
            pass

    def _remove_group(self, replica_id: str) -> None:
        try:
            group: PlacementGroup = get_placement_group(PREFIX + replica_id)
        except ValueError:
            return
        remove_placement_group(group)

    async def list_alive(self) -> list[ReplicaHandle]:
        await self._connect()
        names = await asyncio.to_thread(ray.util.list_named_actors)
        alive: list[ReplicaHandle] = []
        for name in names:
            if not name.startswith(PREFIX):
                continue
            try:
                actor = ray.get_actor(name, namespace=self._cfg.namespace)
                handle = _handle(await self._call(actor.describe.remote()))
            except (ValueError, TimeoutError, ray.exceptions.RayActorError):
                continue  # died meanwhile: its row is found gone and replaced
            self._known[handle.replica_id] = handle
            alive.append(handle)
        return alive

    async def close(self, *, stop_replicas: bool) -> None:
        if stop_replicas and self._connected:
            await asyncio.gather(
                *(self.stop(h, drain_timeout=10) for h in list(self._known.values()))
            )
        if self._connected:
            await asyncio.to_thread(ray.shutdown)
            self._connected = False
