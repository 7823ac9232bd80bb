"""A small fake placement whose "replicas" are in-process HTTP servers answering the warm-up
and golden requests, a real SQLite store, and helpers to drive a controller pass by pass."""

from __future__ import annotations

from dataclasses import replace

from aiohttp import web

from turnout.gateway.routing import Router
from turnout.placement.base import (
    Capacity,
    NoCapacity,
    NodeCapacity,
    ReloadFailed,
    ReplicaHandle,
    ReplicaSpec,
    ReplicaStatus,
)
from turnout.policy import SURGE, RolloutPolicy
from turnout.rollout.controller import RolloutConfig, RolloutController
from turnout.routing.feed import InProcessFeed
from turnout.states import ReplicaState
from turnout.store import deployments, endpoints
from turnout.store.db import Database


class FakePlacement:
    """Replicas are aiohttp servers on loopback; ``fail`` makes the next start fail."""

    def __init__(self) -> None:
        self.running: dict[str, tuple[ReplicaHandle, web.AppRunner]] = {}
        self.started: list[str] = []
        self.stopped: list[str] = []
        self.fail = False  # replicas started while set never become ready
        self.failing: set[str] = set()
        self.gpus = 0  # the fake node's GPUs
        self.specs: dict[str, ReplicaSpec] = {}
        self.answer = "4"  # what new replicas answer a chat request (golden prompts)
        self.answers: dict[str, str] = {}
        self.reloaded: list[tuple[str, str]] = []  # (replica id, deployment id)

    async def start(self, spec: ReplicaSpec) -> ReplicaHandle:
        if spec.gpus and not (await self.capacity()).fits(1, spec.gpus):
            raise NoCapacity(f"{spec.gpus} GPU(s) wanted")
        self.specs[spec.replica_id] = spec

        async def complete(_: web.Request) -> web.Response:
            return web.json_response({"usage": {"completion_tokens": 1}})

        async def chat(_: web.Request) -> web.Response:
            content = self.answers[spec.replica_id]
            return web.json_response({"choices": [{"message": {"content": content}}]})

        self.answers[spec.replica_id] = self.answer
        app = web.Application()
        app.router.add_post("/v1/completions", complete)
        app.router.add_post("/v1/chat/completions", chat)
        runner = web.AppRunner(app)
        await runner.setup()
        site = web.TCPSite(runner, "127.0.0.1", 0)
        await site.start()
        port = site._server.sockets[0].getsockname()[1]  # type: ignore[union-attr]
        handle = ReplicaHandle(spec.replica_id, f"http://127.0.0.1:{port}")
        self.running[spec.replica_id] = (handle, runner)
        self.started.append(spec.replica_id)
        if self.fail:
            self.failing.add(spec.replica_id)
        return handle

    async def probe(self, handle: ReplicaHandle) -> ReplicaStatus:
        if handle.replica_id not in self.running:
            return ReplicaStatus(handle, ReplicaState.STOPPED)
        if handle.replica_id in self.failing:
            return ReplicaStatus(handle, ReplicaState.FAILED, error="boom")
        return ReplicaStatus(handle, ReplicaState.READY)

    async def stop(self, handle: ReplicaHandle, *, drain_timeout: float) -> None:
        entry = self.running.pop(handle.replica_id, None)
        if entry is not None:
            await entry[1].cleanup()
            self.stopped.append(handle.replica_id)

    async def reload(self, handle: ReplicaHandle, spec: ReplicaSpec) -> ReplicaHandle:
        if handle.replica_id not in self.running:
            raise ReloadFailed(f"{handle.replica_id} is not running")
        self.reloaded.append((handle.replica_id, spec.deployment_id))
        self.answers[handle.replica_id] = self.answer
        return self.running[handle.replica_id][0]

    async def list_alive(self) -> list[ReplicaHandle]:
        return [h for h, _ in self.running.values()]

    async def capacity(self) -> Capacity:
        used = sum(spec.gpus for spec in self.specs.values() if spec.replica_id in self.running)
        node = NodeCapacity("fake", self.gpus, self.gpus - used, len(self.running))
        return Capacity((node,))

    async def close(self, *, stop_replicas: bool = True) -> None:
        for handle, _ in list(self.running.values()):
            await self.stop(handle, drain_timeout=0)


async def submit(
    db: Database, version_pk: int, deployment_id: str, policy: RolloutPolicy = SURGE
) -> None:
    async with db.session() as s:
        endpoint = await endpoints.get_endpoint(s, "acme-tiny")
        await deployments.create_deployment(
            s,
            deployment_id=deployment_id,
            endpoint=endpoint,
            version_pk=version_pk,
            alias_used=None,
            policy=policy,
        )


async def run_until_idle(controller: RolloutController, passes: int = 10) -> None:
    """Reconcile and wait for the launched work until a pass launches nothing more."""
    for _ in range(passes):
        await controller.reconcile()
        if not controller._tasks:
            return
        await controller.wait_idle()
    raise AssertionError(f"still busy after {passes} passes")


async def state(db: Database, deployment_id: str) -> str:
    async with db.session() as s:
        return (await deployments.get_deployment(s, deployment_id)).state


def make(
    db: Database,
    placement: FakePlacement,
    router: Router,
    feed: InProcessFeed | None = None,
    **config: object,
) -> RolloutController:
    base = RolloutConfig(ready_timeout=5, drain_timeout=1, probe_interval=0.01)
    feed = feed or InProcessFeed(db, router)
    return RolloutController(db, placement, feed, replace(base, **config))  # type: ignore[arg-type]
