"""Fixtures shared by every test package."""

from __future__ import annotations

from collections.abc import Callable
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
