"""The management/admin HTTP app and the workers it runs beside (one process by default)."""

from __future__ import annotations

import asyncio
import contextlib
from collections.abc import AsyncIterator
from dataclasses import dataclass, field

from fastapi import FastAPI
from fastapi.responses import JSONResponse

from turnout import __version__
from turnout.api.deps import Services
from turnout.api.errors import BodySizeLimit, install_error_handlers
from turnout.api.routes import admin, management
from turnout.api.services.admin import AdminService
from turnout.api.services.endpoints import EndpointsService
from turnout.api.services.models import ModelsService
from turnout.gateway.app import create_gateway_app
from turnout.gateway.keys import StaticInferenceKeys
from turnout.gateway.routing import Router
from turnout.loop import run_control_loop
from turnout.placement.local import LocalPlacement, LocalPlacementConfig
from turnout.registry.sync import SyncConfig, check_source_uri
from turnout.registry.worker import SyncWorker
from turnout.rollout.controller import RolloutConfig, RolloutController
from turnout.settings import Settings
from turnout.store.db import Database


def sync_config(settings: Settings) -> SyncConfig:
    return SyncConfig(
        weights_dir=settings.weights_dir.resolve(),
        allowed_local_roots=tuple(p.resolve() for p in settings.allowed_local_roots),
        allowed_hosts=tuple(settings.allowed_hosts),
        s3_endpoint_url=settings.s3_endpoint_url,
        s3_region=settings.s3_region,
        s3_addressing_style=settings.s3_addressing_style,
        max_total_bytes=settings.max_weight_bytes,
    )


@dataclass
class Runtime:
    """What the server owns: the database, the services, and its background workers."""

    settings: Settings
    db: Database
    sync: SyncWorker
    services: Services
    placement: LocalPlacement
    rollout: RolloutController
    router: Router
    keys: StaticInferenceKeys
    stopping: asyncio.Event = field(default_factory=asyncio.Event)
    tasks: list[asyncio.Task[None]] = field(default_factory=list)

    async def start(self, *, workers: bool) -> None:
        await self.db.migrate()
        await self.services.admin.seed()
        if workers:
            await self.sync.recover()
            await self.rollout.recover(await self.placement.recover())
            for name, worker in (("sync", self.sync), ("rollout", self.rollout)):
                loop = run_control_loop(name, worker.reconcile, worker.wakeup, self.stopping)
                self.tasks.append(asyncio.create_task(loop, name=f"{name} loop"))

    async def stop(self) -> None:
        self.stopping.set()
        for task in self.tasks:
            task.cancel()
        for task in self.tasks:
            with contextlib.suppress(asyncio.CancelledError):
                await task
        await self.rollout.close()
        await self.placement.close()
        await self.sync.close()
        await self.db.dispose()


def build_runtime(settings: Settings) -> Runtime:
    db = Database(settings.resolved_database_url())
    config = sync_config(settings)
    sync = SyncWorker(db, config)
    router = Router()
    keys = StaticInferenceKeys()
    placement = LocalPlacement(LocalPlacementConfig(run_dir=settings.data_dir.resolve() / "run"))
    rollout = RolloutController(
        db,
        placement,
        router,
        keys,
        RolloutConfig(
            ready_timeout=settings.ready_timeout,
            drain_timeout=settings.drain_timeout,
            device=settings.device,
        ),
    )
    services = Services(
        db=db,
        models=ModelsService(db, lambda uri: check_source_uri(uri, config), sync.notify),
        endpoints=EndpointsService(db, rollout.notify),
        admin=AdminService(db),
        admin_token=settings.admin_token,
    )
    return Runtime(settings, db, sync, services, placement, rollout, router, keys)


def create_app(settings: Settings, *, workers: bool = True) -> FastAPI:
    """The whole server on one port: the gateway's /v1 routes in front of the management app."""
    runtime = build_runtime(settings)
    management = create_management_app(runtime, workers=workers)
    app = create_gateway_app(runtime.router, runtime.keys, fallback=management)
    app.state.runtime = runtime
    return app


def create_management_app(runtime: Runtime, *, workers: bool) -> FastAPI:
    settings = runtime.settings

    @contextlib.asynccontextmanager
    async def lifespan(app: FastAPI) -> AsyncIterator[None]:
        await runtime.start(workers=workers)
        try:
            yield
        finally:
            await runtime.stop()

    app = FastAPI(
        title="Turnout",
        version=__version__,
        summary="Dedicated LLM endpoints; Cerebras Management API compatible.",
        lifespan=lifespan,
    )
    app.state.services = runtime.services
    app.state.runtime = runtime
    install_error_handlers(app)
    app.add_middleware(BodySizeLimit, max_bytes=settings.max_body_bytes)
    app.include_router(management.router)
    app.include_router(admin.router)

    @app.get("/healthz", tags=["health"], summary="Liveness")
    async def healthz() -> JSONResponse:
        return JSONResponse({"status": "ok", "version": __version__})

    return app
