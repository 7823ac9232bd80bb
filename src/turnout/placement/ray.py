"""Ray placement: each replica is a named, detached Ray actor that runs its engine on a node.

``start`` picks a node (one with the GPUs free, preferring nodes that run fewer replicas of
the same endpoint, so an endpoint's replicas spread over the fleet), reserves the replica's
GPUs there with a placement group (STRICT_PACK, one bundle per GPU, pinned to that node; one
CPU bundle for a CPU replica, placed by Ray) and starts the actor ``replica-<id>`` in
namespace ``turnout`` in it, then returns: readiness is reported by :meth:`probe`. The actor

1. takes its GPU ids from Ray: it holds bundle 0's GPU itself and one lease actor per further
   bundle, and the engine gets exactly those ids as ``CUDA_VISIBLE_DEVICES``;
2. finds the version's weights on its node: the weight store's path when the node shares the
   filesystem, else a node-local copy fetched from the control plane by digest
   (:mod:`turnout.registry.nodecache`), with progress in the replica's status;
3. runs the engine with a :class:`~turnout.placement.local.LocalPlacement` of its own, bound
   to the node's address: the same supervision (restart with backoff, SIGTERM → drain →
   SIGKILL), and the engine dies with the actor (and so with its node).

Actors and placement groups are detached: they outlive the control plane, which finds them
again by name (:meth:`RayPlacement.list_alive`). An actor that Ray reports dead (its node is
gone) shows as a ``lost`` replica, which the controller replaces on remaining capacity; its
placement group is removed, and so are placement groups that lost their actor while no
control plane ran.

With ``placement/local.py`` this is the only module that touches processes; the only one that
imports ``ray``. The Ray calls that block (GCS lookups) run in threads.
"""

from __future__ import annotations

import asyncio
import logging
import os
import time
from dataclasses import dataclass, replace
from pathlib import Path
from typing import Any

