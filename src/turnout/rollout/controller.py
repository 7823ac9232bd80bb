"""The rollout controller: runs deployments (DESIGN §3) and keeps the routing table true.

``reconcile()`` is one pass: read what the store wants, observe the placement, decide, persist
the intent, act, record the result. Each endpoint's deployments run one at a time, first in
first out, each in its own task (a rollout waits minutes for weights to load). Every step is
written to the store before it acts, so :meth:`recover` can finish or undo it after a crash.
"""

from __future__ import annotations

import asyncio
import logging
from collections.abc import Coroutine
from dataclasses import dataclass
from pathlib import Path
from types import MappingProxyType

import httpx
from sqlalchemy.ext.asyncio import AsyncSession

from turnout.gateway.keys import StaticInferenceKeys
from turnout.gateway.routing import EndpointRoute, ReplicaRoute, Router, RoutingTable
from turnout.placement.base import Placement, ReplicaHandle, ReplicaSpec, ReplicaState
from turnout.placement.engines import engine_command
from turnout.rollout.states import (
    ACTIVE,
    SWITCHED_STEPS,
    DeploymentState,
    Step,
)
from turnout.store import endpoints as repo
from turnout.store import tenants, versions
from turnout.store.db import Database
from turnout.store.records import Deployment, Endpoint, KeyKind, Replica

log = logging.getLogger(__name__)

S = DeploymentState


