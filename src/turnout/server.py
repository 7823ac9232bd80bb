"""Composing a server process from its roles (DESIGN §2).

``all`` (the default) runs the management API, the gateway and the workers in one process on
one port. ``api``, ``gateway`` and ``worker`` run one part each, many of them in front of one
PostgreSQL: the worker publishes routing changes through the store's routing generation and
gateways follow it.
"""

from __future__ import annotations

import asyncio
import contextlib
import logging
import os
import signal
import socket
from collections.abc import AsyncIterator, Awaitable, Callable
from dataclasses import dataclass, field
from enum import StrEnum

from fastapi import FastAPI, Request
from fastapi.responses import Response
from prometheus_client import CONTENT_TYPE_LATEST, CollectorRegistry, generate_latest

from turnout.api.app import create_management_app, healthz
from turnout.api.deps import Services
from turnout.api.errors import install_error_handlers
from turnout.api.routes import internal
from turnout.api.services.admin import AdminService
from turnout.api.services.endpoints import EndpointsService
from turnout.api.services.models import ModelsService
from turnout.api.services.traffic import TrafficService
from turnout.errors import ConfigError
from turnout.gateway.app import check_metrics_token, create_gateway_app, install_flat_errors
from turnout.gateway.keys import StaticInferenceKeys
from turnout.gateway.routing import Router
from turnout.gateway.traffic import Traffic
from turnout.loop import run_control_loop
from turnout.placement.base import Placement
from turnout.placement.engines import EngineCatalog
from turnout.placement.gpus import gpu_ids
from turnout.placement.local import LocalPlacement, LocalPlacementConfig
from turnout.placement.supervisor import SupervisionConfig
from turnout.registry.config import SyncConfig
from turnout.registry.scope import grant_key
from turnout.registry.sync import check_org_source
from turnout.registry.weightstore import WeightStore
from turnout.registry.worker import SyncWorker
from turnout.rollout.controller import RolloutConfig, RolloutController
from turnout.routing.feed import InProcessFeed, RoutingFeed, StoreFeed
from turnout.routing.follower import KeyRefresher, StoreFollower
from turnout.settings import Settings, check_secrets
from turnout.store.db import Database
from turnout.telemetry import ControlPlaneTelemetry

log = logging.getLogger(__name__)

#: Seconds between a leader's checks of its lock, and how long one check may take (a check
#: that takes longer counts as a lost lock: fencing errs on the safe side).
LEADER_CHECK = 1.0
LEADER_CHECK_TIMEOUT = 2.0
#: Seconds a worker waits after taking the leader lock before it acts: twice what a deposed
#: leader needs at most to notice, so the old one has stopped before the new one starts.
LEADER_GRACE = 2 * (LEADER_CHECK + LEADER_CHECK_TIMEOUT)


class Role(StrEnum):
    ALL = "all"
    API = "api"
    GATEWAY = "gateway"
    WORKER = "worker"


def sync_config(settings: Settings) -> SyncConfig:
    return SyncConfig(
        weights_dir=settings.weights_dir.resolve(),
        allowed_local_roots=tuple(p.resolve() for p in settings.allowed_local_roots),
        allowed_hosts=tuple(settings.allowed_hosts),
        s3_endpoint_url=settings.s3_endpoint_url,
        s3_region=settings.s3_region,
        s3_addressing_style=settings.s3_addressing_style,
        max_total_bytes=settings.max_weight_bytes,
        part_size=settings.s3_part_size,
        allowed_s3_prefixes=tuple(grant_key(p)[1] for p in settings.allowed_s3_prefixes),
        allowed_hf_repos=tuple(grant_key(p)[1] for p in settings.allowed_hf_repos),
    )


