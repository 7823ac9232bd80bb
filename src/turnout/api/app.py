"""The management and admin HTTP app: routes, error handling, body limit, health."""

from __future__ import annotations

from collections.abc import Callable
from contextlib import AbstractAsyncContextManager

from fastapi import FastAPI
from fastapi.responses import JSONResponse

from turnout import __version__
from turnout.api.deps import Services
from turnout.api.errors import BodySizeLimit, install_error_handlers
from turnout.api.routes import admin, management


def create_management_app(
    services: Services,
    *,
    max_body_bytes: int,
    lifespan: Callable[[FastAPI], AbstractAsyncContextManager[None]] | None = None,
) -> FastAPI:
    app = FastAPI(
        title="Turnout",
        version=__version__,
        summary="Dedicated LLM endpoints; Cerebras Management API compatible.",
        lifespan=lifespan,
    )
    app.state.services = services
    install_error_handlers(app)
    app.add_middleware(BodySizeLimit, max_bytes=max_body_bytes)
    app.include_router(management.router)
    app.include_router(admin.router)
    app.add_api_route("/healthz", healthz, methods=["GET"], tags=["health"], summary="Liveness")
    return app


async def healthz() -> JSONResponse:
    return JSONResponse({"status": "ok", "version": __version__})
