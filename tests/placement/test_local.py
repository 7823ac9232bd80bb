"""LocalPlacement lifecycle against the fake engine: ready, restart, fail, stop, close."""

from __future__ import annotations

import asyncio
import dataclasses
import json
import os
import signal
from pathlib import Path

import httpx
import pytest

from turnout.placement import process
from turnout.placement.base import (
    EngineCommand,
    Placement,
    ReplicaHandle,
    ReplicaSpec,
    ReplicaState,
)
from turnout.placement.local import LocalPlacement, LocalPlacementConfig

from .conftest import SpecFactory, WaitStatus, grandchild_pid, our_children, wait_gone

READY = ReplicaState.READY
FAILED = ReplicaState.FAILED


def _chat(address: str) -> str:
    resp = httpx.post(
        f"{address}/v1/chat/completions",
        json={"model": "fake", "messages": [{"role": "user", "content": "hi"}]},
        timeout=10,
        trust_env=False,
    )
    resp.raise_for_status()
    content: str = resp.json()["choices"][0]["message"]["content"]
    return content


def test_local_placement_satisfies_the_protocol(config: LocalPlacementConfig) -> None:
    placement: Placement = LocalPlacement(config)  # mypy checks the assignment
    assert isinstance(placement, LocalPlacement)


def test_starting_until_ready_path_answers_then_ready(
    config: LocalPlacementConfig, fake_spec: SpecFactory, wait_status: WaitStatus, tmp_path: Path
) -> None:
    ready_file = tmp_path / "ready-now"

    async def scenario() -> None:
        placement = LocalPlacement(config)
        try:
            handle = await placement.start(fake_spec("r1", "--ready-file", str(ready_file)))
            assert handle.address.startswith("http://127.0.0.1:")
            assert handle.pid is not None
            # The engine answers /health but /ready says 503 until the file exists.
            status = await wait_status(
                placement, handle, lambda s: s.state is ReplicaState.STARTING
            )
            await asyncio.sleep(0.3)  # several supervisor polls: still not ready
            assert (await placement.probe(handle)).state is ReplicaState.STARTING
            ready_file.touch()
            status = await wait_status(placement, handle, lambda s: s.state is READY)
            assert status.handle == handle
            assert status.labels["endpoint_id"] == "ep1"
            assert _chat(handle.address) == "hello from fake"
            assert await placement.list_alive() == [handle]
        finally:
            await placement.close()

    asyncio.run(scenario())


def test_log_and_pid_file_are_kept_in_run_dir(
    config: LocalPlacementConfig, fake_spec: SpecFactory, wait_status: WaitStatus
) -> None:
    async def scenario() -> None:
        placement = LocalPlacement(config)
        try:
            handle = await placement.start(fake_spec("r1"))
            status = await wait_status(placement, handle, lambda s: s.state is READY)
            assert status.log_path == config.run_dir / "logs" / "r1.log"
            assert f"pid {handle.pid} starting" in status.log_path.read_text()
            record = json.loads((config.run_dir / "replicas" / "r1.json").read_text())
            assert record["pid"] == handle.pid
            assert record["address"] == handle.address
            stat = process.read_stat(record["pid"])
            assert stat is not None and record["start_ticks"] == stat.start_ticks
            await placement.stop(handle, drain_timeout=10)
            assert not (config.run_dir / "replicas" / "r1.json").exists()
        finally:
            await placement.close()

    asyncio.run(scenario())


def test_sigkilled_replica_is_restarted_on_same_address_and_serves(
    config: LocalPlacementConfig, fake_spec: SpecFactory, wait_status: WaitStatus
) -> None:
    async def scenario() -> None:
        placement = LocalPlacement(config)
        try:
            handle = await placement.start(fake_spec("r1"))
            await wait_status(placement, handle, lambda s: s.state is READY)
            assert handle.pid is not None
            os.kill(handle.pid, signal.SIGKILL)
            status = await wait_status(
                placement,
                handle,
                lambda s: s.state is READY and s.handle.pid != handle.pid,
            )
            assert status.restarts == 1
            assert status.handle.address == handle.address
            assert _chat(handle.address) == "hello from fake"
            assert await placement.list_alive() == [status.handle]
        finally:
            await placement.close()

    asyncio.run(scenario())


def test_repeated_crashes_fail_after_max_restarts(
    config: LocalPlacementConfig, fake_spec: SpecFactory, wait_status: WaitStatus
) -> None:
    async def scenario() -> None:
        placement = LocalPlacement(config)
        try:
            handle = await placement.start(fake_spec("r1"))
            killed: set[int | None] = {None}
            for _ in range(config.supervision.max_restarts + 1):
                # Wait for a READY incarnation we have not killed yet, then kill it.
                status = await wait_status(
                    placement, handle, lambda s: s.state is READY and s.handle.pid not in killed
                )
                assert status.handle.pid is not None
                os.kill(status.handle.pid, signal.SIGKILL)
                killed.add(status.handle.pid)
            status = await wait_status(placement, handle, lambda s: s.state is FAILED)
            assert status.restarts == config.supervision.max_restarts
            assert status.error is not None
            assert "SIGKILL" in status.error
            assert "crashes in a row" in status.error
            assert await placement.list_alive() == []
        finally:
            await placement.close()

    asyncio.run(scenario())