@dataclass
class Runtime:
    """What one server process owns: the database, its services and its background loops."""

    settings: Settings
    role: Role
    db: Database
    services: Services
    router: Router
    keys: StaticInferenceKeys
    traffic: Traffic | None = None
    sync: SyncWorker | None = None
    placement: Placement | None = None
    rollout: RolloutController | None = None
    follower: StoreFollower | None = None
    key_refresher: KeyRefresher | None = None
    #: The control plane's series (roles all, api, worker), on their /metrics.
    telemetry: ControlPlaneTelemetry | None = None
    telemetry_registry: CollectorRegistry | None = None
    stopping: asyncio.Event = field(default_factory=asyncio.Event)
    tasks: list[asyncio.Task[None]] = field(default_factory=list)

    def _loop(
        self,
        name: str,
        reconcile: Callable[[], Awaitable[None]],
        wakeup: asyncio.Event,
        interval: float,
    ) -> None:
        loop = run_control_loop(name, reconcile, wakeup, self.stopping, interval)
        self.tasks.append(asyncio.create_task(loop, name=f"{name} loop"))

    async def start(self) -> None:
        await self.db.migrate()
        await self.services.admin.seed()
        if self.sync is not None:
            if self.role is Role.WORKER and not self.db.is_sqlite:
                # Several workers may run for availability; one leads at a time.
                self.tasks.append(asyncio.create_task(self._lead(), name="leader election"))
            else:
                await self._start_workers()
        if self.follower is not None:
            await self.follower.reconcile()
            self._loop("routing", self.follower.reconcile, self.follower.wakeup, 0.25)
        if self.key_refresher is not None:
            await self.key_refresher.reconcile()
            self._loop("keys", self.key_refresher.reconcile, self.key_refresher.wakeup, 1.0)
        if self.telemetry is not None:
            self._loop("telemetry", self.telemetry.reconcile, self.telemetry.wakeup, 5.0)

    async def _start_workers(self) -> None:
        assert self.sync is not None and self.rollout is not None and self.placement is not None
        await self.sync.recover()
        self._loop("sync", self.sync.reconcile, self.sync.wakeup, 1.0)
        # The first pass adopts the replicas a previous worker left running.
        self._loop("rollout", self.rollout.reconcile, self.rollout.wakeup, 1.0)

    async def _lead(self) -> None:
        """Wait for the leader lock (held by a session for this process's life), then work.

        Fenced: a leader checks its lock every LEADER_CHECK seconds (each check bounded by
        LEADER_CHECK_TIMEOUT) and stops acting as soon as it is gone; a new leader waits
        LEADER_GRACE, longer than that, before it acts. So two workers never act at once, even
        when the old leader's database session dropped while the process itself lives on."""
        waited = False
        while not self.stopping.is_set():
            if await self.db.try_leader_lock():
                log.info("worker %s took the leader lock; acting in %gs", os.getpid(), LEADER_GRACE)
                with contextlib.suppress(TimeoutError):
                    await asyncio.wait_for(self.stopping.wait(), timeout=LEADER_GRACE)
                if self.stopping.is_set():
                    return
                if not await self.db.still_leader(LEADER_CHECK_TIMEOUT):
                    await self.db.release_leader_lock()  # lost while waiting: stand by again
                    continue
                log.info("worker %s is the leader", os.getpid())
                await self._start_workers()
                self.tasks.append(asyncio.create_task(self._keep_lead(), name="leader lease"))
                return
            if not waited:
                log.info("worker %s on standby until the leader lock frees", os.getpid())
                waited = True
            with contextlib.suppress(TimeoutError):
                await asyncio.wait_for(self.stopping.wait(), timeout=2.0)

    async def _keep_lead(self) -> None:
        """Stop acting the moment the leader lock is gone, then end the process (its
        supervisor starts it again, as a standby)."""
        while not self.stopping.is_set():
            with contextlib.suppress(TimeoutError):
                await asyncio.wait_for(self.stopping.wait(), timeout=LEADER_CHECK)
            if self.stopping.is_set() or await self.db.still_leader(LEADER_CHECK_TIMEOUT):
                continue
            log.error(
                "worker %s lost the leader lock (its database session dropped); it stops "
                "acting now and exits",
                os.getpid(),
            )
            current = asyncio.current_task()
            for task in self.tasks:
                if task is not current:
                    task.cancel()
            if self.rollout is not None:
                await self.rollout.close()
            if self.sync is not None:
                await self.sync.close()
            log.error("worker %s stopped acting", os.getpid())
            os.kill(os.getpid(), signal.SIGTERM)
            return

    async def stop(self) -> None:
        self.stopping.set()
        for task in self.tasks:
            task.cancel()
        for task in self.tasks:
            with contextlib.suppress(asyncio.CancelledError):
                await task
        if self.rollout is not None:
            await self.rollout.close()
        if self.placement is not None:
            # Only a developer's all-in-one server takes its local replicas with it; a worker
            # (or any Ray placement) leaves them serving for the next process to adopt.
            local_all = self.role is Role.ALL and self.settings.placement == "local"
            await self.placement.close(stop_replicas=local_all)
        if self.sync is not None:
            await self.sync.close()
        await self.db.release_leader_lock()
        await self.db.dispose()


