"""Named engine command templates an endpoint can run its replicas with."""

from __future__ import annotations

from typing import Final

from turnout.placement.base import BUILTIN_ENGINE, EngineCommand

ENGINES: Final[dict[str, EngineCommand]] = {
    "builtin": BUILTIN_ENGINE,
    "vllm": EngineCommand(
        argv=(
            "vllm", "serve", "{model_dir}", "--host", "{host}", "--port", "{port}",
            "--served-model-name", "{served_name}",
        ),
        health_path="/health",
        ready_path="/health",
    ),
    "sglang": EngineCommand(
        argv=(
            "{python}", "-m", "sglang.launch_server", "--model-path", "{model_dir}",
            "--host", "{host}", "--port", "{port}", "--served-model-name", "{served_name}",
        ),
        health_path="/health",
        ready_path="/health_generate",
    ),
}  # fmt: skip


def known_engines() -> list[str]:
    return sorted(ENGINES)


def engine_command(name: str) -> EngineCommand:
    return ENGINES[name]