@dataclass(frozen=True, slots=True)
class RolloutConfig:
    ready_timeout: float = 600.0
    drain_timeout: float = 60.0
    stop_timeout: float = 15.0
    probe_interval: float = 0.2
    device: str = "cpu"


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
        router: Router,
        keys: StaticInferenceKeys,
        config: RolloutConfig,
    ) -> None:
        self.db = db
        self.placement = placement
        self.router = router
        self.keys = keys
        self.config = config
        self.wakeup = asyncio.Event()
        self._tasks: dict[str, asyncio.Task[None]] = {}  # endpoint id -> its running rollout
        self._handles: dict[str, ReplicaHandle] = {}  # replica id -> handle
        self._http = httpx.AsyncClient(timeout=httpx.Timeout(60.0, connect=5.0))

    def notify(self) -> None:
        self.wakeup.set()

    # -- the control loop's one pass ------------------------------------------------------

    async def reconcile(self) -> None:
        # 1. Read desired state.
        async with self.db.session() as s:
            active = await repo.list_deployments(s, states=[a.value for a in ACTIVE])
            self.keys.replace(await tenants.active_key_hashes(s, KeyKind.INFERENCE))
        # 2. Decide: the oldest active deployment of each idle endpoint runs next (FIFO).
        for deployment in sorted(active, key=lambda d: d.seq):
            if deployment.endpoint_id not in self._tasks:
                self._launch(self._rollout(deployment), deployment.endpoint_id, deployment.id)
        await self._heal_serving()
        # 3. Observe serving replicas and publish what is ready.
        await self._observe_serving()
        await self.publish()

    def _launch(self, work: Coroutine[None, None, None], endpoint_id: str, what: str) -> None:
        task = asyncio.create_task(work, name=f"{what} on {endpoint_id}")
        self._tasks[endpoint_id] = task

        def finished(_: asyncio.Task[None], endpoint_id: str = endpoint_id) -> None:
            self._tasks.pop(endpoint_id, None)
            self.wakeup.set()  # the next queued deployment of this endpoint may start

        task.add_done_callback(finished)

    async def idle(self) -> None:
        """Run passes until no rollout is running (tests use this; production uses the loop)."""
        await self.reconcile()
        while self._tasks:
            await asyncio.gather(*list(self._tasks.values()), return_exceptions=True)
            await self.reconcile()

    async def close(self) -> None:
        for task in list(self._tasks.values()):
            task.cancel()
        await asyncio.gather(*list(self._tasks.values()), return_exceptions=True)
        await self._http.aclose()

    async def _heal_serving(self) -> None:
        """Replace serving replicas that are gone (crashed for good, or lost in a restart)."""
        async with self.db.session() as s:
            endpoints = await repo.list_endpoints(s)
            replicas = await repo.list_replicas(s)
        for endpoint in endpoints:
            serving = endpoint.serving_deployment_id
            if serving is None or endpoint.endpoint_id in self._tasks:
                continue
            mine = [r for r in replicas if r.deployment_id == serving]
            gone = [r for r in mine if r.state in (ReplicaState.FAILED, ReplicaState.STOPPED)]
            missing = endpoint.replicas - (len(mine) - len(gone))
            if missing > 0:
                self._launch(
                    self._heal(endpoint, serving, gone, missing), endpoint.endpoint_id, "heal"
                )

    async def _heal(
        self, endpoint: Endpoint, deployment_id: str, gone: list[Replica], missing: int
    ) -> None:
        await self._stop_replicas(gone)
        async with self.db.session() as s:
            deployment = await repo.get_deployment(s, deployment_id)
            taken = {r.id for r in await repo.list_replicas(s, deployment_id=deployment_id)}
        log.info("endpoint %s: starting %d replacement replica(s)", endpoint.endpoint_id, missing)
        handles = await self._start_replicas(deployment, endpoint, count=missing, taken=taken)
        try:
            await self._wait_ready(None, handles)
        except RolloutAborted as exc:
            log.warning("endpoint %s: replacement failed: %s", endpoint.endpoint_id, exc.message)
            for handle in handles:
                await self._set_replica_state(handle.replica_id, ReplicaState.FAILED, exc.message)
        await self.publish()

    # -- routing table ----------------------------------------------------------------------

    async def publish(self) -> None:
        """Build the routing table from the store and swap it in if it changed."""
        routes: dict[str, EndpointRoute] = {}
        async with self.db.session() as s:
            for endpoint in await repo.list_endpoints(s):
                routes[endpoint.endpoint_id] = await self._route(s, endpoint)
        current = self.router.current()
        if dict(current.endpoints) != routes:
            table = RoutingTable(MappingProxyType(routes), current.generation + 1)
            self.router.swap(table)
            log.info("published %s", table)

    async def _route(self, s: AsyncSession, endpoint: Endpoint) -> EndpointRoute:
        serving = endpoint.serving_deployment_id
        deployment = await repo.find_deployment(s, serving) if serving else None
        if deployment is None:
            return EndpointRoute(endpoint.endpoint_id, endpoint.org_name, None, None, None, ())
        version = await versions.get_version_by_pk(s, deployment.version_id)
        replicas = tuple(
            ReplicaRoute(r.id, r.address)
            for r in await repo.list_replicas(s, deployment_id=deployment.id)
            if r.state == ReplicaState.READY and r.address
        )
        return EndpointRoute(
            endpoint.endpoint_id,
            endpoint.org_name,
            deployment.id,
            deployment.version_number,
            version.fingerprint if version else None,
            replicas,
        )

    async def _observe_serving(self) -> None:
        """Record what the placement says about serving replicas (crashed, restarted, failed)."""
        async with self.db.session() as s:
            serving = {
                e.serving_deployment_id
                for e in await repo.list_endpoints(s)
                if e.serving_deployment_id
            }
            replicas = [r for r in await repo.list_replicas(s) if r.deployment_id in serving]
        for replica in replicas:
            handle = self._handles.get(replica.id)
            if handle is None:
                continue
            status = await self.placement.probe(handle)
            if status.state.value != replica.state:
                async with self.db.session() as s:
                    await repo.upsert_replica(
                        s,
                        replica.id,
                        endpoint_id=replica.endpoint_id,
                        deployment_id=replica.deployment_id,
                        state=status.state.value,
                        error=status.error,
                    )

    # -- one rollout --------------------------------------------------------------------------

    async def _rollout(self, deployment: Deployment) -> None:
        started: list[ReplicaHandle] = []
        try:
            endpoint = await self._begin(deployment)
            started = await self._start_replicas(deployment, endpoint)
            await self._wait_ready(deployment, started)
            await self._warm_up(deployment, started, endpoint)
            old = await self._switch(deployment, endpoint)
            await self._drain(deployment, old)
            await self._complete(deployment)
        except RolloutAborted as exc:
            await self._abort(deployment, started, exc)
        except Exception as exc:  # a bug must not leave the deployment running forever
            log.exception("rollout %s crashed", deployment.id)
            await self._abort(
                deployment,
                started,
                RolloutAborted(S.FAILED, "internal_error", f"internal error: {exc}"),
            )

    async def _event(self, deployment_id: str, step: Step, message: str, **fields: str) -> None:
        async with self.db.session() as s:
            await repo.update_deployment(s, deployment_id, step=step.value, **fields)
            await repo.add_event(s, deployment_id, step.value, message)
        log.info("deployment %s: %s: %s", deployment_id, step.value, message)

    async def _current_state(self, deployment_id: str) -> DeploymentState:
        async with self.db.session() as s:
            return DeploymentState((await repo.get_deployment(s, deployment_id)).state)

    async def _check_not_cancelled(self, deployment_id: str) -> None:
        if await self._current_state(deployment_id) is S.CANCELLED:
            raise RolloutAborted(S.CANCELLED, "cancelled", "cancelled by request")

    async def _begin(self, deployment: Deployment) -> Endpoint:
        async with self.db.session() as s:
            endpoint = await repo.get_endpoint(s, deployment.endpoint_id)
            moved = await repo.compare_and_set_state(
                s,
                deployment.id,
                from_states=[S.NOT_STARTED.value, S.IN_PROGRESS.value],
                to_state=S.IN_PROGRESS.value,
                step=Step.STARTING.value,
            )
        if not moved:
            raise RolloutAborted(S.CANCELLED, "cancelled", "cancelled before it started")
        return endpoint

    async def _start_replicas(
        self,
        deployment: Deployment,
        endpoint: Endpoint,
        *,
        count: int | None = None,
        taken: set[str] | frozenset[str] = frozenset(),
    ) -> list[ReplicaHandle]:
        async with self.db.session() as s:
            version = await versions.get_version_by_pk(s, deployment.version_id)
        if version is None or not version.weight_path:
            raise RolloutAborted(
                S.FAILED, "version_missing", f"{deployment.model_name} has no weights"
            )
        wanted = endpoint.replicas if count is None else count
        if count is None:
            await self._event(
                deployment.id,
                Step.STARTING,
                f"starting {wanted} replica(s) of {deployment.model_name} next to the serving ones",
            )
        handles: list[ReplicaHandle] = []
        index = 0
        while len(handles) < wanted:
            replica_id = f"{endpoint.endpoint_id}-{deployment.id[:8]}-{index}"
            index += 1
            if replica_id in taken:
                continue
            spec = ReplicaSpec(
                replica_id=replica_id,
                endpoint_id=endpoint.endpoint_id,
                deployment_id=deployment.id,
                model_dir=Path(version.weight_path),
                served_name=endpoint.endpoint_id,
                engine=engine_command(endpoint.engine),
                device=self.config.device,
            )
            # Persist the intent first: after a crash, recover() finds and stops this replica.
            await self._save_replica(spec, ReplicaState.STARTING)
            handle = await self.placement.start(spec)
            self._handles[replica_id] = handle
            handles.append(handle)
            await self._save_replica(spec, ReplicaState.STARTING, handle)
        return handles

    async def _save_replica(
        self,
        spec: ReplicaSpec,
        state: ReplicaState,
        handle: ReplicaHandle | None = None,
        error: str | None = None,
    ) -> None:
        async with self.db.session() as s:
            await repo.upsert_replica(
                s,
                spec.replica_id,
                endpoint_id=spec.endpoint_id,
                deployment_id=spec.deployment_id,
                state=state.value,
                address=handle.address if handle else None,
                pid=handle.pid if handle else None,
                error=error,
            )

    async def _set_replica_state(
        self, replica_id: str, state: ReplicaState, error: str | None = None
    ) -> None:
        async with self.db.session() as s:
            for r in await repo.list_replicas(s):
                if r.id == replica_id:
                    await repo.upsert_replica(
                        s,
                        r.id,
                        endpoint_id=r.endpoint_id,
                        deployment_id=r.deployment_id,
                        state=state.value,
                        error=error,
                    )

    async def _wait_ready(
        self, deployment: Deployment | None, handles: list[ReplicaHandle]
    ) -> None:
        loop = asyncio.get_running_loop()
        deadline = loop.time() + self.config.ready_timeout
        pending = {h.replica_id: h for h in handles}
        while pending:
            if deployment is not None:
                await self._check_not_cancelled(deployment.id)
            for replica_id, handle in list(pending.items()):
                status = await self.placement.probe(handle)
                if status.state is ReplicaState.READY:
                    del pending[replica_id]
                    await self._set_replica_state(replica_id, ReplicaState.READY)
                elif status.state in (ReplicaState.FAILED, ReplicaState.STOPPED):
                    raise RolloutAborted(
                        S.FAILED,
                        "replica_failed",
                        f"replica {replica_id} failed to start: {status.error or status.state}",
                    )
            if pending and loop.time() > deadline:
                raise RolloutAborted(
                    S.FAILED,
                    "readiness_timeout",
                    f"replica(s) {', '.join(pending)} not ready within "
                    f"{self.config.ready_timeout:g}s (TURNOUT_READY_TIMEOUT)",
                )
            if pending:
                await asyncio.sleep(self.config.probe_interval)

    async def _warm_up(
        self, deployment: Deployment, handles: list[ReplicaHandle], endpoint: Endpoint
    ) -> None:
        await self._event(
            deployment.id, Step.WARMING, "readiness passed; one warm-up generation per replica"
        )
        for handle in handles:
            try:
                resp = await self._http.post(
                    f"{handle.address}/v1/completions",
                    json={"model": endpoint.endpoint_id, "prompt": "Hello", "max_tokens": 1},
                )
                resp.raise_for_status()
                usage = resp.json().get("usage") or {}
            except (httpx.HTTPError, ValueError) as exc:
                raise RolloutAborted(
                    S.FAILED,
                    "warmup_failed",
                    f"warm-up generation on {handle.replica_id} failed: {exc}",
                ) from exc
            if int(usage.get("completion_tokens", 0)) < 1:
                raise RolloutAborted(
                    S.FAILED,
                    "warmup_failed",
                    f"warm-up generation on {handle.replica_id} returned no tokens",
                )

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
            fresh = await repo.get_endpoint(s, endpoint.endpoint_id)
            old = [
                r
                for r in await repo.list_replicas(s, endpoint_id=endpoint.endpoint_id)
                if r.deployment_id != deployment.id
            ]
            await repo.set_serving(s, endpoint.endpoint_id, deployment.id)
            await repo.add_event(
                s,
                deployment.id,
                Step.SWITCHED.value,
                f"traffic switched from {fresh.serving_deployment_id or 'nothing'} "
                "to this deployment",
            )
        await self.publish()
        return old

    async def _drain(self, deployment: Deployment, old: list[Replica]) -> None:
        if not old:
            return
        await self._event(
            deployment.id,
            Step.DRAINING,
            f"draining {len(old)} old replica(s); in-flight requests finish",
        )
        for replica in old:
            await self._set_replica_state(replica.id, ReplicaState.DRAINING)
        drained = await self.router.wait_drained([r.id for r in old], self.config.drain_timeout)
        if not drained:
            log.warning("deployment %s: drain timeout; stopping old replicas anyway", deployment.id)
        await self._stop_replicas(old)

    async def _stop_replicas(self, replicas: list[Replica]) -> None:
        async def stop(replica: Replica) -> None:
            handle = self._handles.pop(replica.id, None)
            if handle is not None:
                await self.placement.stop(handle, drain_timeout=self.config.stop_timeout)
            async with self.db.session() as s:
                await repo.forget_replica(s, replica.id)

        await asyncio.gather(*(stop(r) for r in replicas))

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

    async def _abort(
        self, deployment: Deployment, started: list[ReplicaHandle], exc: RolloutAborted
    ) -> None:
        log.warning("deployment %s %s: %s", deployment.id, exc.state.value, exc.message)
        async with self.db.session() as s:
            mine = await repo.list_replicas(s, deployment_id=deployment.id)
        await self._stop_replicas(mine)
        for handle in started:  # started but not yet recorded with an address
            if handle.replica_id in self._handles:
                await self.placement.stop(self._handles.pop(handle.replica_id), drain_timeout=0)
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
        await self.publish()

    # -- recovery after a crash -------------------------------------------------------------

    async def recover(self, alive: list[ReplicaHandle]) -> None:
        """Diff the store against the replicas that really run, then finish or undo rollouts."""
        live = {h.replica_id: h for h in alive}
        async with self.db.session() as s:
            stored = await repo.list_replicas(s)
            interrupted = await repo.list_deployments(s, states=[S.IN_PROGRESS.value])
        stored_ids = {r.id for r in stored}
        for replica in stored:
            if replica.id in live:
                self._handles[replica.id] = live[replica.id]
            else:
                async with self.db.session() as s:  # listed but not alive: forget it
                    await repo.forget_replica(s, replica.id)
        for replica_id, handle in live.items():
            if replica_id not in stored_ids:  # alive but unknown: stop it
                await self.placement.stop(handle, drain_timeout=0)
        for deployment in interrupted:
            await self._recover_deployment(deployment)
        await self.publish()

    async def _recover_deployment(self, deployment: Deployment) -> None:
        async with self.db.session() as s:
            endpoint = await repo.get_endpoint(s, deployment.endpoint_id)
            replicas = await repo.list_replicas(s, endpoint_id=deployment.endpoint_id)
        if deployment.step in SWITCHED_STEPS or endpoint.serving_deployment_id == deployment.id:
            # Traffic had switched: finish the drain of the old replicas and complete.
            await self._stop_replicas([r for r in replicas if r.deployment_id != deployment.id])
            await self._complete(deployment)
            return
        # Before the switch: drop its replicas; the reconcile pass runs it again from the start.
        await self._stop_replicas([r for r in replicas if r.deployment_id == deployment.id])
        await self._event(deployment.id, Step.STARTING, "resumed after a server restart")
