"""`turnout serve`: the server (management API, admin API and workers in one process)."""

from __future__ import annotations

import logging
from typing import Annotated

import typer

from turnout.cli.context import EXIT_REFUSED, DataDir, err_console, load_settings
from turnout.errors import TurnoutError


def serve(
    host: Annotated[str, typer.Option("--host", envvar="TURNOUT_HOST")] = "127.0.0.1",
    port: Annotated[int, typer.Option("--port", envvar="TURNOUT_PORT")] = 8080,
    data_dir: DataDir = None,
    role: Annotated[
        str,
        typer.Option(
            "--role",
            envvar="TURNOUT_ROLE",
            help="all (one process), or one of api, gateway, worker (many, in front of PostgreSQL)",
        ),
    ] = "all",
    placement: Annotated[
        str | None,
        typer.Option("--placement", help="local (default) or ray; env TURNOUT_PLACEMENT"),
    ] = None,
    ray_address: Annotated[
        str | None,
        typer.Option("--ray-address", help="Ray cluster address; env TURNOUT_RAY_ADDRESS"),
    ] = None,
    log_level: Annotated[str, typer.Option("--log-level")] = "info",
) -> None:
    """Run Turnout: /management/v1, /admin/v1, the /v1 gateway and the background workers."""
    import uvicorn

    from turnout.server import Role, create_server_app

    try:
        chosen = Role(role)
    except ValueError:
        raise typer.BadParameter(f"--role must be one of {', '.join(Role)}") from None

    logging.basicConfig(
        level=log_level.upper(), format="%(asctime)s %(levelname)s %(name)s: %(message)s"
    )
    settings = load_settings(data_dir)
    overrides: dict[str, object] = {}
    if placement is not None:
        if placement not in ("local", "ray"):
            raise typer.BadParameter("--placement must be local or ray")
        overrides["placement"] = placement
    if ray_address is not None:
        overrides["ray_address"] = ray_address
    if not settings.advertise_url:
        overrides["advertise_url"] = f"http://{host}:{port}"
    settings = settings.model_copy(update=overrides)
    settings.data_dir.mkdir(parents=True, exist_ok=True)
    try:
        app = create_server_app(settings, chosen)
    except TurnoutError as exc:  # a bad setting, or another server on this data dir
        err_console.print(f"[red]error:[/red] {exc.message}")
        raise typer.Exit(code=EXIT_REFUSED) from None
    uvicorn.run(app, host=host, port=port, log_level=log_level, timeout_graceful_shutdown=30)
