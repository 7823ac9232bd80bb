"""Fixtures for placement tests: a fake-engine spec factory and bounded waits."""

from __future__ import annotations

import asyncio
import os
import re
import time
from collections.abc import Awaitable, Callable
from pathlib import Path

import pytest

from turnout.placement import process
from turnout.placement.base import EngineCommand, ReplicaHandle, ReplicaSpec, ReplicaStatus
from turnout.placement.local import LocalPlacement, LocalPlacementConfig
from turnout.placement.supervisor import SupervisionConfig

FAKE_ENGINE = Path(__file__).with_name("fake_engine.py")

SpecFactory = Callable[..., ReplicaSpec]
StatusPredicate = Callable[[ReplicaStatus], bool]
WaitStatus = Callable[..., Awaitable[ReplicaStatus]]


@pytest.fixture
def config(tmp_path: Path) -> LocalPlacementConfig:
    # Short backoff and poll interval keep tests quick; nothing asserts on timing.
    return LocalPlacementConfig(
        run_dir=tmp_path / "run",
        supervision=SupervisionConfig(
            max_restarts=2, restart_backoff=0.05, ready_poll_interval=0.05
        ),
    )


@pytest.fixture
def fake_spec(tmp_path: Path) -> SpecFactory:
    def make(replica_id: str = "r1", *flags: str) -> ReplicaSpec:
        engine = EngineCommand(
            argv=("{python}", str(FAKE_ENGINE), "--host", "{host}", "--port", "{port}", *flags)
        )
        return ReplicaSpec(replica_id, "ep1", "dep1", tmp_path, "fake", engine=engine)

    return make


async def _wait_status(
    placement: LocalPlacement,
    handle: ReplicaHandle,
    until: StatusPredicate,
    timeout: float = 60.0,
) -> ReplicaStatus:
    """Probe until ``until(status)`` holds; fail the test (not hang) after ``timeout``."""
    loop = asyncio.get_running_loop()
    deadline = loop.time() + timeout
    status = await placement.probe(handle)
    while not until(status):
        if loop.time() > deadline:
            raise AssertionError(f"replica never reached the expected status; last: {status}")
        await asyncio.sleep(0.05)
        status = await placement.probe(handle)
    return status


@pytest.fixture
def wait_status() -> WaitStatus:
    return _wait_status


def wait_gone(pid: int, start_ticks: int | None = None, timeout: float = 30.0) -> bool:
    """True once ``pid`` no longer runs (a zombie counts as gone), within ``timeout``."""
    deadline = time.monotonic() + timeout
    while process.is_alive(pid, start_ticks):
        if time.monotonic() > deadline:
            return False
        time.sleep(0.05)
    return True


def children_of(pid: int) -> list[int]:
    """Every process (zombies included: they were never reaped) whose parent is ``pid``."""
    found = []
    for entry in Path("/proc").iterdir():
        if entry.name.isdigit():
            stat = process.read_stat(int(entry.name))
            if stat is not None and stat.ppid == pid:
                found.append(stat.pid)
    return found


def our_children() -> list[int]:
    return children_of(os.getpid())


def grandchild_pid(log_path: Path, timeout: float = 30.0) -> int:
    """The pid the fake engine printed for the child it spawned (``--spawn-child``)."""
    deadline = time.monotonic() + timeout
    while time.monotonic() < deadline:
        if log_path.exists():
            match = re.search(r"child_pid=(\d+)", log_path.read_text())
            if match:
                return int(match.group(1))
        time.sleep(0.05)
    raise AssertionError(f"no child_pid line in {log_path}")
