"""In-place rollouts (DESIGN §8): the new weights are loaded inside the running replicas, one at
a time, so a rollout needs no spare GPUs.

For each serving replica: out of routing, drained, its engine reloads the new version's
weights (its reload route: the built-in engine and SGLang have one), golden prompts checked,
then it joins the new deployment and routing again. While an endpoint's only replica swaps,
gateways hold new requests for up to TURNOUT_HOLD_SECONDS instead of answering 503. A failure
loads the old weights back into the replicas already swapped, so the old version serves as
before. Engines without a reload route fall back to rolling, and the event says so.
"""

from __future__ import annotations

import logging

from turnout.placement.base import ReloadFailed
from turnout.rollout.runner import Rollout, RolloutAborted
from turnout.states import DeploymentState, ReplicaState, Step
from turnout.store import deployments, replicas, versions
from turnout.store.records import Deployment, Endpoint, ModelVersion, Replica

log = logging.getLogger(__name__)


class InPlaceRollout(Rollout):
    async def roll(self, deployment: Deployment, endpoint: Endpoint, version: ModelVersion) -> None:
        engine = self.config.engines.command(endpoint.engine)
        old = [
            r
            for r in await self._old_replicas(endpoint.endpoint_id)
            if r.state is ReplicaState.READY
        ]
        if engine.reload_path is None or not old:
            why = (
                f"engine {endpoint.engine!r} cannot reload weights in place"
                if engine.reload_path is None
                else "no replica serves to reload"
            )
            await self._step(Step.STARTING, f"in place: {why}; rolling out another way instead")
            await super().roll(deployment, endpoint, version)
            return
        await self._step(
            Step.ROLLING,
            f"in place: loading {deployment.model_name} into {len(old)} serving replica(s), "
            "one at a time",
        )
        swapped: list[Replica] = []
        try:
            for row in old:
                await self._check_not_cancelled()
                await self._swap(row, deployment, endpoint, version, swapped)
        except BaseException:
            await self._undo(swapped, endpoint)
            raise
        await self._switch(endpoint)

    async def _swap(
        self,
        row: Replica,
        deployment: Deployment,
        endpoint: Endpoint,
        version: ModelVersion,
        swapped: list[Replica],
    ) -> None:
        """Reload one replica; it is in ``swapped`` as soon as it holds the new weights."""
        await self.replicas.mark([row.id], ReplicaState.DRAINING)
        await self.ctx.feed.publish()
        await self.ctx.feed.wait_drained([row.id], self.config.drain_timeout)
        await self._step(Step.ROLLING, f"in place: reloading {row.id}")
        spec = self.replicas.spec(deployment, endpoint, version)
        handle = self.replicas.handles.get(row.id)
        try:
            if handle is None:
                raise ReloadFailed(f"replica {row.id} is not running here")
            handle = await self.replicas.placement.reload(handle, spec)
        except ReloadFailed as exc:
            await self.replicas.mark([row.id], ReplicaState.READY)  # still the old weights
            raise RolloutAborted(DeploymentState.FAILED, "reload_failed", str(exc)) from exc
        self.replicas.handles[row.id] = handle
        swapped.append(row)
        prompts = deployment.policy.gates.golden_prompts
        problem = await self.replicas.golden(handle, endpoint.endpoint_id, prompts)
        if problem is not None:
            raise RolloutAborted(DeploymentState.FAILED, "gate_failed", problem)
        async with self.db.session() as s:
            await replicas.reassign(s, row.id, self.id)
        await self.replicas.mark([row.id], ReplicaState.READY)
        await self.ctx.feed.publish()

    async def _undo(self, swapped: list[Replica], endpoint: Endpoint) -> None:
        """Load the old weights back into replicas already swapped; they serve the old
        version again (a replica that cannot is left to the controller, which replaces it)."""
        if not swapped:
            return
        async with self.db.session() as s:
            old = await deployments.get_deployment(s, swapped[0].deployment_id)
            version = await versions.get_version_by_pk(s, old.version_id)
        if version is None:
            return
        spec = self.replicas.spec(old, endpoint, version)
        for row in swapped:
            handle = self.replicas.handles.get(row.id)
            try:
                if handle is None:
                    raise ReloadFailed(f"replica {row.id} is not running here")
                self.replicas.handles[row.id] = await self.replicas.placement.reload(handle, spec)
            except ReloadFailed as exc:
                log.error("replica %s: the old weights did not load back: %s", row.id, exc)
                await self.replicas.mark([row.id], ReplicaState.FAILED, str(exc))
                continue
            async with self.db.session() as s:
                await replicas.reassign(s, row.id, old.id)
            await self.replicas.mark([row.id], ReplicaState.READY)
        await self.ctx.feed.publish()
