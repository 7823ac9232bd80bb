"""The routing table as the store describes it: what the gateway should send where.

Built by the rollout controller after every change (and, for a gateway running on its own, by
a poller in that process); the gateway itself never reads the store.
"""

from __future__ import annotations

import asyncio
import logging
import time
from collections.abc import Collection
from types import MappingProxyType
from typing import Protocol

from sqlalchemy.ext.asyncio import AsyncSession

from turnout.gateway.keys import StaticInferenceKeys
from turnout.gateway.routing import EndpointRoute, ReplicaRoute, Router, RoutingTable
from turnout.placement.base import ReplicaState
from turnout.rollout.states import DeploymentState, Step
from turnout.store import endpoints as repo
from turnout.store import routing, tenants, versions
from turnout.store.db import Database
from turnout.store.records import Deployment, Endpoint, KeyKind

log = logging.getLogger(__name__)


async def build_routes(session: AsyncSession) -> dict[str, EndpointRoute]:
    return {e.endpoint_id: await _route(session, e) for e in await repo.list_endpoints(session)}


def next_table(current: RoutingTable, routes: dict[str, EndpointRoute]) -> RoutingTable | None:
    """The table to swap in, or None when nothing changed."""
    if dict(current.endpoints) == routes:
        return None
    return RoutingTable(MappingProxyType(routes), current.generation + 1)


async def _routed_deployments(session: AsyncSession, endpoint: Endpoint) -> list[Deployment]:
    """The serving deployment, plus one rolling in replica by replica (its replicas serve as
    soon as they pass their gates)."""
    routed = []
    if endpoint.serving_deployment_id:
        serving = await repo.find_deployment(session, endpoint.serving_deployment_id)
        if serving is not None:
            routed.append(serving)
    for d in await repo.list_deployments(
        session, endpoint_id=endpoint.endpoint_id, states=[DeploymentState.IN_PROGRESS.value]
    ):
        if d.step == Step.ROLLING.value and d.id != endpoint.serving_deployment_id:
            routed.append(d)
    return routed


async def _route(session: AsyncSession, endpoint: Endpoint) -> EndpointRoute:
    routed = await _routed_deployments(session, endpoint)
    if not routed:
        return EndpointRoute(endpoint.endpoint_id, endpoint.org_name, None, None, None, ())
    replicas: list[ReplicaRoute] = []
    fingerprints: dict[str, str | None] = {}
    for deployment in routed:
        version = await versions.get_version_by_pk(session, deployment.version_id)
        fingerprints[deployment.id] = version.fingerprint if version else None
        replicas.extend(
            ReplicaRoute(
                r.id,
                r.address,
                deployment_id=deployment.id,
                version_id=deployment.version_number,
                fingerprint=fingerprints[deployment.id],
            )
            for r in await repo.list_replicas(session, deployment_id=deployment.id)
            if r.state == ReplicaState.READY and r.address
        )
    main = routed[0]
    return EndpointRoute(
        endpoint.endpoint_id,
        endpoint.org_name,
        main.id,
        main.version_number,
        fingerprints[main.id],
        tuple(replicas),
    )


class RouteSink(Protocol):
    """Where the controller's routing decisions go, and how it learns old replicas drained."""

    async def publish(self, routes: dict[str, EndpointRoute]) -> None: ...

    async def wait_drained(self, replica_ids: Collection[str], timeout: float) -> bool: ...


class LocalRouteSink:
    """The gateway runs in this process: swap its table directly, count its in-flight requests."""

    def __init__(self, router: Router) -> None:
        self.router = router

    async def publish(self, routes: dict[str, EndpointRoute]) -> None:
        table = next_table(self.router.current(), routes)
        if table is not None:
            self.router.swap(table)
            log.info("published %s", table)

    async def wait_drained(self, replica_ids: Collection[str], timeout: float) -> bool:
        return await self.router.wait_drained(replica_ids, timeout)


class StoreRouteSink:
    """Gateways run in other processes: bump the store's routing generation, and count a
    replica drained once every live gateway serves a table without it. Requests those
    gateways still have in flight finish through the engine's own SIGTERM drain."""

    def __init__(self, db: Database, *, gateway_alive_within: float = 5.0) -> None:
        self.db = db
        self.alive_within = gateway_alive_within
        self._last: dict[str, EndpointRoute] | None = None
        self._generation = 0

    async def publish(self, routes: dict[str, EndpointRoute]) -> None:
        if routes == self._last:
            return
        async with self.db.session() as s:
            self._generation = await routing.bump_routing_generation(s)
        self._last = routes
        log.info("published routing generation %d", self._generation)

    async def wait_drained(self, replica_ids: Collection[str], timeout: float) -> bool:
        loop = asyncio.get_running_loop()
        deadline = loop.time() + timeout
        while loop.time() < deadline:
            async with self.db.session() as s:
                lagging = await routing.lagging_gateways(s, self._generation, self.alive_within)
            if not lagging:
                return True
            await asyncio.sleep(0.1)
        return False


class StoreFollower:
    """A gateway in its own process: rebuild the routing table from the store when the
    generation moves and acknowledge it at once; refresh keys and the heartbeat once a second.

    It polls every 250 ms so a switch reaches it quickly, but only a generation change costs a
    rebuild and a write; otherwise a pass is one indexed read.
    """

    #: Seconds between key-cache refreshes and heartbeats (well inside the worker's 5 s
    #: liveness window for gateways).
    REFRESH = 1.0

    def __init__(self, db: Database, router: Router, keys: StaticInferenceKeys, gateway_id: str):
        self.db = db
        self.router = router
        self.keys = keys
        self.gateway_id = gateway_id
        self.wakeup = asyncio.Event()
        self._seen = -1
        self._refreshed = float("-inf")

    async def reconcile(self) -> None:
        now = time.monotonic()
        due = now - self._refreshed >= self.REFRESH
        async with self.db.session() as s:
            generation = await routing.routing_generation(s)
            moved = generation != self._seen
            if moved:
                table = next_table(self.router.current(), await build_routes(s))
                if table is not None:
                    self.router.swap(table)
                    log.info(
                        "gateway %s follows generation %d: %s", self.gateway_id, generation, table
                    )
                self._seen = generation
            if due:
                self.keys.replace(await tenants.active_key_hashes(s, KeyKind.INFERENCE))
                self._refreshed = now
            if moved or due:
                await routing.record_gateway(s, self.gateway_id, generation)
