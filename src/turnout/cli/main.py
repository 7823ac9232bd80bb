"""The `turnout` command: one Typer app with a sub-app per area.

Heavy imports (torch, transformers, uvicorn) happen inside commands, so `turnout --help` is fast.
"""

from __future__ import annotations

import typer

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

if __name__ == "__main__":
    app()
