"""`turnout serve`: the server (management API, admin API and workers in one process)."""

from __future__ import annotations

import logging
from typing import Annotated

import typer

from turnout.cli.context import DataDir, load_settings


def serve(
    host: Annotated[str, typer.Option("--host", envvar="TURNOUT_HOST")] = "127.0.0.1",
    port: Annotated[int, typer.Option("--port", envvar="TURNOUT_PORT")] = 8080,
    data_dir: DataDir = None,
    log_level: Annotated[str, typer.Option("--log-level")] = "info",
) -> None:
    """Run Turnout: /management/v1, /admin/v1 and the background workers."""
    import uvicorn

    from turnout.api.app import create_app

    logging.basicConfig(
        level=log_level.upper(), format="%(asctime)s %(levelname)s %(name)s: %(message)s"
    )
    settings = load_settings(data_dir)
    settings.data_dir.mkdir(parents=True, exist_ok=True)
    app = create_app(settings)
    uvicorn.run(app, host=host, port=port, log_level=log_level, timeout_graceful_shutdown=30)
