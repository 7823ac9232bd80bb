"""Progressive rollouts pass by pass: canary steps judged by gates over what the gateways
counted (scripted here), automatic rollback, pause/resume/promote, in-place swaps and
endpoints that follow an alias. Real SQLite store, fake placement (tests/rollout/harness.py)."""

from __future__ import annotations

import asyncio
from collections.abc import Collection

import pytest

from tests.rollout.harness import FakePlacement, make, run_until_idle, state, submit
from turnout.gateway.routing import Router
from turnout.policy import (
    CanaryStep,
    Gates,
    GoldenPrompt,
    OnGateFailure,
    RolloutPolicy,
    Strategy,
)
from turnout.rollout import canary
from turnout.routing.feed import InProcessFeed
from turnout.routing.stats import VersionStats
from turnout.states import Event, Step
from turnout.store import deployments, endpoints, replicas, tenants, versions
from turnout.store.db import Database

pytestmark = pytest.mark.anyio


class ScriptedFeed(InProcessFeed):
    """The in-process feed, with what the gateway "counted" scripted per deployment: each call
    of stats() adds ``per_call[deployment]`` (requests, errors) to that deployment's counters."""

    def __init__(self, db: Database, router: Router) -> None:
        super().__init__(db, router)
        self.per_call: dict[str, tuple[int, int]] = {}
        self.counted: dict[str, VersionStats] = {}

    async def stats(self, deployment_ids: Collection[str]) -> dict[str, VersionStats]:
        out = {}
        for d in deployment_ids:
            requests, errors = self.per_call.get(d, (10, 0))
            now = self.counted.setdefault(d, VersionStats())
            now.requests += requests
            now.errors += errors
            for _ in range(requests):
                now.ttft.add(0.05)
            out[d] = now.copy()
        return out


