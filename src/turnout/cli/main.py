"""The `turnout` command: one Typer app with a sub-app per area.

Heavy imports (torch, transformers, uvicorn) happen inside commands, so `turnout --help` is fast.
"""

from __future__ import annotations

import sys

import typer
from rich.console import Console

from turnout.cli.context import EXIT_FAILED, EXIT_REFUSED, EXIT_UNREACHABLE
from turnout.client import ApiError, Unreachable

app = typer.Typer(
    name="turnout",
    help="Dedicated LLM endpoints with zero-downtime rollouts.",
    no_args_is_help=True,
    pretty_exceptions_enable=False,
)


def _register() -> None:
    # Each sub-app lives in its own module of turnout.cli; add one line per module.
    from turnout.cli import admin, client, demo, dev, engine, serve

    app.add_typer(admin.app, name="admin")
    app.add_typer(dev.app, name="dev")
    app.add_typer(engine.app, name="engine")
    app.command("serve")(serve.serve)
    app.add_typer(client.models_app, name="models")
    app.add_typer(client.endpoints_app, name="endpoints")
    app.add_typer(client.deployments_app, name="deployments")
    app.command("deploy")(client.deploy)
    app.command("rollback")(client.rollback)
    app.command("chat")(client.chat)
    app.command("demo")(demo.demo)


_register()


def main() -> None:
    """The ``turnout`` command: a client error ends it with its message and exit code."""
    try:
        app()
    except ApiError as exc:
        Console(stderr=True).print(f"[red]error:[/red] {exc.message}", highlight=False)
        sys.exit(EXIT_REFUSED if exc.refused else EXIT_FAILED)
    except Unreachable as exc:
        Console(stderr=True).print(f"[red]error:[/red] {exc}", highlight=False)
        sys.exit(EXIT_UNREACHABLE)


if __name__ == "__main__":
    main()
