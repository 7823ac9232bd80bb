"""The management and admin HTTP app: routes, error handling, body limit, health, and the web
console's static files at ``/console``."""

from __future__ import annotations

from collections.abc import Callable
from contextlib import AbstractAsyncContextManager
from pathlib import Path

from fastapi import FastAPI
from fastapi.responses import JSONResponse, RedirectResponse
from fastapi.staticfiles import StaticFiles

from turnout import __version__
from turnout.api.deps import Services
from turnout.api.errors import BodySizeLimit, install_error_handlers
from turnout.api.routes import admin, internal, management


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
    app.include_router(internal.router)
    app.add_api_route("/healthz", healthz, methods=["GET"], tags=["health"], summary="Liveness")
    # The console (console/ in the repo, built into the package): static files only; it calls
    # the management API above with the signed-in key like any other client.
    app.add_api_route("/console", console_redirect, methods=["GET"], include_in_schema=False)
    app.mount("/console", StaticFiles(directory=CONSOLE_DIR, html=True), name="console")
    return app


CONSOLE_DIR = Path(__file__).resolve().parent.parent / "console"


async def console_redirect() -> RedirectResponse:
    # Relative, so it also lands right behind a proxy that adds a path prefix.
    return RedirectResponse("console/", status_code=308)


async def healthz() -> JSONResponse:
    return JSONResponse({"status": "ok", "version": __version__})
