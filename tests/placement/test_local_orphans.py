"""No orphans when the parent dies: PDEATHSIG, and recover() for what it cannot cover."""

from __future__ import annotations

import asyncio
import json
import os
import signal
import subprocess
import sys
from collections.abc import Iterator
from pathlib import Path

import httpx
import pytest

from turnout.placement import process
from turnout.placement.base import ReplicaHandle, ReplicaSpec
from turnout.placement.local import LocalPlacement, LocalPlacementConfig
from turnout.states import ReplicaState

from .conftest import WaitStatus, grandchild_pid, wait_gone

PARENT_SCRIPT = Path(__file__).with_name("orphan_parent.py")
SRC = Path(__file__).resolve().parents[2] / "src"


class Parent:
    """A LocalPlacement in its own process (tests/placement/orphan_parent.py)."""

    def __init__(self, run_dir: Path, *flags: str) -> None:
        env = {
            **os.environ,
            "PYTHONPATH": os.pathsep.join([str(SRC), os.environ.get("PYTHONPATH", "")]),
        }
        self.proc = subprocess.Popen(
            [sys.executable, str(PARENT_SCRIPT), str(run_dir), *flags],
            stdout=subprocess.PIPE,
            env=env,
            text=True,
        )
        assert self.proc.stdout is not None
        line = self.proc.stdout.readline()  # bounded by the script's own READY wait
        assert line, "the parent script exited before its replica was ready"
        info = json.loads(line)
        self.replica_pid: int = info["pid"]
        self.address: str = info["address"]
        stat = process.read_stat(self.replica_pid)
        assert stat is not None
        self.replica_ticks = stat.start_ticks

    def kill(self) -> None:
        if self.proc.poll() is None:
            self.proc.send_signal(signal.SIGKILL)
        self.proc.wait(timeout=30)
        if self.proc.stdout is not None:
            self.proc.stdout.close()


@pytest.fixture
def parents() -> Iterator[list[Parent]]:
    started: list[Parent] = []
    yield started
    for parent in started:  # a failed test must not leave its parent behind
        parent.kill()
        if process.is_alive(parent.replica_pid, parent.replica_ticks):
            os.kill(parent.replica_pid, signal.SIGKILL)


def test_replica_dies_when_its_parent_is_sigkilled(tmp_path: Path, parents: list[Parent]) -> None:
    parent = Parent(tmp_path / "run")
    parents.append(parent)
    assert process.is_alive(parent.replica_pid, parent.replica_ticks)
    parent.kill()
    assert wait_gone(parent.replica_pid, parent.replica_ticks), "replica outlived its parent"


def test_recover_adopts_a_live_leftover_and_stops_it(
    tmp_path: Path, parents: list[Parent], wait_status: WaitStatus
) -> None:
    # The engine clears its parent-death signal (as a setuid binary's exec would), so it
    # survives the parent: only the pid file can find it now.
    run_dir = tmp_path / "run"
    parent = Parent(run_dir, "--clear-pdeathsig")
    parents.append(parent)
    parent.kill()
    assert process.is_alive(parent.replica_pid, parent.replica_ticks)

    async def scenario() -> None:
        placement = LocalPlacement(LocalPlacementConfig(run_dir=run_dir))
        try:
            # Starting a replica under the leftover's id adopts it instead of overwriting it.
            with pytest.raises(ValueError, match="already running"):
                await placement.start(ReplicaSpec("orphan", "ep", "dep", run_dir, "fake"))
            handles = await placement.list_alive()
            assert handles == [ReplicaHandle("orphan", parent.address, parent.replica_pid)]
            status = await wait_status(
                placement, handles[0], lambda s: s.state is ReplicaState.READY
            )
            assert status.labels["adopted"] == "true"
            resp = httpx.get(parent.address + "/health", trust_env=False, timeout=10)
            assert resp.status_code == 200
            assert await placement.recover() == []  # already adopted: nothing new
            await placement.stop(handles[0], drain_timeout=10)
            assert wait_gone(parent.replica_pid, parent.replica_ticks)
            assert (await placement.probe(handles[0])).state is ReplicaState.STOPPED
            assert not (run_dir / "replicas" / "orphan.json").exists()
        finally:
            await placement.close()

    asyncio.run(scenario())


def test_recover_drops_a_dead_replica_and_kills_its_leftover_children(
    tmp_path: Path, parents: list[Parent]
) -> None:
    # PDEATHSIG kills only the engine itself; a child the engine spawned survives it.
    run_dir = tmp_path / "run"
    parent = Parent(run_dir, "--spawn-child")
    parents.append(parent)
    child = grandchild_pid(run_dir / "logs" / "orphan.log")
    child_stat = process.read_stat(child)
    assert child_stat is not None
    parent.kill()
    assert wait_gone(parent.replica_pid, parent.replica_ticks)
    assert process.is_alive(child, child_stat.start_ticks)

    async def scenario() -> None:
        placement = LocalPlacement(LocalPlacementConfig(run_dir=run_dir))
        try:
            assert await placement.recover() == []
            assert await placement.list_alive() == []
        finally:
            await placement.close()

    try:
        asyncio.run(scenario())
        assert wait_gone(child, child_stat.start_ticks), "the engine's child outlived recover()"
        assert not (run_dir / "replicas" / "orphan.json").exists()
    finally:
        if process.is_alive(child, child_stat.start_ticks):
            os.kill(child, signal.SIGKILL)


def test_recover_leaves_replicas_of_a_live_owner_alone(
    tmp_path: Path, parents: list[Parent]
) -> None:
    run_dir = tmp_path / "run"
    parent = Parent(run_dir)
    parents.append(parent)

    async def scenario() -> None:
        placement = LocalPlacement(LocalPlacementConfig(run_dir=run_dir))
        try:
            assert await placement.recover() == []
        finally:
            await placement.close()

    asyncio.run(scenario())
    assert process.is_alive(parent.replica_pid, parent.replica_ticks)
    assert (run_dir / "replicas" / "orphan.json").exists()
