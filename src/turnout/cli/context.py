"""What every CLI command shares: settings from flags/env, and running async work."""

from __future__ import annotations

import asyncio
import json
from collections.abc import Awaitable, Callable
from pathlib import Path
from typing import Annotated, TypeVar

import typer
from pydantic import BaseModel
from rich.console import Console
from rich.table import Table

from turnout.errors import TurnoutError
from turnout.settings import Settings

T = TypeVar("T")

#: Exit codes of every command: the operation failed (or the server answered 5xx), the request
#: was refused (4xx, or bad arguments), the server could not be reached.
EXIT_FAILED, EXIT_REFUSED, EXIT_UNREACHABLE = 1, 2, 3

DataDir = Annotated[
    Path | None,
    typer.Option(
        "--data-dir", envvar="TURNOUT_DATA_DIR", help="Data directory [default: ./.turnout]"
    ),
]
JsonFlag = Annotated[bool, typer.Option("--json", help="Print JSON for scripts.")]

err_console = Console(stderr=True)


def load_settings(data_dir: Path | None) -> Settings:
    settings = Settings()
    if data_dir is not None:
        settings = settings.model_copy(update={"data_dir": data_dir})
    return settings


def run_or_exit(work: Callable[[], Awaitable[T]]) -> T:
    """Run async work; a TurnoutError becomes its message on stderr and exit code 1."""
    try:
        return asyncio.run(work())  # type: ignore[arg-type]
    except TurnoutError as exc:
        err_console.print(f"[red]error:[/red] {exc.message}")
        raise typer.Exit(code=EXIT_REFUSED if exc.status < 500 else EXIT_FAILED) from None


def dump(data: object) -> None:
    """JSON for scripts, on stdout."""
    typer.echo(json.dumps(data, indent=2))


def table(columns: list[str], rows: list[list[object]]) -> None:
    """A table for people, on stdout; None shows as '-', lists as comma-separated."""
    rendered = Table(*columns)
    for row in rows:
        rendered.add_row(*[_cell(value) for value in row])
    Console().print(rendered)


def emit(model: BaseModel, as_json: bool, columns: list[str], rows_key: str | None = None) -> None:
    """Print a schema as JSON, or as a table of ``columns`` for people."""
    data = model.model_dump(mode="json")
    if as_json:
        dump(data)
        return
    rows = data[rows_key] if rows_key else [data]
    table(columns, [[row.get(c) for c in columns] for row in rows])


def _cell(value: object) -> str:
    if value is None:
        return "-"
    if isinstance(value, list):
        return ", ".join(str(v) for v in value)
    return str(value)
