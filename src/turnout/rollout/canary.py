"""Canary rollouts (DESIGN §8): weighted steps of traffic, each held while its gates judge the
new version against the serving one; a failing gate rolls back (or pauses) by itself.

1. The whole new set starts next to the serving one (ready and warmed up, no traffic yet).
2. Golden prompts go to every new replica before any traffic: a mismatch fails the rollout
   before any user saw the new version.
3. For each step: the new version's share is stored (the gateways split by it), golden prompts
   run again on one new replica, and the step is held for ``hold_seconds`` while gates are
   judged every second over the window since the step began. Until the new version has
   answered ``min_requests`` the step waits (verdict ``pending``).
4. Then the switch (100 %) and the drain of the old replicas, as a surge.

Callers steer it through the stored step: ``paused`` holds, ``canary`` (resume) goes on with a
fresh window, ``promoting`` skips the remaining steps.
"""

from __future__ import annotations

import asyncio
import logging
import time

from turnout.placement.base import ReplicaHandle
from turnout.policy import OnGateFailure, RolloutPolicy, Verdict
from turnout.rollout.gates import failing, judge
from turnout.rollout.runner import Rollout, RolloutAborted
from turnout.routing.stats import VersionStats
from turnout.states import DeploymentState, Event, IllegalTransition, Step
from turnout.store import deployments
from turnout.store.deployments import LostRace
from turnout.store.records import Deployment, Endpoint, ModelVersion

log = logging.getLogger(__name__)

#: Seconds between two judgements of a held step.
JUDGE_INTERVAL = 1.0


class CanaryRollout(Rollout):
    async def roll(self, deployment: Deployment, endpoint: Endpoint, version: ModelVersion) -> None:
        policy = deployment.policy
        serving = endpoint.serving_deployment_id
        if serving is None or not policy.steps:
            why = "nothing serves yet" if serving is None else "the policy has no steps"
            await self._step(Step.STARTING, f"canary: {why}; rolling out as a surge")
            await super().roll(deployment, endpoint, version)
            return
        room = await self._room(endpoint)
        if not room.surge:
            raise RolloutAborted(
                DeploymentState.FAILED,
                "no_capacity",
                f"a canary needs its whole new set next to the serving one: {room.why}",
            )
        handles = await self._start_set(deployment, endpoint, version, "canary")
        for handle in handles:
            await self._golden(policy, endpoint, handle, "before any traffic")
        total = len(policy.steps)
        for number, step in enumerate(policy.steps, 1):
            await self._set_traffic(
                step.traffic_percent,
                f"step {number}/{total}: {step.traffic_percent}% of traffic to version "
                f"{deployment.version_number}, held {step.hold_seconds:g} s",
            )
            await self._golden(policy, endpoint, handles[0], f"at step {number}")
            if await self._hold(policy, serving, step.hold_seconds, endpoint, handles[0]):
                break  # promoted: skip the remaining steps
        await self._switch(endpoint)
        await self._set_traffic(100)
        await self._drain(await self._old_replicas(endpoint.endpoint_id))

    async def _set_traffic(self, percent: int, message: str | None = None) -> None:
        async with self.db.session() as s:
            await deployments.set_traffic(s, self.id, percent)
        if message is not None:
            await self._step(Step.CANARY, message)
        await self.ctx.feed.publish()

    async def _golden(
        self, policy: RolloutPolicy, endpoint: Endpoint, handle: ReplicaHandle, when: str
    ) -> None:
        prompts = policy.gates.golden_prompts
        if not prompts:
            return
        problem = await self.replicas.golden(handle, endpoint.endpoint_id, prompts)
        if problem is not None:
            await self._gate_failed(policy, f"{problem} ({when})", pausable=False)

    async def _hold(
        self,
        policy: RolloutPolicy,
        serving: str,
        hold_seconds: float,
        endpoint: Endpoint,
        handle: ReplicaHandle,
    ) -> bool:
        """Hold the step while judging its gates; True when a caller promoted."""
        ids = [self.id, serving]
        baseline = await self.ctx.feed.stats(ids)
        started = time.monotonic()
        await self._steered_step(Step.JUDGING, f"judging for {hold_seconds:g} s")
        waiting_said = False
        while True:
            deployment = await self._current()
            if deployment.step is Step.PROMOTING:
                return True
            if deployment.step is Step.PAUSED:
                await asyncio.sleep(JUDGE_INTERVAL)
                continue
            if deployment.step is Step.CANARY:  # resumed after a pause: a fresh window
                baseline = await self.ctx.feed.stats(ids)
                started = time.monotonic()
                await self._steered_step(Step.JUDGING, f"resumed; judging for {hold_seconds:g} s")
                continue
            window = _window(await self.ctx.feed.stats(ids), baseline)
            readings = judge(policy.gates, window[self.id], window[serving])
            async with self.db.session() as s:
                await deployments.set_gates(s, self.id, readings)
            failed = failing(readings)
            if failed:
                detail = "; ".join(r.detail for r in failed)
                if await self._gate_failed(policy, f"gate failed: {detail}", pausable=True):
                    continue  # paused: wait for a caller
            pending = [r for r in readings if r.verdict is Verdict.PENDING]
            if time.monotonic() - started >= hold_seconds:
                if not pending:
                    return False
                if not waiting_said:
                    waiting_said = True
                    await self._steered_step(
                        Step.JUDGING,
                        f"hold over; waiting to judge: {'; '.join(r.detail for r in pending)}",
                    )
            await asyncio.sleep(JUDGE_INTERVAL)

    async def _steered_step(self, step: Step, message: str) -> None:
        """Move to ``step`` unless a caller steered the canary meanwhile (paused or promoted
        it): then the loop reads and follows that instead. A cancel still ends the rollout."""
        try:
            async with self.db.session() as s:
                await deployments.apply(s, self.id, Event.PROGRESS, step=step, message=message)
        except (IllegalTransition, LostRace) as refused:
            await self._check_not_cancelled()
            log.info("deployment %s: %s (steered meanwhile)", self.id, refused)

    async def _gate_failed(self, policy: RolloutPolicy, message: str, *, pausable: bool) -> bool:
        """Roll back (raises), or pause at this step (True)."""
        if pausable and policy.on_gate_failure is OnGateFailure.PAUSE:
            await self._steered_step(Step.PAUSED, f"paused: {message}")
            return True
        raise RolloutAborted(DeploymentState.FAILED, "gate_failed", message)

    async def _current(self) -> Deployment:
        await self._check_not_cancelled()
        async with self.db.session() as s:
            return await deployments.get_deployment(s, self.id)


def _window(now: dict[str, VersionStats], then: dict[str, VersionStats]) -> dict[str, VersionStats]:
    return {d: now[d].minus(then.get(d, VersionStats())) for d in now}
