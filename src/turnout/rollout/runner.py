"""One deployment's rollout (DESIGN §3), run by the controller as the endpoint's task.

Every state and step change goes through :func:`turnout.store.deployments.apply` (the
transition table) and is written before the action it announces, so a worker that dies at
any step leaves a deployment that the next run finishes (after the switch) or starts again
from the beginning (before it). Strategies: ``surge`` starts the whole new replica set next
to the old one and switches all traffic at once; ``rolling`` (when the placement has no room
for a full surge and the endpoint has more than one replica) replaces one replica at a time
behind the same gates.
"""

from __future__ import annotations

import logging
from dataclasses import dataclass, field

from turnout.errors import NotFound
from turnout.placement.base import NoCapacity, ReplicaHandle
from turnout.placement.engines import EngineCatalog
from turnout.rollout.replicas import GateFailed, Replicas, endpoint_gpus
from turnout.routing.feed import RoutingFeed
from turnout.states import (
    REPLICA_GONE,
    SWITCHED_STEPS,
    TERMINAL,
    DeploymentState,
    Event,
    IllegalTransition,
    ReplicaState,
    Step,
)
from turnout.store import deployments, endpoints, replicas, versions
from turnout.store.db import Database
from turnout.store.deployments import LostRace
from turnout.store.records import Deployment, Endpoint, ModelVersion, Replica

log = logging.getLogger(__name__)

S = DeploymentState


@dataclass(frozen=True, slots=True)
class _Room:
    surge: bool
    #: Why there is no room to surge (for the event), else "".
    why: str


@dataclass(frozen=True, slots=True)
class RolloutConfig:
    engines: EngineCatalog = field(default_factory=EngineCatalog)
    ready_timeout: float = 600.0
    drain_timeout: float = 60.0
    stop_timeout: float = 15.0
    probe_interval: float = 0.2
    device: str = "cpu"
    #: Replicas the placement may run at once (0: no limit); with GPU capacity, decides surge
    #: vs rolling.
    max_replicas: int = 0
    #: The control plane's URL as nodes reach it, for replicas that fetch their weights
    #: (None: every node reads the weight store directly), and the internal route's token.
    weights_url: str | None = None
    internal_token: str = ""
    #: First wait before replacing a serving replica again after a failed replacement;
    #: doubles per failure up to ``heal_backoff_max``.
    heal_backoff: float = 5.0
    heal_backoff_max: float = 300.0


class RolloutAborted(Exception):
    """The rollout stops; the deployment ends ``state`` with ``code`` (the old version serves)."""

    def __init__(self, state: DeploymentState, code: str, message: str) -> None:
        super().__init__(message)
        self.state = state
        self.code = code
        self.message = message


@dataclass(frozen=True, slots=True)
class RolloutContext:
    db: Database
    replicas: Replicas
    feed: RoutingFeed
    config: RolloutConfig