@pytest.fixture(autouse=True)
def fast_judging(monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.setattr(canary, "JUDGE_INTERVAL", 0.01)


def canary_policy(**gates: object) -> RolloutPolicy:
    return RolloutPolicy(
        strategy=Strategy.CANARY,
        steps=(CanaryStep(10, 0), CanaryStep(50, 0)),
        gates=Gates(min_requests=5, max_error_rate=0.05, **gates),  # type: ignore[arg-type]
    )


async def serving_v1(db: Database) -> tuple[FakePlacement, Router, ScriptedFeed]:
    placement, router = FakePlacement(), Router()
    feed = ScriptedFeed(db, router)
    controller = make(db, placement, router, feed)
    await submit(db, 1, "d1")
    await run_until_idle(controller)
    assert await state(db, "d1") == "complete"
    await controller.close()
    return placement, router, feed


async def events(db: Database, deployment_id: str) -> list[tuple[str, str]]:
    async with db.session() as s:
        return [(e.step, e.message) for e in await deployments.list_events(s, deployment_id)]


async def test_a_good_canary_walks_its_steps_then_serves(db: Database) -> None:
    placement, router, feed = await serving_v1(db)
    controller = make(db, placement, router, feed)
    await submit(db, 2, "d2", canary_policy())
    await run_until_idle(controller)
    assert await state(db, "d2") == "complete"
    history = await events(db, "d2")
    steps = [m for step, m in history if step == "canary"]
    assert [m.split(":")[0] for m in steps] == ["step 1/2", "step 2/2"]
    assert ("judging" in {step for step, _ in history}) and history[-1][0] == "done"
    async with db.session() as s:
        done = await deployments.get_deployment(s, "d2")
    assert done.traffic_percent == 100
    assert {g.name: g.verdict.value for g in done.gates} == {
        "min_requests": "pass",
        "max_error_rate": "pass",
    }
    assert router.current().endpoints["acme-tiny"].deployment_id == "d2"
    await controller.close()


async def test_a_failing_gate_rolls_back_at_once(db: Database) -> None:
    placement, router, feed = await serving_v1(db)
    controller = make(db, placement, router, feed)
    feed.per_call["d2"] = (10, 3)  # 30 % errors
    await submit(db, 2, "d2", canary_policy())
    await run_until_idle(controller)
    async with db.session() as s:
        failed = await deployments.get_deployment(s, "d2")
        left = await replicas.list_replicas(s, deployment_id="d2")
    assert failed.state == "failed" and failed.error_code == "gate_failed"
    assert "error rate 0.30 > 0.05 over" in (failed.error_message or "")
    assert left == [] and not [r for r in placement.running if r.startswith("acme-tiny-d2-")]
    route = router.current().endpoints["acme-tiny"]
    assert route.deployment_id == "d1" and route.canary is None
    await controller.close()


async def test_a_golden_prompt_failure_means_no_traffic_ever(db: Database) -> None:
    placement, router, feed = await serving_v1(db)
    controller = make(db, placement, router, feed)
    placement.answer = "five"  # the new version answers wrong
    policy = canary_policy(
        golden_prompts=(GoldenPrompt(({"role": "user", "content": "2+2?"},), r"\b4\b"),)
    )
    await submit(db, 2, "d2", policy)
    await run_until_idle(controller)
    async with db.session() as s:
        failed = await deployments.get_deployment(s, "d2")
    assert failed.error_code == "gate_failed" and "golden prompt 1" in (failed.error_message or "")
    assert "before any traffic" in (failed.error_message or "")
    assert not [m for step, m in await events(db, "d2") if step == "canary"]  # no step began
    assert failed.traffic_percent == 0
    await controller.close()


async def test_pause_holds_resume_goes_on_promote_finishes(db: Database) -> None:
    placement, router, feed = await serving_v1(db)
    controller = make(db, placement, router, feed)
    feed.per_call["d2"] = (0, 0)  # no traffic reaches it: the first step waits to judge
    policy = RolloutPolicy(
        strategy=Strategy.CANARY,
        steps=(CanaryStep(10, 0), CanaryStep(50, 0)),
        gates=Gates(min_requests=5, max_error_rate=0.05),
        on_gate_failure=OnGateFailure.PAUSE,
    )
    await submit(db, 2, "d2", policy)
    await controller.reconcile()

    async def at_step(step: Step) -> None:
        for _ in range(500):
            async with db.session() as s:
                if (await deployments.get_deployment(s, "d2")).step is step:
                    return
            await asyncio.sleep(0.01)
        raise AssertionError(f"never reached {step}")

    await at_step(Step.JUDGING)
    async with db.session() as s:
        await deployments.apply(s, "d2", Event.PROGRESS, step=Step.PAUSED)
    await asyncio.sleep(0.1)
    async with db.session() as s:
        paused = await deployments.get_deployment(s, "d2")
    assert paused.step is Step.PAUSED and paused.traffic_percent == 10  # held at its step
    async with db.session() as s:
        await deployments.apply(s, "d2", Event.PROGRESS, step=Step.CANARY)  # resume
    await at_step(Step.JUDGING)
    async with db.session() as s:
        await deployments.apply(s, "d2", Event.PROGRESS, step=Step.PROMOTING)
    await controller.wait_idle()
    assert await state(db, "d2") == "complete"
    assert not [m for step, m in await events(db, "d2") if m.startswith("step 2/2")]  # skipped
    await controller.close()


async def test_a_failing_gate_can_pause_instead(db: Database) -> None:
    placement, router, feed = await serving_v1(db)
    controller = make(db, placement, router, feed)
    feed.per_call["d2"] = (10, 5)
    policy = RolloutPolicy(
        strategy=Strategy.CANARY,
        steps=(CanaryStep(20, 0),),
        gates=Gates(min_requests=5, max_error_rate=0.05),
        on_gate_failure=OnGateFailure.PAUSE,
    )
    await submit(db, 2, "d2", policy)
    await controller.reconcile()
    for _ in range(500):
        history = await events(db, "d2")
        if any(step == "paused" for step, _ in history):
            break
        await asyncio.sleep(0.01)
    paused = [m for step, m in history if step == "paused"]
    assert paused and "error rate 0.50 > 0.05" in paused[0]
    assert await state(db, "d2") == "in_progress"
    async with db.session() as s:  # a person decides: cancel
        await deployments.apply(s, "d2", Event.CANCEL)
    await controller.wait_idle()
    assert await state(db, "d2") == "cancelled"
    assert router.current().endpoints["acme-tiny"].deployment_id == "d1"
    await controller.close()


async def test_in_place_reloads_each_replica_and_keeps_its_process(db: Database) -> None:
    placement, router, feed = await serving_v1(db)
    controller = make(db, placement, router, feed, max_replicas=2)  # no room to surge
    before = dict(placement.running)
    await submit(db, 2, "d2", RolloutPolicy(strategy=Strategy.IN_PLACE))
    await run_until_idle(controller)
    assert await state(db, "d2") == "complete"
    assert placement.running.keys() == before.keys()  # the same replicas, reloaded
    assert sorted(r for r, _ in placement.reloaded) == sorted(before)
    async with db.session() as s:
        rows = await replicas.list_replicas(s)
    assert {r.deployment_id for r in rows} == {"d2"} and len(rows) == 2
    assert router.current().endpoints["acme-tiny"].deployment_id == "d2"
    await controller.close()


async def test_moving_a_followed_alias_deploys_it(db: Database) -> None:
    placement, router, feed = await serving_v1(db)
    controller = make(db, placement, router, feed)
    async with db.session() as s:
        org = await tenants.get_org(s, "acme")
        await versions.set_aliases(s, org, "tiny-llama", 1, ["production"])
        await endpoints.set_follow(s, "acme-tiny", "production", RolloutPolicy())
    await run_until_idle(controller)
    async with db.session() as s:
        assert len(await deployments.list_deployments(s, endpoint_id="acme-tiny")) == 1
        await versions.set_aliases(s, org, "tiny-llama", 1, [])
        await versions.set_aliases(s, org, "tiny-llama", 2, ["production"])
    await run_until_idle(controller)
    async with db.session() as s:
        newest = (await deployments.list_deployments(s, endpoint_id="acme-tiny"))[0]
    assert newest.alias_used == "production" and newest.version_id == 2
    assert newest.state == "complete"
    await controller.close()
