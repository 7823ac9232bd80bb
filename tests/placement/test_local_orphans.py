"""Replicas outlive the process that started them (a crash or kill -9 of Turnout leaves them
serving); the next placement on the same run dir adopts them, restarts them after a crash, and
sweeps what dead ones left behind."""

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
from turnout.placement.base import EngineCommand, ReplicaHandle, ReplicaSpec, ReplicaStatus
from turnout.placement.local import LocalPlacement, LocalPlacementConfig
from turnout.states import ReplicaState

from .conftest import WaitStatus, grandchild_pid, wait_gone

PARENT_SCRIPT = Path(__file__).with_name("orphan_parent.py")
FAKE_ENGINE = Path(__file__).with_name("fake_engine.py")
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


def test_a_replica_outlives_its_sigkilled_parent_and_is_adopted(
    tmp_path: Path, parents: list[Parent], wait_status: WaitStatus
) -> None:
    run_dir = tmp_path / "run"
    parent = Parent(run_dir)
    parents.append(parent)
    parent.kill()
    assert process.is_alive(parent.replica_pid, parent.replica_ticks), "the replica died"
    assert httpx.get(parent.address + "/health", trust_env=False, timeout=10).status_code == 200

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
            assert await placement.recover() == []  # already adopted: nothing new
            # An adopted replica that crashes is restarted the way it was started.
            os.kill(parent.replica_pid, signal.SIGKILL)
            restarted = await wait_status(
                placement,
                handles[0],
                lambda s: s.state is ReplicaState.READY and s.handle.pid != parent.replica_pid,
            )
            assert restarted.restarts == 1
            assert httpx.get(parent.address + "/health", trust_env=False).status_code == 200
            await placement.stop(restarted.handle, drain_timeout=10)
            assert restarted.handle.pid is not None and wait_gone(restarted.handle.pid)
            assert (await placement.probe(handles[0])).state is ReplicaState.STOPPED
            assert not (run_dir / "replicas" / "orphan.json").exists()
        finally:
            await placement.close()

    asyncio.run(scenario())


def test_close_leaves_replicas_serving_unless_told_to_stop_them(
    tmp_path: Path, wait_status: WaitStatus
) -> None:
    run_dir = tmp_path / "run"
    engine = EngineCommand(argv=("{python}", str(FAKE_ENGINE), "--port", "{port}"))

    async def start_one(replica_id: str) -> tuple[LocalPlacement, ReplicaStatus]:
        placement = LocalPlacement(LocalPlacementConfig(run_dir=run_dir))
        spec = ReplicaSpec(replica_id, "ep", "dep", run_dir, "fake", engine=engine)
        handle = await placement.start(spec)
        ready = await wait_status(placement, handle, lambda s: s.state is ReplicaState.READY)
        return placement, ready

    async def scenario() -> None:
        placement, kept = await start_one("kept")
        await placement.close(stop_replicas=False)  # e.g. a worker restarting for an upgrade
        assert kept.handle.pid is not None and process.is_alive(kept.handle.pid, None)
        placement, _ = await start_one("other")
        assert {h.replica_id for h in await placement.list_alive()} == {"kept", "other"}
        await placement.close(stop_replicas=True)  # an orderly stop of the all-in-one server
        assert wait_gone(kept.handle.pid)
        assert not list((run_dir / "replicas").glob("*.json"))

    asyncio.run(scenario())


def test_recover_drops_a_dead_replica_and_kills_its_leftover_children(
    tmp_path: Path, parents: list[Parent]
) -> None:
    # The engine dies while nobody watches it; a child it spawned survives it.
    run_dir = tmp_path / "run"
    parent = Parent(run_dir, "--spawn-child")
    parents.append(parent)
    child = grandchild_pid(run_dir / "logs" / "orphan.log")
    child_stat = process.read_stat(child)
    assert child_stat is not None
    parent.kill()
    os.kill(parent.replica_pid, signal.SIGKILL)
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
