"""Building the routing table from the store, and handing it to the gateways.

The rollout controller calls :meth:`RoutingFeed.publish` after each change and
:meth:`RoutingFeed.wait_drained` before it stops old replicas; it never sees a gateway.
``InProcessFeed`` swaps the table of a gateway in the same process; ``StoreFeed`` bumps the
store's routing generation, which gateways in other processes follow
(:class:`turnout.routing.follower.StoreFollower`).
"""

from __future__ import annotations

import asyncio
import logging
from collections.abc import Collection
from types import MappingProxyType
from typing import Protocol

from sqlalchemy.ext.asyncio import AsyncSession

from turnout.policy import Strategy
from turnout.routing.stats import VersionStats
from turnout.routing.table import CanaryRoute, EndpointRoute, ReplicaRoute, RoutingTable
from turnout.states import CANARY_STEPS, DeploymentState, ReplicaState, Step
from turnout.store import deployments, endpoints, replicas, routing, versions
from turnout.store.db import Database
from turnout.store.records import Deployment, Endpoint

log = logging.getLogger(__name__)


class RoutingFeed(Protocol):
    """What the rollout controller needs of the gateways."""

    async def publish(self) -> None:
        """Rebuild the routing table from the store; hand it to the gateways if it changed."""
        ...

    async def wait_drained(self, replica_ids: Collection[str], timeout: float) -> bool:
        """True once no gateway sends new requests to (or, in-process, still has requests on)
        any of ``replica_ids``; False on timeout."""
        ...

    async def stats(self, deployment_ids: Collection[str]) -> dict[str, VersionStats]:
        """What the gateways counted so far for each deployment (cumulative)."""
        ...


class TableHolder(Protocol):
    """A gateway's side: the table it routes by, its in-flight counts and what it counted per
    deployment (the Router)."""

    def current(self) -> RoutingTable: ...

    def swap(self, table: RoutingTable) -> None: ...

    async def wait_drained(self, replica_ids: Collection[str], timeout: float) -> bool: ...

    def stats_snapshot(self) -> dict[str, VersionStats]: ...


async def build_routes(session: AsyncSession, hold: float = 30.0) -> dict[str, EndpointRoute]:
    """Every endpoint's route; ``hold`` is how long requests wait for replicas that are
    swapping weights in place (TURNOUT_HOLD_SECONDS)."""
    routes = {}
    for endpoint in await endpoints.list_endpoints(session):
        routes[endpoint.endpoint_id] = await _route(session, endpoint, hold)
    return routes


def next_table(current: RoutingTable, routes: dict[str, EndpointRoute]) -> RoutingTable | None:
    """The table to swap in, or None when nothing changed."""
    if dict(current.endpoints) == routes:
        return None
    return RoutingTable(MappingProxyType(routes), current.generation + 1)


async def _routed_deployments(
    session: AsyncSession, endpoint: Endpoint
) -> tuple[list[Deployment], Deployment | None, bool]:
    """The serving deployment, plus one rolling in replica by replica (its replicas serve as
    soon as they pass their gates); a canary's deployment, when one takes traffic; and
    whether an in-place swap runs (its replicas leave routing one by one)."""
    routed = []
    if endpoint.serving_deployment_id:
        serving = await deployments.find_deployment(session, endpoint.serving_deployment_id)
        if serving is not None:
            routed.append(serving)
    running = await deployments.list_deployments(
        session, endpoint_id=endpoint.endpoint_id, states=[DeploymentState.IN_PROGRESS]
    )
    others = [d for d in running if d.id != endpoint.serving_deployment_id]
    routed.extend(d for d in others if d.step is Step.ROLLING)
    canary = next((d for d in others if d.step in CANARY_STEPS and d.traffic_percent > 0), None)
    swapping = any(
        d.step is Step.ROLLING and d.policy.strategy is Strategy.IN_PLACE for d in running
    )
    return routed, canary, swapping


