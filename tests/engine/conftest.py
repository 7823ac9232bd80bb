from __future__ import annotations

from collections.abc import Callable, Iterator
from pathlib import Path

import httpx
import pytest

from tests.engine.harness import EngineProcess


@pytest.fixture(scope="module")
def engine(tiny_model: Callable[..., Path]) -> Iterator[EngineProcess]:
    proc = EngineProcess(tiny_model(seed=0))
    try:
        proc.wait_ready()
        yield proc
    finally:
        proc.close()


@pytest.fixture()
def client(engine: EngineProcess) -> Iterator[httpx.Client]:
    with httpx.Client(base_url=engine.url, timeout=60) as c:
        yield c