import ray
from ray.exceptions import ActorDiedError, ActorUnavailableError, RayActorError
from ray.util.placement_group import (
    PlacementGroup,
    get_placement_group,
    placement_group,
    placement_group_table,
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
from turnout.registry.nodecache import ensure_local
from turnout.states import ReplicaState

log = logging.getLogger(__name__)

PREFIX = "replica-"
#: A bundle asking for this much of Ray's ``node:<ip>`` resource is placed on that node only.
_PIN = 0.001


@dataclass(frozen=True, slots=True)
class RayPlacementConfig:
    address: str
    namespace: str = "turnout"
    #: Fetch weights onto every node even where the weight store's path exists.
    always_fetch: bool = False
    #: How long a replica's placement group may wait for resources before NoCapacity.
    schedule_timeout: float = 60.0
    #: How long one call to a replica's actor may take before it counts as unanswered.
    call_timeout: float = 5.0
    #: How often placement groups left without an actor are looked for.
    sweep_interval: float = 10.0
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
    """One replica on its node: GPUs, weights, and the engine process."""

    def __init__(self, spec: ReplicaSpec, always_fetch: bool) -> None:
        # Into the actor's worker log (Ray's log dir on the node); Ray leaves the root
        # logger unconfigured, which would drop everything below WARNING.
        logging.basicConfig(
            level=logging.INFO, format="%(asctime)s %(levelname)s %(name)s: %(message)s"
        )
        self.spec = spec
        self.always_fetch = always_fetch
        # Ray's own function carries no annotations.
        self.node: str = ray.util.get_node_ip_address()  # type: ignore[no-untyped-call]
        self.cache = Path(os.environ.get("TURNOUT_NODE_CACHE", "~/.cache/turnout")).expanduser()
        self.gpus: tuple[int, ...] = ()
        self.leases: list[Any] = []
        self.engine: LocalPlacement | None = None
        self.handle = ReplicaHandle(spec.replica_id, "", None, self.node)
        self.detail: str | None = "starting"
        self.error: str | None = None
        self.task: asyncio.Task[None] | None = None
        log.info("replica %s: actor up on %s (pid %d)", spec.replica_id, self.node, os.getpid())

    def _ensure_running(self) -> None:
        # Started by the first call of any kind, so an actor whose starter died before its
        # start() call still comes up when the next control plane asks about it.
        if self.task is None:
            self.task = asyncio.create_task(self._run())

    async def start(self) -> dict[str, Any]:
        self._ensure_running()
        return self.describe()

    async def _run(self) -> None:
        began = time.monotonic()
        try:
            self.gpus = await self._gpu_ids()
            self.handle = replace(self.handle, gpus=self.gpus)
            self.detail = "finding weights"
            model_dir = await asyncio.to_thread(self._model_dir)
            found_at = time.monotonic()
            self.detail = "loading the engine"
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
            log.info(
                "replica %s: GPUs %s and weights %s in %.2fs; engine pid %s at %s",
                self.spec.replica_id, list(self.gpus), model_dir, found_at - began,
                handle.pid, handle.address,
            )  # fmt: skip
        except Exception as exc:  # the actor's one boundary: every failure is its status
            self.error = f"replica {self.spec.replica_id} on {self.node}: {exc}"
            log.exception("replica %s failed to start", self.spec.replica_id)

    async def _gpu_ids(self) -> tuple[int, ...]:
        if self.spec.gpus <= 0:
            return ()
        group = ray.util.get_current_placement_group()
        assert group is not None  # started in bundle 0 of its replica's placement group
        self.leases = [
            GpuLease.options(  # type: ignore[attr-defined]
                scheduling_strategy=PlacementGroupSchedulingStrategy(group, i)
            ).remote()
            for i in range(1, self.spec.gpus)
        ]
        leased = await asyncio.gather(*(lease.ids.remote() for lease in self.leases))
        own = [int(i) for i in ray.get_gpu_ids()]
        return tuple(sorted([*own, *(g for got in leased for g in got)]))

    def _model_dir(self) -> Path:
        if not self.always_fetch and self.spec.model_dir.is_dir():
            return self.spec.model_dir  # this node shares the weight store's filesystem
        weights = self.spec.weights
        if weights is None:
            raise FileNotFoundError(
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
            "endpoint_id": self.spec.endpoint_id,
            "address": self.handle.address,
            "pid": self.handle.pid,
            "node": self.node,
            "gpus": list(self.gpus),
        }

    async def status(self) -> dict[str, Any]:
        self._ensure_running()
        found: dict[str, Any] = {"handle": self.describe(), "restarts": 0, "detail": self.detail}
        if self.error is not None:
            return {**found, "state": ReplicaState.FAILED.value, "error": self.error}
        if self.engine is None or not self.handle.address:
            return {**found, "state": ReplicaState.STARTING.value, "error": None}
        status = await self.engine.probe(self.handle)
        return {
            **found,
            "detail": None,
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
        if self.task is not None and not self.task.done():
            self.task.cancel()
        if self.engine is not None:
            if self.handle.address:
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


@dataclass(frozen=True, slots=True)
class _Node:
    name: str  # its IP address, as Ray's node:<ip> resource names it
    gpus_total: int
    gpus_free: int


class RayPlacement:
    """Places replicas on a Ray cluster. Implements ``Placement``."""

    def __init__(self, config: RayPlacementConfig) -> None:
        self._cfg = config
        self._known: dict[str, ReplicaHandle] = {}
        self._endpoint_of: dict[str, str] = {}
        self._actors: dict[str, Any] = {}
        #: The last state each replica's actor reported, for when it does not answer.
        self._last: dict[str, ReplicaStatus] = {}
        #: Replicas whose placement group exists before their actor does.
        self._starting: set[str] = set()
        self._connected = False
        self._connect_lock = asyncio.Lock()
        self._swept_at = 0.0

    async def _connect(self) -> None:
        async with self._connect_lock:
            if not self._connected:
                # ray.init retries an unreachable cluster without end (measured: still waiting
                # after 15 minutes), so it is only called once the GCS port answers.
                await self._check_reachable()
                log.info("connecting to the Ray cluster at %s", self._cfg.address)
                await asyncio.to_thread(
                    ray.init,
                    address=self._cfg.address,
                    namespace=self._cfg.namespace,
                    log_to_driver=False,
                    logging_level=logging.WARNING,
                )
                self._connected = True
                log.info("connected to the Ray cluster at %s", self._cfg.address)

    async def _check_reachable(self) -> None:
        address = self._cfg.address
        if "://" in address:  # ray:// (Ray Client) and the like: Ray's own business
            return
        host, _, port = address.rpartition(":")
        try:
            _, writer = await asyncio.wait_for(
                asyncio.open_connection(host.strip("[]"), int(port)), self._cfg.call_timeout
            )
        except (OSError, ValueError, TimeoutError) as exc:
            raise ConnectionError(
                f"cannot reach the Ray cluster at {address} (TURNOUT_RAY_ADDRESS, the head's "
                f"host:port): {exc!r}"
            ) from exc
        writer.close()

    async def _actor(self, replica_id: str) -> Any:
        """The replica's actor handle; ValueError when no live actor has its name."""
        actor = self._actors.get(replica_id)
        if actor is None:
            actor = await asyncio.to_thread(
                ray.get_actor, PREFIX + replica_id, namespace=self._cfg.namespace
            )
            self._actors[replica_id] = actor
        return actor

    async def _call(self, ref: Any, timeout: float | None = None) -> Any:
        return await asyncio.wait_for(ref, timeout or self._cfg.call_timeout)

    # -- capacity -------------------------------------------------------------------------

    async def _nodes(self) -> list[_Node]:
        """Alive nodes with their GPUs, free meaning not reserved by any placement group."""
        await self._connect()
        nodes, groups = await asyncio.gather(
            asyncio.to_thread(ray.nodes), asyncio.to_thread(placement_group_table)
        )
        reserved: dict[str, float] = {}
        for group in groups.values():
            if group.get("state") == "REMOVED":
                continue
            for index, node_id in group.get("bundles_to_node_id", {}).items():
                gpus = group["bundles"].get(index, {}).get("GPU", 0.0)
                reserved[node_id] = reserved.get(node_id, 0.0) + gpus
        found = []
        for node in nodes:
            if not node.get("Alive"):
                continue
            total = int(node.get("Resources", {}).get("GPU", 0))
            free = max(0, total - int(reserved.get(node["NodeID"], 0.0)))
            found.append(_Node(node["NodeManagerAddress"], total, free))
        return sorted(found, key=lambda n: n.name)

    async def capacity(self) -> Capacity:
        counts: dict[str, int] = {}
        for handle in self._known.values():
            counts[handle.node] = counts.get(handle.node, 0) + 1
        return Capacity(
            tuple(
                NodeCapacity(n.name, n.gpus_total, n.gpus_free, counts.get(n.name, 0))
                for n in await self._nodes()
            )
        )

    def _choose(self, spec: ReplicaSpec, nodes: list[_Node]) -> _Node:
        """A node with the GPUs free: the one with the fewest replicas of this endpoint,
        then the most GPUs free (tensor-parallel replicas keep finding whole nodes)."""
        fits = [n for n in nodes if n.gpus_free >= spec.gpus]
        if not fits:
            free = "; ".join(f"{n.name}: {n.gpus_free}/{n.gpus_total} GPUs free" for n in nodes)
            raise NoCapacity(
                f"no node has {spec.gpus} free GPU(s) for replica {spec.replica_id} "
                f"({free or 'no nodes alive'})"
            )
        siblings = {
            n.name: sum(
                1
                for rid, h in self._known.items()
                if h.node == n.name and self._endpoint_of.get(rid) == spec.endpoint_id
            )
            for n in fits
        }
        return min(fits, key=lambda n: (siblings[n.name], -n.gpus_free, n.name))

    # -- the Placement protocol -----------------------------------------------------------

    async def start(self, spec: ReplicaSpec) -> ReplicaHandle:
        await self._connect()
        node = self._choose(spec, await self._nodes()) if spec.gpus else None
        if node is None:
            bundles: list[dict[str, float]] = [{"CPU": 1.0}]
        else:
            bundles = [{"GPU": 1.0} for _ in range(spec.gpus)]
            bundles[0][f"node:{node.name}"] = _PIN
        name = PREFIX + spec.replica_id
        self._starting.add(spec.replica_id)
        try:
            group = await asyncio.to_thread(
                placement_group, bundles, strategy="STRICT_PACK", name=name, lifetime="detached"
            )
            try:
                await self._call(group.ready(), self._cfg.schedule_timeout)
                options: dict[str, Any] = (
                    {"num_cpus": 0, "num_gpus": 1} if node else {"num_cpus": 1}
                )
                actor = ReplicaActor.options(  # type: ignore[attr-defined]
                    name=name,
                    namespace=self._cfg.namespace,
                    lifetime="detached",
                    scheduling_strategy=PlacementGroupSchedulingStrategy(
                        group, 0, placement_group_capture_child_tasks=True
                    ),
                    **options,
                ).remote(spec, self._cfg.always_fetch)
            except BaseException as exc:
                await asyncio.to_thread(remove_placement_group, group)
                if not isinstance(exc, TimeoutError):
                    raise
                where = f"{spec.gpus} GPU(s) on {node.name}" if node else "1 CPU"
                raise NoCapacity(
                    f"replica {spec.replica_id} ({where}) found no room within "
                    f"{self._cfg.schedule_timeout:g}s"
                ) from None
        finally:
            # From here on its actor's name is registered: the sweep sees it.
            self._starting.discard(spec.replica_id)
        actor.start.remote()  # its engine loads while the controller starts the next one
        handle = ReplicaHandle(spec.replica_id, "", None, node.name if node else "")
        self._actors[spec.replica_id] = actor
        self._known[spec.replica_id] = handle
        self._endpoint_of[spec.replica_id] = spec.endpoint_id
        self._last[spec.replica_id] = ReplicaStatus(handle, ReplicaState.STARTING)
        log.info("replica %s placed on %s", spec.replica_id, handle.node or "a CPU node")
        return handle

    async def probe(self, handle: ReplicaHandle) -> ReplicaStatus:
        await self._connect()
        known = self._known.get(handle.replica_id, handle)
        try:
            actor = await self._actor(handle.replica_id)
            found = await self._call(actor.status.remote())
        except (ValueError, ActorDiedError) as exc:
            return self._lost(known, exc)
        except (TimeoutError, ActorUnavailableError) as exc:
            # Busy or briefly unreachable, not known dead: keep the last word, say why.
            last = self._last.get(handle.replica_id, ReplicaStatus(known, ReplicaState.STARTING))
            why = f"its actor on {known.node or 'its node'} did not answer: {exc or 'timeout'}"
            return replace(last, error=why)
        except RayActorError as exc:
            return self._lost(known, exc)
        now = _handle(found["handle"])
        self._known[handle.replica_id] = now
        status = ReplicaStatus(
            now,
            ReplicaState(found["state"]),
            restarts=found["restarts"],
            error=found["error"],
            detail=found["detail"],
        )
        self._last[handle.replica_id] = status
        return status

    def _lost(self, known: ReplicaHandle, exc: Exception) -> ReplicaStatus:
        self._actors.pop(known.replica_id, None)
        where = known.node or "its node"
        last = self._last.get(known.replica_id)
        if last is None or last.state is not ReplicaState.LOST:
            reason = str(exc).splitlines()[0] if str(exc) else type(exc).__name__
            log.warning("replica %s on %s is lost: %s", known.replica_id, where, reason)
        status = ReplicaStatus(
            known,
            ReplicaState.LOST,
            error=f"the replica's actor on {where} is gone (node lost?): {exc}",
        )
        self._last[known.replica_id] = status
        return status

    async def reload(self, handle: ReplicaHandle, spec: ReplicaSpec) -> ReplicaHandle:
        await self._connect()
        try:
            actor = await self._actor(handle.replica_id)
            found = await self._call(actor.reload.remote(spec), self._cfg.reload_timeout)
        except (ValueError, TimeoutError, ray.exceptions.RayError) as exc:
            raise ReloadFailed(f"replica {handle.replica_id}: {exc}") from exc
        self._known[handle.replica_id] = _handle(found)
        return self._known[handle.replica_id]

    async def stop(self, handle: ReplicaHandle, *, drain_timeout: float) -> None:
        await self._connect()
        try:
            actor = await self._actor(handle.replica_id)
            await self._call(actor.stop.remote(drain_timeout), drain_timeout + 30)
        except (ValueError, TimeoutError, RayActorError) as exc:
            log.info("replica %s: its actor is gone or stuck (%s)", handle.replica_id, exc)
        await self._kill(handle.replica_id)
        await self._remove_group(handle.replica_id)
        self._forget(handle.replica_id)

    def _forget(self, replica_id: str) -> None:
        for known in (self._known, self._endpoint_of, self._actors, self._last):
            known.pop(replica_id, None)

    async def _kill(self, replica_id: str) -> None:
        try:
            actor = await self._actor(replica_id)
            await asyncio.to_thread(ray.kill, actor, no_restart=True)
        except (ValueError, RayActorError):
            pass

    async def _remove_group(self, replica_id: str) -> None:
        try:
            group: PlacementGroup = await asyncio.to_thread(
                get_placement_group, PREFIX + replica_id
            )
        except ValueError:
            return
        await asyncio.to_thread(remove_placement_group, group)

    async def list_alive(self) -> list[ReplicaHandle]:
        await self._connect()
        names = await asyncio.to_thread(ray.util.list_named_actors)
        ids = [n.removeprefix(PREFIX) for n in names if n.startswith(PREFIX)]
        unknown = [i for i in ids if i not in self._known]
        if unknown:  # left by a previous control plane: adopt them
            await asyncio.gather(*(self._adopt(i) for i in unknown))
        if time.monotonic() - self._swept_at > self._cfg.sweep_interval:
            await self._sweep_groups(set(ids))
        return [self._known[i] for i in ids if i in self._known]

    async def _adopt(self, replica_id: str) -> None:
        try:
            actor = await self._actor(replica_id)
            described = await self._call(actor.describe.remote())
        except (ValueError, TimeoutError, RayActorError):
            return  # died meanwhile, or busy: the next pass asks again
        handle = _handle(described)
        self._known[replica_id] = handle
        self._endpoint_of[replica_id] = described["endpoint_id"]
        log.info("found replica %s on %s (GPUs %s)", replica_id, handle.node, list(handle.gpus))

    async def _sweep_groups(self, actor_ids: set[str]) -> None:
        """Remove replica placement groups whose actor is gone (their node died, or a control
        plane died between creating the group and the actor): they hold GPUs for nothing, and
        Ray would place them again elsewhere."""
        self._swept_at = time.monotonic()
        groups = await asyncio.to_thread(placement_group_table)
        for group in groups.values():
            name = group.get("name", "")
            replica_id = name.removeprefix(PREFIX)
            if (
                not name.startswith(PREFIX)
                or group.get("state") == "REMOVED"
                or replica_id in actor_ids
                or replica_id in self._starting
            ):
                continue
            try:  # started since the names were listed?
                await asyncio.to_thread(ray.get_actor, name, namespace=self._cfg.namespace)
                continue
            except ValueError:
                pass
            log.info("removing placement group %s: its replica's actor is gone", name)
            await self._remove_group(replica_id)

    async def close(self, *, stop_replicas: bool) -> None:
        if stop_replicas and self._connected:
            await asyncio.gather(
                *(self.stop(h, drain_timeout=10) for h in list(self._known.values()))
            )
        if self._connected:
            await asyncio.to_thread(ray.shutdown)
            self._connected = False
