"""The rollout controller: runs deployments (DESIGN §3) and keeps stored replicas true to live.

``reconcile()`` is one pass, the same at start-up and every second after:

1. observe the placement: which replica processes are alive;
2. read the store: endpoints, active deployments, replica rows;
3. adopt what runs and has a row (after a restart this is how replicas outlive the worker);
4. start the oldest active deployment of each idle endpoint (first in, first out); its task
   writes each step before it acts (:mod:`turnout.rollout.runner`);
5. for each idle endpoint (no task running), diff stored against live and launch one piece
   of work: stop what nobody wants (processes with no row, replicas of deleted endpoints or of
   deployments that neither serve nor run), record replicas whose process is gone, or replace
   missing serving replicas (with backoff when a replacement fails);
6. publish the routing table.

Each endpoint has at most one task at a time, so a rollout, a clean-up and a heal never race.
"""

from __future__ import annotations

import asyncio
import logging
import time
from collections.abc import Coroutine
from dataclasses import dataclass, replace

from turnout.errors import NotFound
from turnout.ids import new_deployment_id
from turnout.placement.base import NoCapacity, Placement, ReplicaHandle
from turnout.policy import SURGE, Strategy
from turnout.rollout.canary import CanaryRollout
from turnout.rollout.inplace import InPlaceRollout
from turnout.rollout.replicas import GateConfig, GateFailed, Replicas
from turnout.rollout.runner import Rollout, RolloutConfig, RolloutContext
from turnout.routing.feed import RoutingFeed
from turnout.states import ACTIVE, REPLICA_GONE, ReplicaState
from turnout.store import deployments, endpoints, replicas, tenants, versions
from turnout.store.db import Database
from turnout.store.records import Deployment, Endpoint, Replica, SyncStatus

__all__ = ["RolloutConfig", "RolloutController"]

log = logging.getLogger(__name__)


@dataclass(frozen=True, slots=True)
class _Desired:
    """What the store says, read once per pass."""

    endpoints: dict[str, Endpoint]
    active: list[Deployment]
    rows: list[Replica]


@dataclass(slots=True)
class _Backoff:
    failures: int = 0
    retry_at: float = 0.0


def rollout_for(context: RolloutContext, deployment: Deployment) -> Rollout:
    """The rollout that carries out the deployment's policy (DESIGN §8)."""
    kind = {Strategy.CANARY: CanaryRollout, Strategy.IN_PLACE: InPlaceRollout}.get(
        deployment.policy.strategy, Rollout
    )
    return kind(context, deployment.id)


