"""The rollout controller against a real SQLite store and a small fake placement whose
"replicas" are in-process HTTP servers (tests/rollout/harness.py)."""

from __future__ import annotations

from pathlib import Path

import pytest

from tests.rollout.harness import FakePlacement, make, run_until_idle, state, submit
from turnout.gateway.routing import Router
from turnout.placement.base import ReplicaSpec
from turnout.rollout.runner import Rollout
from turnout.states import ReplicaState
from turnout.store import deployments, endpoints, replicas
from turnout.store.db import Database

pytestmark = pytest.mark.anyio


async def test_surge_switch_drain_and_idempotent_reconcile(db: Database) -> None:
    placement, router = FakePlacement(), Router()
    controller = make(db, placement, router)
    await submit(db, 1, "d1")
    await run_until_idle(controller)
    assert await state(db, "d1") == "complete"
    route = router.current().endpoints["acme-tiny"]
    assert route.deployment_id == "d1" and len(route.replicas) == 2
    await submit(db, 2, "d2")
    await run_until_idle(controller)
    assert await state(db, "d2") == "complete"
    assert sorted(placement.stopped) == sorted(
        r for r in placement.started if r.startswith("acme-tiny-d1-")
    )
    generation = router.current().generation
    started = list(placement.started)
    await controller.reconcile()
    await controller.reconcile()
    assert router.current().generation == generation and placement.started == started
    await controller.close()
    await placement.close()


async def test_rolling_under_capacity_replaces_one_at_a_time(db: Database) -> None:
    placement, router = FakePlacement(), Router()
    controller = make(db, placement, router, max_replicas=3)
    await submit(db, 1, "d1")
    await run_until_idle(controller)
    await submit(db, 2, "d2")
    await run_until_idle(controller)
    async with db.session() as s:
        events = [e.step for e in await deployments.list_events(s, "d2")]
    assert "rolling" in events and events[-1] == "done"
    assert len(placement.running) == 2  # never more than the capacity at the end
    await controller.close()
    await placement.close()


async def test_failed_gate_leaves_the_old_deployment_serving(db: Database) -> None:
    placement, router = FakePlacement(), Router()
    controller = make(db, placement, router)
    await submit(db, 1, "d1")
    await run_until_idle(controller)
    placement.fail = True
    await submit(db, 2, "d2")
    await controller.reconcile()
    await controller.wait_idle()
    assert await state(db, "d2") == "failed"
    assert router.current().endpoints["acme-tiny"].deployment_id == "d1"
    assert not [r for r in placement.running if r.startswith("acme-tiny-d2-")]
    await controller.close()
    await placement.close()


async def test_a_new_worker_adopts_live_replicas_forgets_dead_and_stops_unknown(
    db: Database,
) -> None:
    placement, router = FakePlacement(), Router()
    controller = make(db, placement, router)
    await submit(db, 1, "d1")
    await run_until_idle(controller)
    stray = await placement.start(ReplicaSpec("stray", "acme-tiny", "dx", Path("/x"), "acme-tiny"))
    dead = next(iter(placement.running))
    await placement.stop(placement.running[dead][0], drain_timeout=0)
    survivor = next(iter(placement.running.keys() - {"stray"}))
    gateway = Router()
    fresh = make(db, placement, gateway)  # a restarted worker knows nothing in memory
    await fresh.reconcile()
    assert "stray" not in placement.running and stray.replica_id in placement.stopped
    assert survivor in fresh.replicas.handles  # adopted, not restarted
    await run_until_idle(fresh)  # the lost serving replica is replaced
    async with db.session() as s:
        ids = {r.id for r in await replicas.list_replicas(s)}
    assert dead not in ids and survivor in ids and len(ids) == 2
    assert len(gateway.current().endpoints["acme-tiny"].replicas) == 2
    await fresh.close()
    await placement.close()


async def test_every_pass_diffs_stored_against_live(db: Database) -> None:
    placement, router = FakePlacement(), Router()
    controller = make(db, placement, router)
    await submit(db, 1, "d1")
    await run_until_idle(controller)
    # A process nobody recorded appears, and a serving replica's process dies.
    await placement.start(ReplicaSpec("intruder", "acme-tiny", "dx", Path("/x"), "acme-tiny"))
    victim = next(r for r in placement.running if r != "intruder")
    await placement.stop(placement.running[victim][0], drain_timeout=0)
    await controller.reconcile()  # one pass, and the work it launched
    await controller.wait_idle()
    assert "intruder" not in placement.running
    async with db.session() as s:
        rows = await replicas.list_replicas(s)
    assert victim not in {r.id for r in rows}  # recorded gone, then replaced
    assert [r.state for r in rows] == [ReplicaState.READY, ReplicaState.READY]
    routed = {r.replica_id for r in router.current().endpoints["acme-tiny"].replicas}
    assert routed == {r.id for r in rows}
    await controller.close()
    await placement.close()


async def test_a_replacement_that_fails_is_retried_with_backoff(db: Database) -> None:
    placement, router = FakePlacement(), Router()
    controller = make(db, placement, router, heal_backoff=60)
    await submit(db, 1, "d1")
    await run_until_idle(controller)
    victim = next(iter(placement.running))
    await placement.stop(placement.running[victim][0], drain_timeout=0)
    placement.fail = True
    await run_until_idle(controller)
    tries = len(placement.started)
    await run_until_idle(controller)  # within the backoff: no new attempt
    assert len(placement.started) == tries
    placement.fail = False
    controller._heal_backoff["acme-tiny"].retry_at = 0  # the backoff has passed
    await run_until_idle(controller)
    assert len(router.current().endpoints["acme-tiny"].replicas) == 2
    await controller.close()
    await placement.close()


async def test_deleting_an_endpoint_stops_its_replicas(db: Database) -> None:
    placement, router = FakePlacement(), Router()
    controller = make(db, placement, router)
    await submit(db, 1, "d1")
    await run_until_idle(controller)
    assert len(placement.running) == 2
    async with db.session() as s:
        await endpoints.delete_endpoint(s, "acme-tiny")
    await run_until_idle(controller)
    assert placement.running == {}
    assert "acme-tiny" not in router.current().endpoints
    async with db.session() as s:
        assert await replicas.list_replicas(s) == []
    await controller.close()
    await placement.close()


async def test_a_stale_relaunch_of_a_finished_rollout_touches_nothing(db: Database) -> None:
    # A reconcile pass may read a deployment as active just before its rollout completes and
    # launch it again when the endpoint frees up; that copy must not stop the serving replicas.
    placement, router = FakePlacement(), Router()
    controller = make(db, placement, router)
    await submit(db, 1, "d1")
    await run_until_idle(controller)
    assert await state(db, "d1") == "complete"
    serving = set(placement.running)
    await Rollout(controller.context, "d1").run()
    assert set(placement.running) == serving and not placement.stopped
    assert await state(db, "d1") == "complete"
    assert len(router.current().endpoints["acme-tiny"].replicas) == 2
    await controller.close()
    await placement.close()