async def _ready(session: AsyncSession, deployment: Deployment) -> tuple[ReplicaRoute, ...]:
    version = await versions.get_version_by_pk(session, deployment.version_id)
    fingerprint = version.fingerprint if version else None
    return tuple(
        ReplicaRoute(
            r.id,
            r.address,
            deployment_id=deployment.id,
            version_id=deployment.version_number,
            fingerprint=fingerprint,
        )
        for r in await replicas.list_replicas(session, deployment_id=deployment.id)
        if r.state is ReplicaState.READY and r.address
    )


async def _route(session: AsyncSession, endpoint: Endpoint, hold: float) -> EndpointRoute:
    routed, canary_deployment, swapping = await _routed_deployments(session, endpoint)
    if not routed:
        return EndpointRoute(
            endpoint.endpoint_id, endpoint.org_name, None, None, None, (), endpoint.created
        )
    found: list[ReplicaRoute] = []
    for deployment in routed:
        found.extend(await _ready(session, deployment))
    main = routed[0]
    fingerprint = next((r.fingerprint for r in found if r.deployment_id == main.id), None)
    canary = None
    if canary_deployment is not None:
        new = await _ready(session, canary_deployment)
        canary = CanaryRoute(
            canary_deployment.id,
            canary_deployment.version_number,
            new[0].fingerprint if new else None,
            canary_deployment.traffic_percent,
            canary_deployment.policy.sticky,
            new,
        )
    if fingerprint is None:
        version = await versions.get_version_by_pk(session, main.version_id)
        fingerprint = version.fingerprint if version else None
    return EndpointRoute(
        endpoint.endpoint_id,
        endpoint.org_name,
        main.id,
        main.version_number,
        fingerprint,
        tuple(found),
        endpoint.created,
        canary,
        # An in-place swap may empty the table for a moment: requests wait, not a 503.
        hold if swapping else 0.0,
    )


class InProcessFeed:
    """The gateway runs in this process: swap its table directly, count its in-flight requests."""

    def __init__(self, db: Database, gateway: TableHolder, hold_seconds: float = 30.0) -> None:
        self.db = db
        self.gateway = gateway
        self.hold_seconds = hold_seconds

    async def publish(self) -> None:
        async with self.db.session() as s:
            routes = await build_routes(s, self.hold_seconds)
        table = next_table(self.gateway.current(), routes)
        if table is not None:
            self.gateway.swap(table)
            log.info("published %s", table)

    async def wait_drained(self, replica_ids: Collection[str], timeout: float) -> bool:
        return await self.gateway.wait_drained(replica_ids, timeout)

    async def stats(self, deployment_ids: Collection[str]) -> dict[str, VersionStats]:
        counted = self.gateway.stats_snapshot()
        return {d: counted.get(d, VersionStats()) for d in deployment_ids}


class StoreFeed:
    """Gateways run in other processes: bump the store's routing generation, and count a
    replica drained once every live gateway serves a table without it. Requests those
    gateways still have in flight finish through the engine's own SIGTERM drain."""

    def __init__(
        self, db: Database, *, gateway_alive_within: float = 5.0, hold_seconds: float = 30.0
    ) -> None:
        self.db = db
        self.alive_within = gateway_alive_within
        self.hold_seconds = hold_seconds
        self._last: dict[str, EndpointRoute] | None = None
        self._generation = 0

    async def publish(self) -> None:
        async with self.db.session() as s:
            routes = await build_routes(s, self.hold_seconds)
            if routes == self._last:
                return
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

    async def stats(self, deployment_ids: Collection[str]) -> dict[str, VersionStats]:
        summed = {d: VersionStats() for d in deployment_ids}
        async with self.db.session() as s:
            for deployment_id, counters in await routing.gateway_stats(s, deployment_ids):
                summed[deployment_id] = summed[deployment_id].plus(VersionStats.from_dict(counters))
        return summed