class RolloutController:
    def __init__(
        self, db: Database, placement: Placement, feed: RoutingFeed, config: RolloutConfig
    ) -> None:
        self.db = db
        self.placement = placement
        self.feed = feed
        self.config = config
        self.replicas = Replicas(
            db,
            placement,
            GateConfig(
                config.engines,
                config.ready_timeout,
                config.probe_interval,
                config.stop_timeout,
                config.device,
                config.weights_url,
                config.internal_token,
            ),
        )
        self.context = RolloutContext(db, self.replicas, feed, config)
        self.wakeup = asyncio.Event()
        self._tasks: dict[str, asyncio.Task[None]] = {}  # endpoint id -> its running work
        #: Endpoints whose replacement replicas failed: retried after a doubling wait, so a
        #: broken version neither spins nor starves the deployment that would fix it.
        self._heal_backoff: dict[str, _Backoff] = {}

    def notify(self) -> None:
        self.wakeup.set()

    async def wait_idle(self) -> None:
        """Wait for the work the passes so far launched (a run-until-empty mode, as arq's
        burst: tests drive ``reconcile()`` and this, with no sleeps)."""
        while self._tasks:
            await asyncio.wait(list(self._tasks.values()))

    # -- the control loop's one pass ------------------------------------------------------

    async def reconcile(self) -> None:
        # 1. Observe first: a replica started after this point has its row written already.
        alive = {h.replica_id: h for h in await self.placement.list_alive()}
        # 2. Read desired state; endpoints that follow an alias get a deployment when it moved.
        await self._follow_aliases()
        desired = await self._read()
        # 3. Adopt live replicas that have rows.
        for row in desired.rows:
            if row.id in alive:
                self.replicas.handles.setdefault(row.id, alive[row.id])
        # 4. Decide: the oldest active deployment of each idle endpoint runs next (FIFO).
        for deployment in sorted(desired.active, key=lambda d: d.seq):
            if deployment.endpoint_id not in self._tasks:
                self._heal_backoff.pop(deployment.endpoint_id, None)
                rollout = rollout_for(self.context, deployment)
                self._launch(rollout.run(), deployment.endpoint_id, deployment.id)
        # 5. Idle endpoints: stored against live, then heal.
        await self._diff(desired, alive)
        # 6. Publish what is ready.
        await self.feed.publish()

    async def _follow_aliases(self) -> None:
        """Submit a deployment for each endpoint whose followed alias now names a version it
        neither serves nor already tried for this alias (a failed try is not repeated)."""
        async with self.db.session() as s:
            for endpoint in await endpoints.list_endpoints(s):
                if endpoint.follow_alias is None:
                    continue
                org = await tenants.get_org(s, endpoint.org_name)
                try:
                    version = await versions.resolve_version(
                        s, org, endpoint.arch_id, endpoint.follow_alias
                    )
                except NotFound:
                    continue  # the alias names nothing now: nothing to deploy
                if version.sync_status is not SyncStatus.DONE:
                    continue
                history = await deployments.list_deployments(s, endpoint_id=endpoint.endpoint_id)
                serving = next((d for d in history if d.id == endpoint.serving_deployment_id), None)
                tried = next((d for d in history if d.alias_used == endpoint.follow_alias), None)
                if (serving and serving.version_id == version.id) or (
                    tried and tried.version_id == version.id
                ):
                    continue
                deployment = await deployments.create_deployment(
                    s,
                    deployment_id=new_deployment_id(),
                    endpoint=endpoint,
                    version_pk=version.id,
                    alias_used=endpoint.follow_alias,
                    policy=endpoint.follow_policy or SURGE,
                )
                await deployments.add_event(
                    s,
                    deployment.id,
                    "submitted",
                    f"alias {endpoint.follow_alias!r} moved to version {version.version_number}",
                )
                log.info("endpoint %s follows %s", endpoint.endpoint_id, version.name)

    async def _read(self) -> _Desired:
        async with self.db.session() as s:
            found = {e.endpoint_id: e for e in await endpoints.list_endpoints(s)}
            active = await deployments.list_deployments(s, states=ACTIVE)
            rows = await replicas.list_replicas(s)
        return _Desired(found, active, rows)

    def _launch(self, work: Coroutine[None, None, None], endpoint_id: str, what: str) -> None:
        task = asyncio.create_task(work, name=f"{what} on {endpoint_id}")
        self._tasks[endpoint_id] = task

        def finished(done: asyncio.Task[None], endpoint_id: str = endpoint_id) -> None:
            self._tasks.pop(endpoint_id, None)
            if not done.cancelled() and done.exception() is not None:
                log.error("%s failed", done.get_name(), exc_info=done.exception())
            self.wakeup.set()  # the next queued deployment of this endpoint may start

        task.add_done_callback(finished)

    async def close(self) -> None:
        for task in list(self._tasks.values()):
            task.cancel()
        await asyncio.gather(*list(self._tasks.values()), return_exceptions=True)
        await self.replicas.close()

    # -- stored against live ----------------------------------------------------------------

    async def _diff(self, desired: _Desired, alive: dict[str, ReplicaHandle]) -> None:
        recorded = {r.id for r in desired.rows}
        unrecorded = [h for i, h in alive.items() if i not in recorded]
        if unrecorded:  # alive but unknown: left by a worker that died before writing
            log.info("stopping %d replica(s) with no row", len(unrecorded))
            await self.replicas.stop_unrecorded(unrecorded)
        by_endpoint: dict[str, list[Replica]] = {}
        for row in desired.rows:
            by_endpoint.setdefault(row.endpoint_id, []).append(row)
        for endpoint_id in sorted(set(by_endpoint) | set(desired.endpoints)):
            if endpoint_id in self._tasks:
                continue  # its task owns its replicas until it ends
            endpoint = desired.endpoints.get(endpoint_id)
            mine = by_endpoint.get(endpoint_id, [])
            unwanted = self._unwanted(endpoint, desired.active, mine)
            if unwanted:
                self._launch(self._retire(unwanted), endpoint_id, "clean-up")
                continue
            mine = await self._record_gone(mine, alive)
            if endpoint is not None and self._needs_heal(endpoint, mine):
                self._launch(self._heal(endpoint), endpoint_id, "heal")

    @staticmethod
    def _unwanted(
        endpoint: Endpoint | None, active: list[Deployment], rows: list[Replica]
    ) -> list[Replica]:
        """Replicas of a deleted endpoint, or of a deployment that neither serves nor runs."""
        if endpoint is None:
            return rows
        wanted = {endpoint.serving_deployment_id} | {
            d.id for d in active if d.endpoint_id == endpoint.endpoint_id
        }
        return [r for r in rows if r.deployment_id not in wanted]

    async def _record_gone(
        self, rows: list[Replica], alive: dict[str, ReplicaHandle]
    ) -> list[Replica]:
        """Store what the placement says of each replica (crashed, restarting, failed, lost
        with its node or process); the rows as they are now."""
        now = []
        for row in rows:
            if row.state in REPLICA_GONE or row.state is ReplicaState.DRAINING:
                now.append(row)
                continue
            handle = self.replicas.handles.get(row.id)
            if handle is None and row.id not in alive:
                # Lost with a previous worker or its node: nothing runs it any more.
                error = "its process or node is gone (found at reconcile)"
                await self.replicas.set_state(row, ReplicaState.LOST, error)
                now.append(replace(row, state=ReplicaState.LOST, error=error))
                continue
            status = await self.placement.probe(handle or alive[row.id])
            state = status.state
            if (state, status.restarts, status.handle.node, status.handle.address) != (
                row.state,
                row.restarts,
                row.node,
                row.address,
            ):
                await self.replicas.record(row, replace(status, state=state))
                row = replace(row, state=state, error=status.error, restarts=status.restarts)
            now.append(row)
        return now

    async def _retire(self, rows: list[Replica]) -> None:
        """Take unwanted replicas out of routing, let their requests finish, stop them."""
        ids = [r.id for r in rows]
        log.info("retiring replica(s) %s", ", ".join(ids))
        await self.replicas.mark(ids, ReplicaState.DRAINING)
        await self.feed.publish()
        await self.feed.wait_drained(ids, self.config.drain_timeout)
        await self.replicas.stop(rows)

    # -- healing serving replicas ---------------------------------------------------------

    def _needs_heal(self, endpoint: Endpoint, rows: list[Replica]) -> bool:
        serving = endpoint.serving_deployment_id
        if serving is None:
            return False
        backoff = self._heal_backoff.get(endpoint.endpoint_id)
        if backoff is not None and time.monotonic() < backoff.retry_at:
            return False
        mine = [r for r in rows if r.deployment_id == serving]
        gone = [r for r in mine if r.state in REPLICA_GONE]
        return bool(gone) or endpoint.replicas > len(mine)

    async def _heal(self, endpoint: Endpoint) -> None:
        """Replace the serving deployment's failed, lost or missing replicas; when that fails
        (no capacity, a replacement that does not start), say why on the endpoint and retry
        after a doubling wait."""
        deployment_id = endpoint.serving_deployment_id
        assert deployment_id is not None
        async with self.db.session() as s:
            deployment = await deployments.get_deployment(s, deployment_id)
            mine = await replicas.list_replicas(s, deployment_id=deployment_id)
            version = await versions.get_version_by_pk(s, deployment.version_id)
        await self.replicas.stop([r for r in mine if r.state in REPLICA_GONE])
        if version is None or not version.weight_path:
            return
        live = [r for r in mine if r.state not in REPLICA_GONE]
        missing = endpoint.replicas - len(live)
        log.info("endpoint %s: starting %d replacement replica(s)", endpoint.endpoint_id, missing)
        for done in range(missing):
            short = f"{missing - done} of {endpoint.replicas} replica(s) missing"
            try:
                handle = await self.replicas.start(deployment, endpoint, version)
            except NoCapacity as exc:
                await self._heal_failed(endpoint, f"{short}: no capacity: {exc.reason}")
                return
            try:
                await self.replicas.gate([handle], endpoint.endpoint_id)
            except GateFailed as exc:
                await self.replicas.mark([handle.replica_id], ReplicaState.FAILED, exc.message)
                await self._heal_failed(endpoint, f"{short}: replacement failed: {exc.message}")
                return
            await self.replicas.mark([handle.replica_id], ReplicaState.READY)
            await self.feed.publish()
        self._heal_backoff.pop(endpoint.endpoint_id, None)
        await self._set_problem(endpoint.endpoint_id, None)

    async def _heal_failed(self, endpoint: Endpoint, problem: str) -> None:
        backoff = self._heal_backoff.setdefault(endpoint.endpoint_id, _Backoff())
        backoff.failures += 1
        wait = min(
            self.config.heal_backoff * 2 ** (backoff.failures - 1), self.config.heal_backoff_max
        )
        backoff.retry_at = time.monotonic() + wait
        message = f"{problem}; retrying in {wait:.0f} s"
        log.warning("endpoint %s: %s", endpoint.endpoint_id, message)
        await self._set_problem(endpoint.endpoint_id, message)

    async def _set_problem(self, endpoint_id: str, problem: str | None) -> None:
        async with self.db.session() as s:
            await endpoints.set_replica_problem(s, endpoint_id, problem)
