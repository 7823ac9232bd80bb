"""`turnout dev`: developer tools (test models, smoke checks)."""

from __future__ import annotations

from pathlib import Path

import typer

app = typer.Typer(help="Developer tools: build test models.", no_args_is_help=True)


@app.command("tiny-model")
def tiny_model(
    out_dir: Path = typer.Argument(..., help="Directory to write the model into."),
    arch: str = typer.Option("tiny-llama", "--arch", help="Catalog architecture id (llama)."),
    seed: int = typer.Option(0, "--seed", help="Weight seed; same seed gives the same bytes."),
) -> None:
    """Write a random-weight HF model directory matching a catalog architecture."""
    # Imported here so `turnout --help` does not pay for torch/transformers.
    from turnout.registry.tinymodel import write_tiny_model

    try:
        path = write_tiny_model(out_dir, arch_id=arch, seed=seed)
    except ValueError as exc:
        raise typer.BadParameter(str(exc), param_hint="--arch") from exc
    typer.echo(str(path))
