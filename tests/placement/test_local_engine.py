"""LocalPlacement through the real built-in engine (BUILTIN_ENGINE) on a tiny random model."""

from __future__ import annotations

import asyncio
import importlib.util
import os
import shutil
from collections.abc import Callable
from pathlib import Path

import httpx
import pytest

from turnout.placement.base import ReplicaSpec
from turnout.placement.local import LocalPlacement, LocalPlacementConfig
from turnout.states import ReplicaState

from .conftest import WaitStatus, our_children

SRC = Path(__file__).resolve().parents[2] / "src"

pytestmark = [
    pytest.mark.slow,
    pytest.mark.skipif(
        importlib.util.find_spec("turnout.cli.engine") is None
        or importlib.util.find_spec("turnout.registry.tinymodel") is None,
        reason="needs the built-in engine (turnout.cli.engine) and turnout.registry.tinymodel",
    ),
]


def _spec(replica_id: str, model_dir: Path) -> ReplicaSpec:
    # The engine runs `python -m turnout.cli.main`: it must find this checkout's sources.
    pythonpath = os.pathsep.join(p for p in (str(SRC), os.environ.get("PYTHONPATH")) if p)
    return ReplicaSpec(
        replica_id, "ep1", "dep1", model_dir, "tiny", env=(("PYTHONPATH", pythonpath),)
    )


def test_builtin_engine_replica_becomes_ready_and_serves_tokens(
    tmp_path: Path, tiny_model: Callable[..., Path], wait_status: WaitStatus
) -> None:
    model_dir = tiny_model()

    async def scenario() -> None:
        placement = LocalPlacement(LocalPlacementConfig(run_dir=tmp_path / "run"))
        try:
            handle = await placement.start(_spec("real", model_dir))
            status = await wait_status(
                placement,
                handle,
                lambda s: s.state in (ReplicaState.READY, ReplicaState.FAILED),
                timeout=150,
            )
            assert status.state is ReplicaState.READY, status.error
            async with httpx.AsyncClient(trust_env=False, timeout=60) as client:
                resp = await client.post(
                    f"{handle.address}/v1/chat/completions",
                    json={
                        "model": "tiny",
                        "messages": [{"role": "user", "content": "hello"}],
                        "max_tokens": 4,
                    },
                )
            assert resp.status_code == 200, resp.text
            assert resp.json()["usage"]["completion_tokens"] > 0
        finally:
            await placement.close()

    asyncio.run(scenario())
    assert our_children() == []


def test_builtin_engine_with_corrupt_weights_is_failed_with_its_load_error(
    tmp_path: Path, tiny_model: Callable[..., Path], wait_status: WaitStatus
) -> None:
    model_dir = tmp_path / "corrupt"
    shutil.copytree(tiny_model(), model_dir)
    weights = sorted(model_dir.glob("*.safetensors"))
    assert weights, "the tiny model has no safetensors file to corrupt"
    for path in weights:
        path.write_bytes(b"\xff" * 64 + b"not a safetensors file")

    async def scenario() -> None:
        placement = LocalPlacement(LocalPlacementConfig(run_dir=tmp_path / "run"))
        try:
            handle = await placement.start(_spec("corrupt", model_dir))
            status = await wait_status(
                placement,
                handle,
                lambda s: s.state not in (ReplicaState.STARTING,),
                timeout=150,
            )
            assert status.state is ReplicaState.FAILED
            assert status.error is not None and status.log_path is not None
            # The error quotes the engine's own last words, not just an exit code.
            last_line = status.log_path.read_text().rstrip().splitlines()[-1]
            assert last_line in status.error
            assert "before becoming ready" in status.error
        finally:
            await placement.close()

    asyncio.run(scenario())