def build_runtime(settings: Settings, role: Role = Role.ALL) -> Runtime:
    check_secrets(settings)
    db = Database(settings.resolved_database_url())
    db.claim_for_server()  # SQLite: one server per data dir
    config = sync_config(settings)
    engines = EngineCatalog.from_file(settings.engine_templates)
    router, keys = Router(), StaticInferenceKeys()
    # The gateway's per-window counts (a minute by default); the management API reads them in
    # the same process.
    traffic = Traffic(settings.metrics_window) if role in (Role.ALL, Role.GATEWAY) else None
    runs_workers = role in (Role.ALL, Role.WORKER)
    sync = SyncWorker(db, config) if runs_workers else None
    placement = rollout = None
    if runs_workers:
        placement = build_placement(settings)
        hold = settings.hold_seconds
        feed: RoutingFeed = (
            InProcessFeed(db, router, hold)
            if role is Role.ALL
            else StoreFeed(db, hold_seconds=hold)
        )
        rollout = RolloutController(db, placement, feed, rollout_config(settings, engines))
    follower = key_refresher = None
    if role is Role.GATEWAY:
        gateway_id = f"{socket.gethostname()}-{os.getpid()}"
        follower = StoreFollower(db, router, keys, gateway_id, settings.hold_seconds)
    elif role is Role.ALL:
        key_refresher = KeyRefresher(db, keys)
    services = Services(
        db=db,
        models=ModelsService(
            db,
            lambda uri, org, grants: check_org_source(uri, config, org, grants),
            sync.notify if sync else _nothing,
        ),
        endpoints=EndpointsService(db, rollout.notify if rollout else _nothing),
        admin=AdminService(
            db,
            engines,
            on_keys_changed=key_refresher.wakeup.set if key_refresher else _nothing,
            on_endpoint_deleted=rollout.notify if rollout else _nothing,
        ),
        admin_token=settings.admin_token,
        weights=WeightStore(settings.weights_dir.resolve()),
        internal_token=settings.resolved_internal_token(),
        traffic=TrafficService(db, traffic, router.current),
    )
    telemetry = registry = None
    if role is not Role.GATEWAY:
        telemetry, registry = ControlPlaneTelemetry(db), CollectorRegistry(auto_describe=False)
        telemetry.register(registry)
    return Runtime(
        settings,
        role,
        db,
        services,
        router,
        keys,
        traffic,
        sync,
        placement,
        rollout,
        follower,
        key_refresher,
        telemetry=telemetry,
        telemetry_registry=registry,
    )


def _nothing() -> None:
    """A worker in another process notices new work on its next pass."""


def build_placement(settings: Settings) -> Placement:
    if settings.placement == "ray":
        # Only this placement needs Ray (the `ray` extra): imported when chosen.
        from turnout.placement.ray import RayPlacement, RayPlacementConfig

        if not settings.ray_address:
            raise ConfigError("--placement ray needs --ray-address (or TURNOUT_RAY_ADDRESS)")
        return RayPlacement(
            RayPlacementConfig(
                address=settings.ray_address, always_fetch=settings.node_weights == "fetch"
            )
        )
    return LocalPlacement(
        LocalPlacementConfig(
            run_dir=settings.data_dir.resolve() / "run",
            gpu_ids=gpu_ids(settings.gpus),
            supervision=SupervisionConfig(
                health_interval=settings.health_interval, health_timeout=settings.health_timeout
            ),
        )
    )


def rollout_config(settings: Settings, engines: EngineCatalog) -> RolloutConfig:
    return RolloutConfig(
        engines=engines,
        ready_timeout=settings.ready_timeout,
        drain_timeout=settings.drain_timeout,
        device=settings.device,
        max_replicas=settings.max_replicas,
        # Local replicas read the weight store; Ray nodes may not have it.
        weights_url=settings.advertise_url if settings.placement == "ray" else None,
        internal_token=settings.resolved_internal_token(),
    )


def create_server_app(settings: Settings, role: Role = Role.ALL) -> FastAPI:
    """The ASGI app for one process of the given role."""
    runtime = build_runtime(settings, role)

    @contextlib.asynccontextmanager
    async def lifespan(_: FastAPI) -> AsyncIterator[None]:
        await runtime.start()
        try:
            yield
        finally:
            await runtime.stop()

    if role is Role.GATEWAY:
        bare = FastAPI(lifespan=lifespan, openapi_url=None, docs_url=None, redoc_url=None)
        bare.add_api_route("/healthz", healthz, methods=["GET"])
        install_flat_errors(bare)  # unknown routes fall through to it
        app = create_gateway_app(
            runtime.router,
            runtime.keys,
            traffic=runtime.traffic,
            fallback=bare,
            metrics_token=settings.metrics_token,
        )
    elif role is Role.WORKER:
        app = FastAPI(lifespan=lifespan, openapi_url=None, docs_url=None, redoc_url=None)
        app.add_api_route("/healthz", healthz, methods=["GET"])
        _serve_control_plane_metrics(app, runtime, settings.metrics_token)
        # Fleet nodes fetch weights from whichever process has the weight store.
        app.state.services = runtime.services
        install_error_handlers(app)
        app.include_router(internal.router)
    else:
        management = create_management_app(
            runtime.services, max_body_bytes=settings.max_body_bytes, lifespan=lifespan
        )
        if role is Role.API:
            _serve_control_plane_metrics(management, runtime, settings.metrics_token)
        app = (
            management
            if role is Role.API
            else create_gateway_app(
                runtime.router,
                runtime.keys,
                traffic=runtime.traffic,
                fallback=management,
                metrics_token=settings.metrics_token,
                control_plane=runtime.telemetry_registry,
            )
        )
    app.state.runtime = runtime
    return app


def _serve_control_plane_metrics(app: FastAPI, runtime: Runtime, token: str) -> None:
    """``/metrics`` of a process without a gateway: the control plane's series."""
    registry = runtime.telemetry_registry
    assert registry is not None

    async def control_plane_metrics(request: Request) -> Response:
        check_metrics_token(request, token)
        return Response(generate_latest(registry), media_type=CONTENT_TYPE_LATEST)

    app.add_api_route("/metrics", control_plane_metrics, methods=["GET"], include_in_schema=False)