def test_load_failure_is_failed_with_the_engines_error(
    config: LocalPlacementConfig, fake_spec: SpecFactory, wait_status: WaitStatus
) -> None:
    async def scenario() -> None:
        placement = LocalPlacement(config)
        try:
            spec = fake_spec("r1", "--fail-at-start", "cannot load weights: tensor x is corrupt")
            handle = await placement.start(spec)
            status = await wait_status(
                placement, handle, lambda s: s.state not in (ReplicaState.STARTING,)
            )
            assert status.state is FAILED
            assert status.restarts == 0
            assert status.error is not None
            assert "cannot load weights: tensor x is corrupt" in status.error
            assert "before becoming ready" in status.error
            assert not (config.run_dir / "replicas" / "r1.json").exists()
        finally:
            await placement.close()

    asyncio.run(scenario())


def test_missing_engine_binary_is_failed_not_starting(
    config: LocalPlacementConfig, wait_status: WaitStatus, tmp_path: Path
) -> None:
    async def scenario() -> None:
        placement = LocalPlacement(config)
        try:
            engine = EngineCommand(argv=("/nonexistent/engine", "--port", "{port}"))
            handle = await placement.start(
                ReplicaSpec("r1", "ep1", "dep1", tmp_path, "fake", engine=engine)
            )
            status = await wait_status(placement, handle, lambda s: s.state is FAILED)
            assert status.error is not None and "/nonexistent/engine" in status.error
        finally:
            await placement.close()

    asyncio.run(scenario())


def test_bad_argv_template_and_duplicate_start_raise(
    config: LocalPlacementConfig, fake_spec: SpecFactory, tmp_path: Path
) -> None:
    async def scenario() -> None:
        placement = LocalPlacement(config)
        try:
            engine = EngineCommand(argv=("{python}", "{no_such_placeholder}"))
            with pytest.raises(ValueError, match="no_such_placeholder"):
                await placement.start(ReplicaSpec("bad", "ep", "dep", tmp_path, "x", engine=engine))
            with pytest.raises(ValueError, match="must match"):
                await placement.start(fake_spec("../escape"))
            await placement.start(fake_spec("r1"))
            with pytest.raises(ValueError, match="already running"):
                await placement.start(fake_spec("r1"))
        finally:
            await placement.close()

    asyncio.run(scenario())


def test_stop_sends_sigterm_and_does_not_restart(
    config: LocalPlacementConfig, fake_spec: SpecFactory, wait_status: WaitStatus
) -> None:
    async def scenario() -> None:
        placement = LocalPlacement(config)
        try:
            handle = await placement.start(fake_spec("r1"))
            status = await wait_status(placement, handle, lambda s: s.state is READY)
            await placement.stop(handle, drain_timeout=30)
            assert handle.pid is not None and wait_gone(handle.pid)
            status = await placement.probe(handle)
            assert status.state is ReplicaState.STOPPED
            assert status.restarts == 0
            assert status.log_path is not None
            log = status.log_path.read_text()
            assert "SIGTERM, draining" in log and "exited cleanly" in log
            assert await placement.list_alive() == []
            assert our_children() == []
            await placement.stop(handle, drain_timeout=1)  # idempotent
        finally:
            await placement.close()

    asyncio.run(scenario())


def test_stop_kills_a_replica_that_ignores_sigterm(
    config: LocalPlacementConfig, fake_spec: SpecFactory, wait_status: WaitStatus
) -> None:
    async def scenario() -> None:
        placement = LocalPlacement(config)
        try:
            handle = await placement.start(fake_spec("r1", "--ignore-sigterm"))
            await wait_status(placement, handle, lambda s: s.state is READY)
            await placement.stop(handle, drain_timeout=0.5)
            assert handle.pid is not None and wait_gone(handle.pid)
            status = await placement.probe(handle)
            assert status.state is ReplicaState.STOPPED
            assert status.log_path is not None
            log = status.log_path.read_text()
            assert "ignoring SIGTERM" in log and "exited cleanly" not in log
        finally:
            await placement.close()

    asyncio.run(scenario())


def test_close_leaves_no_child_process(
    config: LocalPlacementConfig, fake_spec: SpecFactory, wait_status: WaitStatus
) -> None:
    async def scenario() -> list[int]:
        placement = LocalPlacement(config)
        handles: list[ReplicaHandle] = []
        try:
            handles.append(await placement.start(fake_spec("plain")))
            handles.append(await placement.start(fake_spec("tree", "--spawn-child")))
            handles.append(await placement.start(fake_spec("stubborn", "--ignore-sigterm")))
            for handle in handles:
                await wait_status(placement, handle, lambda s: s.state is READY)
            grandchild = grandchild_pid(config.run_dir / "logs" / "tree.log")
            assert process.is_alive(grandchild, None)
        finally:
            await placement.close()
        return [h.pid for h in handles if h.pid is not None] + [grandchild]

    config = dataclasses.replace(config, close_drain_timeout=1.0)  # the stubborn one waits
    pids = asyncio.run(scenario())
    assert len(pids) == 4
    for pid in pids:
        assert wait_gone(pid), f"pid {pid} outlived close()"
    assert our_children() == []


def test_probe_of_unknown_handle_is_stopped_with_an_error(config: LocalPlacementConfig) -> None:
    async def scenario() -> None:
        placement = LocalPlacement(config)
        status = await placement.probe(ReplicaHandle("ghost", "http://127.0.0.1:1", 1))
        assert status.state is ReplicaState.STOPPED
        assert status.error is not None and "ghost" in status.error
        await placement.close()

    asyncio.run(scenario())
