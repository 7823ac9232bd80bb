"""Shared set-up of the hardening tests: a deployed server whose extra endpoint ``acme-stub``
runs the fast stub engine (tests/e2e/stub_engine.py), plus small wire helpers."""

from __future__ import annotations

import json
import os
import signal
from pathlib import Path
from typing import Any

import httpx

from tests.conftest import TinyModelFactory
from tests.e2e.rollout_env import Deployed, make_deployed

STUB = Path(__file__).with_name("stub_engine.py")
STUB_ENDPOINT = "acme-stub"
#: A token long enough for the server to accept it (32 characters or more).
ADMIN_TOKEN = "hardening-admin-token-0123456789abcdef"


def stub_template(gate_dir: Path, *, chunks: int = 20, delay: float = 0.0) -> dict[str, Any]:
    argv = [
        "{python}", str(STUB), "--host", "{host}", "--port", "{port}",
        "--served-name", "{served_name}", "--model-dir", "{model_dir}",
        "--gate-dir", str(gate_dir), "--chunks", str(chunks), "--delay", str(delay),
    ]  # fmt: skip
    return {"argv": argv, "health_path": "/health", "ready_path": "/ready"}


def deployed_with_stub(
    root: Path,
    tiny_model: TinyModelFactory,
    env: dict[str, str] | None = None,
    *,
    chunks: int = 20,
    delay: float = 0.0,
    replicas: int = 1,
) -> tuple[Deployed, Path]:
    """A running server (org acme, versions v1/v2 synced) with endpoint ``acme-stub``; returns
    it and the stub engines' gate dir. ``deployed.endpoint`` is the stub endpoint."""
    gates = root / "gates"
    gates.mkdir(parents=True, exist_ok=True)
    templates = root / "engines.json"
    templates.write_text(json.dumps({"stub": stub_template(gates, chunks=chunks, delay=delay)}))
    deployed = make_deployed(
        root,
        tiny_model,
        {"TURNOUT_ENGINE_TEMPLATES": str(templates), "TURNOUT_ADMIN_TOKEN": ADMIN_TOKEN,
         **(env or {})},
    )  # fmt: skip
    deployed.server.cli(
        "admin", "endpoint", "create", STUB_ENDPOINT, "--org", "acme", "--arch", "tiny-llama",
        "--engine", "stub", "--replicas", str(replicas),
    )  # fmt: skip
    deployed.endpoint = STUB_ENDPOINT
    return deployed, gates


def chat(
    env: Deployed, endpoint: str | None = None, *, key: str | None = None, **extra: Any
) -> httpx.Response:
    return httpx.post(
        env.server.url + "/v1/chat/completions",
        headers={"Authorization": f"Bearer {key or env.inference_key}"},
        json={
            "model": endpoint or env.endpoint,
            "messages": [{"role": "user", "content": "hi"}],
            "max_tokens": 4,
            **extra,
        },
        timeout=60,
        trust_env=False,
    )


def engine_pids(env: Deployed) -> set[int]:
    """Pids of every engine process the server's local placement has a record of."""
    records = env.server.data_dir / "run" / "replicas"
    return {int(json.loads(p.read_text())["pid"]) for p in records.glob("*.json")}


def alive(pid: int) -> bool:
    try:
        with open(f"/proc/{pid}/stat") as stat:
            return stat.read().split(") ", 1)[1][0] != "Z"
    except OSError:
        return False


def kill_leftovers(pids: set[int]) -> None:
    """Test clean-up only: never leave an engine behind a failed test."""
    for pid in pids:
        if alive(pid):
            try:
                os.kill(pid, signal.SIGKILL)
            except OSError:
                pass
