"""Fixtures shared by every test package."""

from __future__ import annotations

import contextlib
import json
import os
import signal
from collections.abc import Callable, Iterator
from pathlib import Path

import pytest

TinyModelFactory = Callable[..., Path]


@pytest.fixture(scope="session")
def tiny_model(tmp_path_factory: pytest.TempPathFactory) -> TinyModelFactory:
    """Build (once per seed and arch) a random-weight HF model directory; returns its path."""
    from turnout.registry.tinymodel import write_tiny_model

    built: dict[tuple[str, int], Path] = {}

    def make(seed: int = 0, arch_id: str = "tiny-llama") -> Path:
        key = (arch_id, seed)
        if key not in built:
            out = tmp_path_factory.mktemp(f"{arch_id}-seed{seed}")
            write_tiny_model(out, arch_id=arch_id, seed=seed)
            built[key] = out
        return built[key]

    return make


@pytest.fixture
def anyio_backend() -> str:
    return "asyncio"


@pytest.fixture(scope="session", autouse=True)
def no_engine_outlives_the_tests(tmp_path_factory: pytest.TempPathFactory) -> Iterator[None]:
    """Replicas outlive the server that started them (by design); tests that end with a killed
    or role=worker server leave them running. Stop every engine a test's data dir recorded."""
    yield
    reap_replicas(tmp_path_factory.getbasetemp())


def reap_replicas(root: Path) -> int:
    """SIGKILL the engine sessions recorded under ``root`` (pid files of local placement)."""
    from turnout.placement import process

    killed = 0
    for path in root.rglob("run/replicas/*.json"):
        try:
            rec = json.loads(path.read_text())
        except (OSError, ValueError):
            continue
        if process.is_alive(rec["pid"], rec.get("start_ticks")):
            with contextlib.suppress(ProcessLookupError, PermissionError):
                os.killpg(rec["pid"], signal.SIGKILL)
            killed += 1
    return killed