class Rollout:
    """Runs one deployment to a terminal state."""

    def __init__(self, ctx: RolloutContext, deployment_id: str) -> None:
        self.ctx = ctx
        self.db = ctx.db
        self.replicas = ctx.replicas
        self.config = ctx.config
        self.id = deployment_id

    async def run(self) -> None:
        try:
            async with self.db.session() as s:
                deployment = await deployments.find_deployment(s, self.id)
            if deployment is None or deployment.state in TERMINAL:
                # A pass may read a deployment as active just before its rollout ends and
                # launch it again; that stale copy must touch nothing.
                log.info("deployment %s is no longer active; nothing to do", self.id)
                return
            if deployment.step in SWITCHED_STEPS:  # a worker died after the switch
                await self._finish(deployment, "finishing the drain after a worker restart")
                return
            endpoint, version = await self._begin(deployment)
            await self.roll(deployment, endpoint, version)
            await self._complete()
        except RolloutAborted as exc:
            await self._abort(exc)
        except Exception as exc:  # a bug must not leave the deployment running forever
            log.exception("rollout %s crashed", self.id)
            await self._abort(RolloutAborted(S.FAILED, "internal_error", f"internal error: {exc}"))

    async def roll(self, deployment: Deployment, endpoint: Endpoint, version: ModelVersion) -> None:
        """Bring the new version in and switch to it (the strategy: surge, or rolling when the
        new set does not fit next to the old one)."""
        room = await self._room(endpoint)
        if room.surge:
            await self._surge(deployment, endpoint, version)
        else:
            await self._rolling(deployment, endpoint, version, room.why)

    # -- state changes, all through the transition table --------------------------------

    async def _move(
        self, event: Event, step: Step | None = None, message: str | None = None
    ) -> Deployment:
        """Apply ``event``; a cancel (or the endpoint's deletion) that got there first aborts
        this rollout."""
        try:
            async with self.db.session() as s:
                moved = await deployments.apply(s, self.id, event, step=step, message=message)
        except (IllegalTransition, NotFound, LostRace) as refused:
            await self._check_not_cancelled()
            raise RolloutAborted(S.FAILED, "internal_error", str(refused)) from refused
        log.info("deployment %s: %s", self.id, message or event)
        return moved

    async def _step(self, step: Step, message: str) -> None:
        await self._move(Event.PROGRESS, step, message)

    async def _check_not_cancelled(self) -> None:
        async with self.db.session() as s:
            found = await deployments.find_deployment(s, self.id)
        if found is None:
            raise RolloutAborted(S.CANCELLED, "deleted", "the endpoint was deleted")
        if found.state is S.CANCELLED:
            raise RolloutAborted(S.CANCELLED, "cancelled", "cancelled by request")

    # -- steps ----------------------------------------------------------------------------

    async def _begin(self, deployment: Deployment) -> tuple[Endpoint, ModelVersion]:
        """Mark the deployment running (again, after a restart: its old replicas go first)."""
        if deployment.state is S.NOT_STARTED:
            await self._move(Event.START)
        else:
            await self._step(Step.STARTING, "started again from the beginning after a restart")
            if deployment.traffic_percent:  # a canary's share goes back to the serving version
                async with self.db.session() as s:
                    await deployments.set_traffic(s, self.id, 0)
                await self.ctx.feed.publish()
            await self._stop(await self._replicas_of(self.id))
        async with self.db.session() as s:
            endpoint = await endpoints.get_endpoint(s, deployment.endpoint_id)
            version = await versions.get_version_by_pk(s, deployment.version_id)
        if version is None or not version.weight_path or not version.digest:
            raise RolloutAborted(
                S.FAILED, "version_missing", f"{deployment.model_name} has no weights"
            )
        return endpoint, version

    async def _room(self, endpoint: Endpoint) -> _Room:
        """Surge when the placement has room for the whole new set next to the old one (GPUs
        on some node for each replica, then TURNOUT_MAX_REPLICAS as a cap); else rolling."""
        capacity = await self.replicas.placement.capacity()
        gpus = endpoint_gpus(endpoint)
        cap = self.config.max_replicas
        if not capacity.fits(endpoint.replicas, gpus):
            why = f"{endpoint.replicas} replica(s) of {gpus} GPU(s) do not fit ({capacity})"
        elif cap and capacity.replicas + endpoint.replicas > cap:
            why = f"{capacity.replicas} replica(s) run of TURNOUT_MAX_REPLICAS={cap}"
        else:
            return _Room(surge=True, why="")
        if endpoint.replicas > 1:
            return _Room(surge=False, why=why)
        raise RolloutAborted(
            S.FAILED,
            "no_capacity",
            f"no room to start a replica next to the serving one: {why}; "
            "free capacity or raise the limit",
        )

    async def _has_room_for_one(self, endpoint: Endpoint) -> bool:
        capacity = await self.replicas.placement.capacity()
        cap = self.config.max_replicas
        under_cap = not cap or capacity.replicas < cap
        return under_cap and capacity.fits(1, endpoint_gpus(endpoint))

    async def _start(
        self, deployment: Deployment, endpoint: Endpoint, version: ModelVersion
    ) -> ReplicaHandle:
        try:
            return await self.replicas.start(deployment, endpoint, version)
        except NoCapacity as exc:
            raise RolloutAborted(S.FAILED, "no_capacity", exc.reason) from exc

    async def _surge(
        self, deployment: Deployment, endpoint: Endpoint, version: ModelVersion
    ) -> None:
        await self._start_set(deployment, endpoint, version, "surge")
        await self._switch(endpoint)
        await self._drain(await self._old_replicas(endpoint.endpoint_id))

    async def _start_set(
        self, deployment: Deployment, endpoint: Endpoint, version: ModelVersion, strategy: str
    ) -> list[ReplicaHandle]:
        """The whole new replica set next to the serving one, ready and warmed up."""
        await self._step(
            Step.STARTING,
            f"{strategy}: starting {endpoint.replicas} replica(s) of {deployment.model_name} "
            "next to the serving ones",
        )
        handles: list[ReplicaHandle] = []
        for _ in range(endpoint.replicas):
            handles.append(await self._start(deployment, endpoint, version))
        await self._step(Step.WARMING, "waiting for readiness and a warm-up")
        await self._gate_and_serve(endpoint, handles)
        await self._step(Step.WARMING, "all new replicas ready and warmed up")
        return handles

    async def _rolling(
        self, deployment: Deployment, endpoint: Endpoint, version: ModelVersion, why: str
    ) -> None:
        await self._step(
            Step.ROLLING,
            f"rolling: replacing {endpoint.replicas} replica(s) one at a time "
            f"(no room to surge: {why})",
        )
        started = 0
        for _ in range(endpoint.replicas):
            await self._check_not_cancelled()
            old = [
                r
                for r in await self._old_replicas(endpoint.endpoint_id)
                if r.state not in REPLICA_GONE
            ]
            if old and not await self._has_room_for_one(endpoint):
                # No spare slot: take one old replica out of rotation first (frees its GPUs).
                await self._drain(old[:1], Step.ROLLING)
                old = old[1:]
            handle = await self._start(deployment, endpoint, version)
            started += 1
            await self._gate_and_serve(endpoint, [handle])
            if old and started + len(old) > endpoint.replicas:
                await self._drain(old[:1], Step.ROLLING)
        await self._switch(endpoint)
        await self._drain(await self._old_replicas(endpoint.endpoint_id))

    async def _gate_and_serve(self, endpoint: Endpoint, handles: list[ReplicaHandle]) -> None:
        """Gates, then mark the replicas ready (which puts them in the routing table as soon as
        their deployment is routed)."""
        try:
            await self.replicas.gate(handles, endpoint.endpoint_id, self._check_not_cancelled)
        except GateFailed as exc:
            raise RolloutAborted(S.FAILED, exc.code, exc.message) from exc
        await self.replicas.mark([h.replica_id for h in handles], ReplicaState.READY)
        await self.ctx.feed.publish()

    async def _switch(self, endpoint: Endpoint) -> None:
        # One transaction: the step and the endpoint's serving deployment move together, and
        # a cancel that won the race leaves both untouched.
        try:
            async with self.db.session() as s:
                current = await endpoints.get_endpoint(s, endpoint.endpoint_id)
                before = current.serving_deployment_id
                await deployments.apply(
                    s,
                    self.id,
                    Event.PROGRESS,
                    step=Step.SWITCHED,
                    message=f"traffic switched from {before or 'nothing'} to this deployment",
                )
                await endpoints.set_serving(s, endpoint.endpoint_id, self.id)
        except (IllegalTransition, NotFound, LostRace) as refused:
            await self._check_not_cancelled()
            raise RolloutAborted(S.FAILED, "internal_error", str(refused)) from refused
        await self.ctx.feed.publish()

    async def _drain(self, old: list[Replica], step: Step = Step.DRAINING) -> None:
        """Take replicas out of rotation, wait for their in-flight requests, stop them."""
        if not old:
            # Nothing to stop, but gateways in other processes must serve the new table before
            # the deployment counts as complete.
            await self.ctx.feed.wait_drained([], self.config.drain_timeout)
            return
        await self._step(step, f"draining {len(old)} old replica(s); in-flight requests finish")
        await self.replicas.mark([r.id for r in old], ReplicaState.DRAINING)
        await self.ctx.feed.publish()
        drained = await self.ctx.feed.wait_drained([r.id for r in old], self.config.drain_timeout)
        if not drained:
            log.warning("deployment %s: drain timeout; stopping old replicas anyway", self.id)
        await self._stop(old)

    async def _finish(self, deployment: Deployment, message: str) -> None:
        """After the switch: drain what is left of the old replicas, then complete."""
        log.info("deployment %s: %s", self.id, message)
        await self._drain(await self._old_replicas(deployment.endpoint_id))
        await self._complete()

    async def _complete(self) -> None:
        await self._move(Event.COMPLETE, message="complete: this deployment serves")

    async def _abort(self, exc: RolloutAborted) -> None:
        """Record the failure first, then take the new replicas out and stop them."""
        event = Event.CANCEL if exc.state is S.CANCELLED else Event.FAIL
        log.warning("deployment %s %s: %s", self.id, exc.state.value, exc.message)
        try:
            async with self.db.session() as s:
                await deployments.apply(
                    s,
                    self.id,
                    event,
                    message=exc.message,
                    error_code=exc.code,
                    error_message=f"{exc.message}; the previous version keeps serving",
                )
        except IllegalTransition as illegal:
            if illegal.status.step in SWITCHED_STEPS:
                # The new version already serves; failing it now would cut its requests.
                log.warning("deployment %s: error after the switch; completing", self.id)
                await self._finish_quietly()
                return
            log.info("deployment %s already %s", self.id, illegal.status.state)  # e.g. cancelled
        except (LostRace, NotFound) as error:  # deleted with its endpoint meanwhile
            log.warning("deployment %s: could not record the abort: %s", self.id, error)
        await self.ctx.feed.publish()  # a rolling rollout's new replicas leave the table first
        await self._stop(await self._replicas_of(self.id))

    async def _finish_quietly(self) -> None:
        try:
            async with self.db.session() as s:
                deployment = await deployments.get_deployment(s, self.id)
            await self._finish(deployment, "completing after an error past the switch")
        except Exception:
            log.exception("deployment %s: completing after the switch failed", self.id)

    # -- replica rows ---------------------------------------------------------------------

    async def _stop(self, rows: list[Replica]) -> None:
        await self.replicas.stop(rows)

    async def _replicas_of(self, deployment_id: str) -> list[Replica]:
        async with self.db.session() as s:
            return await replicas.list_replicas(s, deployment_id=deployment_id)

    async def _old_replicas(self, endpoint_id: str) -> list[Replica]:
        async with self.db.session() as s:
            return [
                r
                for r in await replicas.list_replicas(s, endpoint_id=endpoint_id)
                if r.deployment_id != self.id
            ]
