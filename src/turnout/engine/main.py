"""The engine process's own entry: ``python -m turnout.engine serve ...``.

Replicas start through this module, not the ``turnout`` CLI, so an engine process (on a GPU
node, inside a Ray actor) loads the engine and its web server only: none of the control
plane (store, API, rollout) and none of their dependencies. ``turnout engine serve`` parses
the same options with Typer and calls :func:`run`.
"""

from __future__ import annotations

import argparse
import logging
import os
import sys
from collections.abc import Sequence
from pathlib import Path

from turnout.engine.server import EngineConfig

DEVICES_HELP = "cpu, cuda or cuda:N"


def check_device(device: str) -> str:
    if device not in ("cpu", "cuda") and not device.startswith("cuda:"):
        raise ValueError(f"--device must be {DEVICES_HELP}, not {device!r}")
    return device


def default_threads(device: str) -> int | None:
    if device != "cpu":
        return None
    # Leave one core to the event loop and tokenizer: OpenMP workers spin while they wait, and
    # on a small machine they starve the thread that streams tokens (measured: 5x slower).
    return max(1, len(os.sched_getaffinity(0)) - 1)


def run(config: EngineConfig, *, host: str, port: int, drain_timeout: float, log_level: str) -> int:
    """Serve until SIGTERM (in-flight requests drain up to ``drain_timeout``); the exit code."""
    import uvicorn

    from turnout.engine.server import create_engine_app

    logging.basicConfig(
        level=log_level.upper(),
        stream=sys.stderr,
        format="%(asctime)s %(levelname)s %(name)s: %(message)s",
    )
    failures: list[BaseException] = []

    def on_fatal(exc: BaseException) -> None:
        failures.append(exc)
        server.should_exit = True

    server = uvicorn.Server(
        uvicorn.Config(
            create_engine_app(config, on_fatal=on_fatal),
            host=host,
            port=port,
            log_level=log_level,
            timeout_graceful_shutdown=int(drain_timeout),
        )
    )
    server.run()
    if failures:
        print(f"engine failed to start: {failures[0]}", file=sys.stderr)  # noqa: T201
        return 1
    return 0


def parser() -> argparse.ArgumentParser:
    root = argparse.ArgumentParser(prog="python -m turnout.engine")
    commands = root.add_subparsers(dest="command", required=True)
    serve = commands.add_parser(
        "serve", help="Serve one model: /v1/chat/completions, /v1/completions, /health, /ready."
    )
    serve.add_argument("--model-dir", type=Path, required=True, help="HF-format model directory.")
    serve.add_argument("--port", type=int, default=8000)
    serve.add_argument("--host", default="127.0.0.1")
    serve.add_argument("--served-name", help="Model name in responses (default: the dir's name).")
    serve.add_argument("--device", default="cpu", help=DEVICES_HELP)
    serve.add_argument("--max-model-len", type=int, help="Cap on prompt + completion tokens.")
    serve.add_argument("--max-batch-size", type=int, default=16, help="Sequences per step.")
    serve.add_argument(
        "--drain-timeout", type=float, default=30.0, help="Seconds in-flight requests get."
    )
    serve.add_argument("--threads", type=int, help="torch CPU threads (default: cores - 1).")
    serve.add_argument(
        "--stall-timeout",
        type=float,
        default=30.0,
        help="/health answers 503 once work waits this long without a finished step.",
    )
    serve.add_argument(
        "--reload-drain-timeout",
        type=float,
        default=30.0,
        help="A weight swap waits this long for in-flight requests.",
    )
    serve.add_argument(
        "--hold-timeout",
        type=float,
        default=60.0,
        help="Requests arriving during a weight swap wait this long before a 503.",
    )
    serve.add_argument("--log-level", default="info")
    return root


def main(argv: Sequence[str] | None = None) -> int:
    args = parser().parse_args(argv)
    try:
        device = check_device(args.device)
    except ValueError as exc:
        parser().error(str(exc))
    config = EngineConfig(
        model_dir=args.model_dir,
        served_name=args.served_name or args.model_dir.name,
        device=device,
        max_model_len=args.max_model_len,
        max_batch_size=args.max_batch_size,
        threads=args.threads or default_threads(device),
        stall_timeout=args.stall_timeout,
        reload_drain_timeout=args.reload_drain_timeout,
        hold_timeout=args.hold_timeout,
    )
    return run(
        config,
        host=args.host,
        port=args.port,
        drain_timeout=args.drain_timeout,
        log_level=args.log_level,
    )
