"""`turnout engine`: the built-in torch/transformers engine server.

The same options as ``python -m turnout.engine serve`` (which replicas run); both call
:func:`turnout.engine.main.run`.
"""

from __future__ import annotations

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
    device: str = typer.Option("cpu", "--device", help="cpu, cuda or cuda:N."),
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
    stall_timeout: float = typer.Option(
        30.0, "--stall-timeout", help="/health answers 503 once work waits this long unserved."
    ),
    reload_drain_timeout: float = typer.Option(
        30.0, "--reload-drain-timeout", help="A weight swap waits this long for in-flight work."
    ),
    hold_timeout: float = typer.Option(
        60.0, "--hold-timeout", help="Requests during a weight swap wait this long, then 503."
    ),
    log_level: str = typer.Option("info", "--log-level"),
) -> None:
    """Serve one model: /v1/chat/completions, /v1/completions, /v1/models, /health, /ready."""
    from turnout.engine.main import check_device, default_threads, run
    from turnout.engine.server import EngineConfig

    try:
        check_device(device)
    except ValueError as exc:
        raise typer.BadParameter(str(exc), param_hint="--device") from None
    config = EngineConfig(
        model_dir=model_dir,
        served_name=served_name or model_dir.name,
        device=device,
        max_model_len=max_model_len,
        max_batch_size=max_batch_size,
        threads=threads or default_threads(device),
        stall_timeout=stall_timeout,
        reload_drain_timeout=reload_drain_timeout,
        hold_timeout=hold_timeout,
    )
    code = run(config, host=host, port=port, drain_timeout=drain_timeout, log_level=log_level)
    if code:
        raise typer.Exit(code)
