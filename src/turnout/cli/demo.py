"""`turnout demo`: build two versions of a model, serve one, roll out the other under load."""

from __future__ import annotations

import time
from pathlib import Path
from typing import TYPE_CHECKING, Annotated

import typer
from rich.console import Console

if TYPE_CHECKING:
    from turnout.demo.runner import Demo


def demo(
    data_dir: Annotated[
        Path,
        typer.Option("--data-dir", envvar="TURNOUT_DEMO_DATA_DIR", help="The demo's own data dir."),
    ] = Path(".turnout-demo"),
    arch: Annotated[
        str,
        typer.Option("--arch", help="smollm2-135m (a real model) or tiny-llama (fast, random)."),
    ] = "smollm2-135m",
    exit_after: Annotated[
        bool,
        typer.Option("--exit", envvar="TURNOUT_DEMO_EXIT", help="End after the summary."),
    ] = False,
    settle: Annotated[
        float, typer.Option("--settle", help="Seconds of load before and after the rollout.")
    ] = 5.0,
) -> None:
    """Serve a model, roll a new version out under load and show that no request failed."""
    from turnout.demo.models import DEMO_ARCHS, build_versions
    from turnout.demo.runner import Demo, demo_server

    console = Console()
    if arch not in DEMO_ARCHS:
        Console(stderr=True).print(
            f"[red]error:[/red] --arch must be one of {DEMO_ARCHS}, not {arch}"
        )
        raise typer.Exit(2)
    data_dir = data_dir.resolve()
    models_dir = data_dir / "models"
    console.rule("1. model versions")
    v1_dir, v2_dir = build_versions(arch, models_dir, console.print)

    console.rule("2. turnout serve")
    server = demo_server(data_dir, models_dir)
    endpoint = "demo-smollm2" if arch == "smollm2-135m" else "demo-tiny"
    session = Demo(server, arch, endpoint, console)
    try:
        ok = _run(session, v1_dir, v2_dir, settle, exit_after)
    except RuntimeError as exc:  # a step failed; its message says which and where to look
        console.print(f"[red]demo failed:[/red] {exc}")
        ok = False
    finally:
        server.stop()
    raise typer.Exit(0 if ok else 1)


def _run(session: Demo, v1_dir: Path, v2_dir: Path, settle: float, exit_after: bool) -> bool:
    console, server = session.console, session.server
    server.start(timeout=120)
    console.print(f"serving at {server.url} (log: {server.log_path})")
    session.provision()

    console.rule("3. version 1 as production")
    v1 = session.upload(v1_dir, ["production"])
    session.deploy("production")
    session.ask("answers from version 1")

    console.rule("4. version 2 rolled out under load")
    summary = session.rollout_under_load(v1, v2_dir, settle)
    session.ask("answers from version 2")
    session.print_summary(summary)

    console.rule("5. try it")
    session.print_usage()
    ok = summary.failed == 0 and len(summary.served) == 2
    if not exit_after:
        console.print("serving until Ctrl-C")
        _wait_for_interrupt()
    return ok


def _wait_for_interrupt() -> None:
    try:
        while True:
            time.sleep(3600)
    except KeyboardInterrupt:
        pass
