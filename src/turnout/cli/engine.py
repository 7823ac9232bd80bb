"""`turnout engine`: the built-in torch/transformers engine server."""

from __future__ import annotations

import logging
import os
import sys
from pathlib import Path

import typer

app = typer.Typer(help="The built-in inference engine.", no_args_is_help=True)


@app.callback()
def engine() -> None:
    """The built-in inference engine (one model, OpenAI-compatible HTTP)."""


@app.command()
def serve(
    model_dir: Path = typer.Option(..., "--model-dir", help="HF-format model directory."),
    port: int = typer.Option(8000, "--port"),
    host: str = typer.Option("127.0.0.1", "--host"),
    served_name: str | None = typer.Option(
        None, "--served-name", help="Model name in responses (default: the directory's name)."
    ),
    device: str = typer.Option("cpu", "--device", help="cpu or cuda."),
    max_model_len: int | None = typer.Option(
        None, "--max-model-len", help="Cap on prompt + completion tokens."
    ),
    max_batch_size: int = typer.Option(16, "--max-batch-size", help="Sequences per step."),
    drain_timeout: float = typer.Option(
        30.0, "--drain-timeout", help="Seconds in-flight requests get after SIGTERM."
    ),
    threads: int | None = typer.Option(
        None, "--threads", help="torch CPU threads (default: all cores but one)."
    ),
    log_level: str = typer.Option("info", "--log-level"),
) -> None:
    """Serve one model: /v1/chat/completions, /v1/completions, /v1/models, /health, /ready."""
    import uvicorn

    from turnout.engine.server import EngineConfig, create_engine_app

    logging.basicConfig(
        level=log_level.upper(),
        stream=sys.stderr,
        format="%(asctime)s %(levelname)s %(name)s: %(message)s",
    )
    if device not in ("cpu", "cuda") and not device.startswith("cuda:"):
        raise typer.BadParameter("expected cpu, cuda or cuda:N", param_hint="--device")
    config = EngineConfig(
        model_dir=model_dir,
        served_name=served_name or model_dir.name,
        device=device,
        max_model_len=max_model_len,
        max_batch_size=max_batch_size,
        threads=threads or _default_threads(device),
    )
    failures: list[BaseException] = []

    def on_fatal(exc: BaseException) -> None:
        failures.append(exc)
        server.should_exit = True

    uv_config = uvicorn.Config(
        create_engine_app(config, on_fatal=on_fatal),
        host=host,
        port=port,
        log_level=log_level,
        timeout_graceful_shutdown=int(drain_timeout),
    )
    server = uvicorn.Server(uv_config)
    server.run()
    if failures:
        typer.echo(f"engine failed to start: {failures[0]}", err=True)
        raise typer.Exit(1)


def _default_threads(device: str) -> int | None:
    if device != "cpu":
        return None
    # Leave one core to the event loop and tokenizer: OpenMP workers spin while they wait, and
    # on a small machine they starve the thread that streams tokens (measured: 5x slower).
    return max(1, len(os.sched_getaffinity(0)) - 1)
