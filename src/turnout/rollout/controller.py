"""The rollout controller: runs deployments (DESIGN §3) and keeps the routing table true.

``reconcile()`` is one pass: read what the store wants, observe the placement, decide, persist
the intent, act, record the result. Each endpoint's deployments run one at a time, first in
first out, each in its own task (a rollout waits minutes for weights to load). Every step is
written to the store before it acts, so :meth:`recover` can finish or undo it after a crash.

Strategies: ``surge`` starts the whole new replica set next to the old one and switches all
traffic at once; ``rolling`` (when the placement has no room for a full surge and the endpoint
has more than one replica) replaces one replica at a time behind the same gates.
"""

from __future__ import annotations

import asyncio
import logging
from collections.abc import Coroutine
from dataclasses import dataclass, field

from turnout.gateway.keys import StaticInferenceKeys
from turnout.placement.base import Placement, ReplicaHandle, ReplicaState
from turnout.placement.engines import EngineCatalog
from turnout.rollout.replicas import GateConfig, GateFailed, Replicas
from turnout.rollout.routes import RouteSink, build_routes
from turnout.rollout.states import ACTIVE, SWITCHED_STEPS, DeploymentState, Step
from turnout.store import endpoints as repo
from turnout.store import tenants, versions
from turnout.store.db import Database
from turnout.store.records import Deployment, Endpoint, KeyKind, Replica

log = logging.getLogger(__name__)

S = DeploymentState
GONE = (ReplicaState.FAILED.value, ReplicaState.STOPPED.value)


@dataclass(frozen=True, slots=True)
class RolloutConfig:
    engines: EngineCatalog = field(default_factory=EngineCatalog)
    ready_timeout: float = 600.0
    drain_timeout: float = 60.0
    stop_timeout: float = 15.0
    probe_interval: float = 0.2
    device: str = "cpu"
    #: Replicas the placement can run at once (0: no limit). Decides surge vs rolling.
    max_replicas: int = 0


class RolloutAborted(Exception):
    def __init__(self, state: DeploymentState, code: str, message: str) -> None:
        super().__init__(message)
        self.state = state
        self.code = code
        self.message = message


class RolloutController:
    def __init__(
        self,
        db: Database,
        placement: Placement,
        sink: RouteSink,
        keys: StaticInferenceKeys,
        config: RolloutConfig,
    ) -> None:
        self.db = db
        self.sink = sink
        self.keys = keys
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
            ),
        )
        self.placement = placement
        self.wakeup = asyncio.Event()
        self._tasks: dict[str, asyncio.Task[None]] = {}  # endpoint id -> its running work
        #: Endpoints whose last replacement failed: not retried before their next rollout, so
        #: a broken version cannot starve the deployment that would fix it.
        self._heal_failed: set[str] = set()

    def notify(self) -> None:
        self.wakeup.set()

    # -- the control loop's one pass ------------------------------------------------------

    async def reconcile(self) -> None:
        # 1. Read desired state.
        async with self.db.session() as s:
            active = await repo.list_deployments(s, states=[a.value for a in ACTIVE])
            self.keys.replace(await tenants.active_key_hashes(s, KeyKind.INFERENCE))
        # 2. Observe serving replicas; replacing lost ones comes first (service before change).
        await self._observe_serving()
        await self._heal_serving()
        # 3. Decide: the oldest active deployment of each idle endpoint runs next (FIFO).
        for deployment in sorted(active, key=lambda d: d.seq):
            if deployment.endpoint_id not in self._tasks:
                self._launch(self._rollout(deployment), deployment.endpoint_id, deployment.id)
        # 4. Publish what is ready.
        await self.publish()

    def _launch(self, work: Coroutine[None, None, None], endpoint_id: str, what: str) -> None:
        task = asyncio.create_task(work, name=f"{what} on {endpoint_id}")
        self._tasks[endpoint_id] = task

        def finished(_: asyncio.Task[None], endpoint_id: str = endpoint_id) -> None:
            self._tasks.pop(endpoint_id, None)
            self.wakeup.set()  # the next queued deployment of this endpoint may start

        task.add_done_callback(finished)

    async def close(self) -> None:
        for task in list(self._tasks.values()):
            task.cancel()
        await asyncio.gather(*list(self._tasks.values()), return_exceptions=True)
        await self.replicas.close()

    async def publish(self) -> None:
        """Build the routing table from the store and swap it in if it changed."""
        async with self.db.session() as s:
            routes = await build_routes(s)
        await self.sink.publish(routes)

    async def _observe_serving(self) -> None:
        """Record what the placement says about serving replicas (crashed, restarted, failed)."""
        async with self.db.session() as s:
            serving = {e.serving_deployment_id for e in await repo.list_endpoints(s)}
            replicas = [r for r in await repo.list_replicas(s) if r.deployment_id in serving]
        for replica in replicas:
            handle = self.replicas.handles.get(replica.id)
            if handle is None or replica.state == ReplicaState.DRAINING:
                continue
            status = await self.placement.probe(handle)
            if status.state.value != replica.state:
                await self.replicas.set_state(replica, status.state, status.error)

    async def _heal_serving(self) -> None:
        """Replace serving replicas that are gone (crashed for good, or lost in a restart)."""
        async with self.db.session() as s:
            endpoints = await repo.list_endpoints(s)
            replicas = await repo.list_replicas(s)
        for endpoint in endpoints:
            serving = endpoint.serving_deployment_id
            if (
                serving is None
                or endpoint.endpoint_id in self._tasks
                or endpoint.endpoint_id in self._heal_failed
            ):
                continue
            mine = [r for r in replicas if r.deployment_id == serving]
            gone = [r for r in mine if r.state in GONE]
            if endpoint.replicas > len(mine) - len(gone):
                self._launch(self._heal(endpoint, serving, gone), endpoint.endpoint_id, "heal")

    async def _heal(self, endpoint: Endpoint, deployment_id: str, gone: list[Replica]) -> None:
        await self.replicas.stop(gone)
        async with self.db.session() as s:
            deployment = await repo.get_deployment(s, deployment_id)
            live = await repo.list_replicas(s, deployment_id=deployment_id)
            version = await versions.get_version_by_pk(s, deployment.version_id)
        if version is None or not version.weight_path:
            return
        missing = endpoint.replicas - len(live)
        log.info("endpoint %s: starting %d replacement replica(s)", endpoint.endpoint_id, missing)
        for _ in range(missing):
            taken = {r.id for r in live} | set(self.replicas.handles)
            handle = await self.replicas.start(deployment, endpoint, version.weight_path, taken)
            await self._gate_and_serve(deployment, endpoint, [handle], heal=True)
            async with self.db.session() as s:
                live = await repo.list_replicas(s, deployment_id=deployment_id)

    # -- one rollout --------------------------------------------------------------------------

    async def _rollout(self, deployment: Deployment) -> None:
        self._heal_failed.discard(deployment.endpoint_id)
        try:
            begun = await self._begin(deployment)
            if begun is None:
                return
            endpoint, weight_path = begun
            if await self._must_roll(endpoint):
                await self._rolling(deployment, endpoint, weight_path)
            else:
                await self._surge(deployment, endpoint, weight_path)
            await self._complete(deployment)
        except RolloutAborted as exc:
            await self._abort(deployment, exc)
        except Exception as exc:  # a bug must not leave the deployment running forever
            log.exception("rollout %s crashed", deployment.id)
            await self._abort(
                deployment, RolloutAborted(S.FAILED, "internal_error", f"internal error: {exc}")
            )

    async def _event(self, deployment_id: str, step: Step, message: str) -> None:
        async with self.db.session() as s:
            await repo.update_deployment(s, deployment_id, step=step.value)
            await repo.add_event(s, deployment_id, step.value, message)
        log.info("deployment %s: %s: %s", deployment_id, step.value, message)

    async def _check_not_cancelled(self, deployment_id: str) -> None:
        async with self.db.session() as s:
            state = DeploymentState((await repo.get_deployment(s, deployment_id)).state)
        if state is S.CANCELLED:
            raise RolloutAborted(S.CANCELLED, "cancelled", "cancelled by request")

    async def _begin(self, deployment: Deployment) -> tuple[Endpoint, str] | None:
        """Mark the deployment running; None when it is no longer active.

        A reconcile pass can read a deployment as active just before its rollout finishes and
        launch it again once the endpoint is idle; that stale copy must touch nothing (its
        replicas now serve). A deployment cancelled before it started has no replicas either.
        """
        async with self.db.session() as s:
            endpoint = await repo.get_endpoint(s, deployment.endpoint_id)
            version = await versions.get_version_by_pk(s, deployment.version_id)
            moved = await repo.compare_and_set_state(
                s,
                deployment.id,
                from_states=[S.NOT_STARTED.value, S.IN_PROGRESS.value],
                to_state=S.IN_PROGRESS.value,
                step=Step.STARTING.value,
            )
        if not moved:
            log.info("deployment %s is no longer active; nothing to do", deployment.id)
            return None
        if version is None or not version.weight_path:
            raise RolloutAborted(
                S.FAILED, "version_missing", f"{deployment.model_name} has no weights"
            )
        return endpoint, version.weight_path

    async def _must_roll(self, endpoint: Endpoint) -> bool:
        """True when a full surge does not fit the placement's capacity."""
        if not self.config.max_replicas:
            return False
        async with self.db.session() as s:
            running = [r for r in await repo.list_replicas(s) if r.state not in GONE]
        if len(running) + endpoint.replicas <= self.config.max_replicas:
            return False
        if endpoint.replicas > 1:
            return True
        raise RolloutAborted(
            S.FAILED,
            "no_capacity",
            f"no room to start a replica next to the serving one ({len(running)} of "
            f"TURNOUT_MAX_REPLICAS={self.config.max_replicas} run); "
            "raise the limit or free a replica",
        )

    async def _gate_and_serve(
        self, deployment: Deployment, endpoint: Endpoint, handles: list[ReplicaHandle], heal: bool
    ) -> None:
        """Gates, then mark the replicas ready (which puts them in the routing table as soon as
        their deployment is routed)."""

        async def still_wanted() -> None:
            if not heal:
                await self._check_not_cancelled(deployment.id)

        try:
            await self.replicas.gate(handles, endpoint.endpoint_id, still_wanted)
        except GateFailed as exc:
            if heal:
                log.warning("endpoint %s: replacement failed: %s", endpoint.endpoint_id, exc)
                self._heal_failed.add(endpoint.endpoint_id)
                await self._mark(handles, ReplicaState.FAILED, exc.message)
                return
            raise RolloutAborted(S.FAILED, exc.code, exc.message) from exc
        await self._mark(handles, ReplicaState.READY)
        await self.publish()

    async def _mark(
        self, handles: list[ReplicaHandle], state: ReplicaState, error: str | None = None
    ) -> None:
        ids = {h.replica_id for h in handles}
        async with self.db.session() as s:
            rows = [r for r in await repo.list_replicas(s) if r.id in ids]
        for row in rows:
            await self.replicas.set_state(row, state, error)

    async def _old_replicas(self, deployment: Deployment) -> list[Replica]:
        async with self.db.session() as s:
            return [
                r
                for r in await repo.list_replicas(s, endpoint_id=deployment.endpoint_id)
                if r.deployment_id != deployment.id
            ]

    async def _surge(self, deployment: Deployment, endpoint: Endpoint, weight_path: str) -> None:
        await self._event(
            deployment.id,
            Step.STARTING,
            f"surge: starting {endpoint.replicas} replica(s) of {deployment.model_name} "
            "next to the serving ones",
        )
        handles: list[ReplicaHandle] = []
        for _ in range(endpoint.replicas):
            taken = {h.replica_id for h in handles}
            handles.append(await self.replicas.start(deployment, endpoint, weight_path, taken))
        await self._event(deployment.id, Step.WARMING, "waiting for readiness and a warm-up")
        await self._gate_and_serve(deployment, endpoint, handles, heal=False)
        await self._event(deployment.id, Step.WARMING, "all new replicas ready and warmed up")
        old = await self._switch(deployment, endpoint)
        await self._drain(deployment, old)

    async def _rolling(self, deployment: Deployment, endpoint: Endpoint, weight_path: str) -> None:
        await self._event(
            deployment.id,
            Step.ROLLING,
            f"rolling: replacing {endpoint.replicas} replica(s) one at a time "
            f"(no room to surge under TURNOUT_MAX_REPLICAS={self.config.max_replicas})",
        )
        started: set[str] = set()
        for _ in range(endpoint.replicas):
            await self._check_not_cancelled(deployment.id)
            old = [r for r in await self._old_replicas(deployment) if r.state not in GONE]
            async with self.db.session() as s:
                running = [r for r in await repo.list_replicas(s) if r.state not in GONE]
            if old and len(running) >= self.config.max_replicas:
                # No spare slot: take one old replica out of rotation first.
                await self._drain(deployment, old[:1], Step.ROLLING)
                old = old[1:]
            handle = await self.replicas.start(deployment, endpoint, weight_path, started)
            started.add(handle.replica_id)
            await self._gate_and_serve(deployment, endpoint, [handle], heal=False)
            if old and len(started) + len(old) > endpoint.replicas:
                await self._drain(deployment, old[:1], Step.ROLLING)
        old = await self._switch(deployment, endpoint)
        await self._drain(deployment, old)

    async def _switch(self, deployment: Deployment, endpoint: Endpoint) -> list[Replica]:
        async with self.db.session() as s:
            # Atomic with cancel: only an in-progress deployment that was not cancelled switches.
            switched = await repo.compare_and_set_state(
                s,
                deployment.id,
                from_states=[S.IN_PROGRESS.value],
                to_state=S.IN_PROGRESS.value,
                step=Step.SWITCHED.value,
            )
            if not switched:
                raise RolloutAborted(S.CANCELLED, "cancelled", "cancelled by request")
            before = (await repo.get_endpoint(s, endpoint.endpoint_id)).serving_deployment_id
            await repo.set_serving(s, endpoint.endpoint_id, deployment.id)
            await repo.add_event(
                s,
                deployment.id,
                Step.SWITCHED.value,
                f"traffic switched from {before or 'nothing'} to this deployment",
            )
        await self.publish()
        return await self._old_replicas(deployment)

    async def _drain(
        self, deployment: Deployment, old: list[Replica], step: Step = Step.DRAINING
    ) -> None:
        """Take replicas out of rotation, wait for their in-flight requests, stop them."""
        if not old:
            # Nothing to stop, but gateways in other processes must serve the new table before
            # the deployment counts as complete.
            await self.sink.wait_drained([], self.config.drain_timeout)
            return
        await self._event(
            deployment.id,
            step,
            f"draining {len(old)} old replica(s); in-flight requests finish",
        )
        for replica in old:
            await self.replicas.set_state(replica, ReplicaState.DRAINING)
        await self.publish()
        drained = await self.sink.wait_drained([r.id for r in old], self.config.drain_timeout)
        if not drained:
            log.warning("deployment %s: drain timeout; stopping old replicas anyway", deployment.id)
        await self.replicas.stop(old)

    async def _complete(self, deployment: Deployment) -> None:
        async with self.db.session() as s:
            await repo.compare_and_set_state(
                s,
                deployment.id,
                from_states=[S.IN_PROGRESS.value],
                to_state=S.COMPLETE.value,
                step=Step.DONE.value,
            )
            await repo.add_event(
                s, deployment.id, Step.DONE.value, "complete: this deployment serves"
            )

    async def _abort(self, deployment: Deployment, exc: RolloutAborted) -> None:
        log.warning("deployment %s %s: %s", deployment.id, exc.state.value, exc.message)
        async with self.db.session() as s:
            mine = await repo.list_replicas(s, deployment_id=deployment.id)
        await self.replicas.stop(mine)
        async with self.db.session() as s:
            await repo.compare_and_set_state(
                s,
                deployment.id,
                from_states=[S.NOT_STARTED.value, S.IN_PROGRESS.value],
                to_state=exc.state.value,
                error_code=exc.code,
                error_message=f"{exc.message}; the previous version keeps serving",
            )
            await repo.add_event(s, deployment.id, exc.state.value, exc.message)
        # A rolling rollout may have replaced some old replicas: the next pass heals them back.
        await self.publish()
        self.wakeup.set()

    # -- recovery after a crash -------------------------------------------------------------

    async def recover(self, alive: list[ReplicaHandle]) -> None:
        """Diff the store against the replicas that really run, then finish or undo rollouts."""
        live = {h.replica_id: h for h in alive}
        async with self.db.session() as s:
            stored = await repo.list_replicas(s)
            interrupted = await repo.list_deployments(s, states=[S.IN_PROGRESS.value])
            for replica in stored:
                if replica.id in live:
                    self.replicas.handles[replica.id] = live[replica.id]
                else:  # listed but not alive: forget it
                    await repo.forget_replica(s, replica.id)
        stored_ids = {r.id for r in stored}
        # Alive but unknown: stop it.
        await self.replicas.stop_unrecorded([h for i, h in live.items() if i not in stored_ids])
        for deployment in interrupted:
            await self._recover_deployment(deployment)
        await self.publish()

    async def _recover_deployment(self, deployment: Deployment) -> None:
        async with self.db.session() as s:
            endpoint = await repo.get_endpoint(s, deployment.endpoint_id)
            replicas = await repo.list_replicas(s, endpoint_id=deployment.endpoint_id)
        if deployment.step in SWITCHED_STEPS or endpoint.serving_deployment_id == deployment.id:
            # Traffic had switched: finish the drain of the old replicas and complete.
            await self.replicas.stop([r for r in replicas if r.deployment_id != deployment.id])
            await self._complete(deployment)
            return
        # Before the switch: drop its replicas; the reconcile pass runs it again from the start.
        await self.replicas.stop([r for r in replicas if r.deployment_id == deployment.id])
        await self._event(deployment.id, Step.STARTING, "resumed after a server restart")
