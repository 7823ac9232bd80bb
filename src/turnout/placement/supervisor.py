"""Supervising one engine process: start it, watch it become ready, keep it alive, stop it.

One supervisor task per replica (:meth:`Supervisor.supervise`) watches its process: it marks
the replica READY once the engine's ready path answers 200; while READY it checks the health
path every few seconds and kills a process that stops answering (a hung engine, a frozen
process), so it restarts; it restarts a crashed process on the same port with doubling backoff,
and marks it FAILED, with the last lines of its log as the error, when it fails to load or
crashes too often. ``shutdown`` is a named sequence: DRAINING, SIGTERM, wait for the drain
deadline, SIGKILL the engine's whole session, sweep leftovers.
"""

from __future__ import annotations

import asyncio
import logging
import os
import signal
from contextlib import suppress
from dataclasses import dataclass
from pathlib import Path

import httpx

from turnout.placement import process
from turnout.placement.base import ReplicaHandle
from turnout.placement.engines import engine_environment
from turnout.states import ReplicaState

logger = logging.getLogger(__name__)


@dataclass(frozen=True, slots=True)
class SupervisionConfig:
    max_restarts: int = 3  # consecutive crashes restarted before the replica is FAILED
    restart_backoff: float = 1.0  # first restart delay; doubles per consecutive crash
    restart_backoff_max: float = 30.0
    probe_timeout: float = 2.0  # one GET of the ready path
    ready_poll_interval: float = 0.25  # the ready-path poll while STARTING
    health_interval: float = 5.0  # the health-path check while READY
    health_timeout: float = 5.0  # one health check's bound
    unhealthy_after: int = 2  # failed health checks in a row before the process is killed
    stable_after: float = 600.0  # READY this long: the crash streak starts over
    kill_wait: float = 10.0  # how long to wait for a SIGKILLed process to be reaped
    log_tail_lines: int = 20  # lines of the engine's log quoted in a FAILED error


@dataclass(eq=False)
class ReplicaProcess:
    """Mutable bookkeeping for one replica's process; only placement modules see it."""

    replica_id: str
    port: int
    log_path: Path
    ready_path: str
    health_path: str
    labels: dict[str, str]
    #: What (re)starts it: kept in its pid file, so an adopted replica restarts the same way.
    argv: list[str]
    env: dict[str, str]
    gpus: tuple[int, ...]
    served_name: str
    model_dir: str
    address: str = ""
    state: ReplicaState = ReplicaState.STARTING
    restarts: int = 0
    crash_streak: int = 0
    error: str | None = None
    proc: asyncio.subprocess.Process | None = None  # None when adopted (not our child)
    pid: int | None = None
    start_ticks: int | None = None
    log_offset: int = 0
    ready_since: float | None = None
    stopping: bool = False
    #: Consecutive failed liveness checks while READY.
    missed_health: int = 0
    supervisor: asyncio.Task[None] | None = None
    stopper: asyncio.Task[None] | None = None

    def handle(self, node: str) -> ReplicaHandle:
        return ReplicaHandle(self.replica_id, self.address, self.pid, node, self.gpus)


class Supervisor:
    """Runs and watches replica processes for a placement (which keeps the table of them)."""

    def __init__(
        self, config: SupervisionConfig, records_dir: Path, python: str, die_with_parent: bool
    ) -> None:
        self.config = config
        self.records_dir = records_dir
        self.python = python
        self.die_with_parent = die_with_parent
        self.closing = False
        # trust_env=False: a proxy from the environment must never see loopback probes.
        self.http = httpx.AsyncClient(timeout=config.probe_timeout, trust_env=False)

    async def close(self) -> None:
        self.closing = True
        await self.http.aclose()

    async def spawn(self, rep: ReplicaProcess) -> bool:
        """Start one process for ``rep``; on an OS error mark it FAILED and return False."""
        argv = rep.argv
        if self.die_with_parent:
            argv = [self.python, "-I", "-S", "-c", process.DIE_WITH_PARENT, str(os.getpid())]
            argv += rep.argv
        # Allow-listed, never all of ours: the server's secrets stay in the server.
        env = {**engine_environment(os.environ), "PYTHONUNBUFFERED": "1", **rep.env}
        with rep.log_path.open("ab") as log:
            log.write(f"--- turnout: starting {rep.replica_id}: {' '.join(rep.argv)}\n".encode())
            log.flush()
            rep.log_offset = log.tell()
            try:
                rep.proc = await asyncio.create_subprocess_exec(
                    *argv,
                    stdin=asyncio.subprocess.DEVNULL,
                    stdout=log,
                    stderr=asyncio.subprocess.STDOUT,
                    env=env,
                    # Its own session: it outlives us, and stop kills its whole tree.
                    start_new_session=True,
                )
            except OSError as exc:
                self.fail(rep, f"could not start {argv[0]!r}: {exc}")
                return False
        rep.pid = rep.proc.pid
        rep.missed_health = 0
        stat = process.read_stat(rep.pid)
        rep.start_ticks = None if stat is None else stat.start_ticks
        rep.state = ReplicaState.STARTING
        rep.ready_since = None
        self.save_record(rep)
        logger.info("replica %s started: pid %d at %s", rep.replica_id, rep.pid, rep.address)
        return True

    def save_record(self, rep: ReplicaProcess) -> None:
        process.write_record(self.records_dir, self._record(rep))

    def _record(self, rep: ReplicaProcess) -> process.ReplicaRecord:
        assert rep.pid is not None
        return process.ReplicaRecord(
            replica_id=rep.replica_id,
            pid=rep.pid,
            start_ticks=rep.start_ticks,
            port=rep.port,
            address=rep.address,
            ready_path=rep.ready_path,
            health_path=rep.health_path,
            log_path=str(rep.log_path),
            log_offset=rep.log_offset,
            endpoint_id=rep.labels["endpoint_id"],
            deployment_id=rep.labels["deployment_id"],
            served_name=rep.served_name,
            model_dir=rep.model_dir,
            argv=list(rep.argv),
            env=dict(rep.env),
            gpus=list(rep.gpus),
        )

    def running(self, rep: ReplicaProcess) -> bool:
        if rep.pid is None:
            return False
        if rep.proc is not None:
            return rep.proc.returncode is None
        return process.is_alive(rep.pid, rep.start_ticks)

    async def _wait_exit(self, rep: ReplicaProcess) -> int | None:
        """Wait for the replica's process to end; its return code when it is our child."""
        if rep.proc is not None:
            return await rep.proc.wait()
        # An adopted process is not our child: we cannot wait() on it, only watch /proc.
        while self.running(rep):
            await asyncio.sleep(self.config.ready_poll_interval)
        return None

    async def _exits_within(self, rep: ReplicaProcess, timeout: float) -> bool:
        try:
            await asyncio.wait_for(self._wait_exit(rep), timeout)
        except TimeoutError:
            return False
        return True

    def send(self, pid: int, sig: signal.Signals, *, group: bool) -> None:
        with suppress(ProcessLookupError, PermissionError):
            if group:
                os.killpg(pid, sig)
            else:
                os.kill(pid, sig)

    def sweep_session(self, sid: int | None, start_ticks: int | None) -> int:
        """SIGKILL whatever is left of an engine tree whose leader has exited."""
        if sid is None:
            return 0
        members = process.session_members(sid, start_ticks)
        for pid in members:
            self.send(pid, signal.SIGKILL, group=False)
        return len(members)

    # -- Readiness, liveness and restarts -----------------------------------------------

    async def check_ready(self, rep: ReplicaProcess) -> None:
        pid = rep.pid
        try:
            resp = await self.http.get(rep.address + rep.ready_path)
        except httpx.HTTPError:
            return
        # Only the incarnation we asked may become READY (a restart may have happened since).
        if resp.status_code == 200 and rep.pid == pid and rep.state is ReplicaState.STARTING:
            rep.state = ReplicaState.READY
            rep.ready_since = asyncio.get_running_loop().time()
            logger.info("replica %s is ready (pid %s)", rep.replica_id, pid)

    async def _watch(self, rep: ReplicaProcess) -> int | None:
        """Poll the ready path while STARTING, then the health path while READY (a process
        that lives but does not answer is killed, so it restarts); return when it exits."""
        exited = asyncio.ensure_future(self._wait_exit(rep))
        try:
            while not exited.done():
                starting = rep.state is ReplicaState.STARTING
                interval = (
                    self.config.ready_poll_interval if starting else self.config.health_interval
                )
                await asyncio.wait({exited}, timeout=interval)
                if exited.done():
                    break
                if rep.state is ReplicaState.STARTING:
                    await self.check_ready(rep)
                elif rep.state is ReplicaState.READY:
                    await self._check_alive(rep)
            return await exited
        finally:
            exited.cancel()

    async def _check_alive(self, rep: ReplicaProcess) -> None:
        """One liveness check of a READY replica's health path (with a timeout)."""
        try:
            resp = await self.http.get(
                rep.address + rep.health_path, timeout=self.config.health_timeout
            )
            healthy = resp.status_code == 200
            why = f"{rep.health_path} answered {resp.status_code}"
        except httpx.HTTPError as exc:
            healthy = False
            bound = self.config.health_timeout
            why = f"{rep.health_path} did not answer within {bound:g}s ({exc!r})"
        if healthy:
            rep.missed_health = 0
            return
        rep.missed_health += 1
        logger.warning("replica %s is unhealthy (%d): %s", rep.replica_id, rep.missed_health, why)
        if rep.missed_health >= self.config.unhealthy_after and rep.pid is not None:
            # Alive but not serving: out of routing now, and restarted (a crash, from here on).
            rep.error = f"unhealthy: {why}, {rep.missed_health} times in a row; killed to restart"
            rep.state = ReplicaState.RESTARTING
            self.send(rep.pid, signal.SIGKILL, group=True)

    async def supervise(self, rep: ReplicaProcess) -> None:
        """Watch one replica until it is stopped or fails; restart it after crashes."""
        try:
            while not self.closing and not rep.stopping:
                returncode = await self._watch(rep)
                if rep.stopping or self.closing:
                    return
                if not await self._after_crash(rep, returncode):
                    return
        except Exception as exc:  # the one guarded boundary of this loop
            logger.exception("supervisor of replica %s crashed", rep.replica_id)
            self.fail(rep, f"placement supervisor error: {exc!r}")

    async def _after_crash(self, rep: ReplicaProcess, returncode: int | None) -> bool:
        """Decide after an unexpected exit: restart (True) or mark FAILED (False)."""
        how = process.describe_exit(returncode)
        loop_time = asyncio.get_running_loop().time()
        if rep.ready_since is not None and loop_time - rep.ready_since >= self.config.stable_after:
            rep.crash_streak = 0
        rep.crash_streak += 1
        adopted = rep.labels.get("adopted") == "true"
        if rep.restarts == 0 and rep.ready_since is None and not adopted:
            reason = f"replica {rep.replica_id} {how} before becoming ready"
        elif rep.crash_streak > self.config.max_restarts:
            reason = f"replica {rep.replica_id} {how}; {rep.crash_streak} crashes in a row"
        else:
            await self._restart(rep, how)
            return rep.state is not ReplicaState.FAILED
        tail = process.log_tail(rep.log_path, rep.log_offset, self.config.log_tail_lines)
        self.fail(rep, f"{reason}. Last lines of {rep.log_path}:\n{tail}")
        return False

    async def _restart(self, rep: ReplicaProcess, how: str) -> None:
        rep.state = ReplicaState.RESTARTING
        rep.restarts += 1
        delay = min(
            self.config.restart_backoff * 2 ** (rep.crash_streak - 1),
            self.config.restart_backoff_max,
        )
        logger.warning(
            "replica %s %s; restart %d in %.1fs", rep.replica_id, how, rep.restarts, delay
        )
        # The crashed engine may have left children in its session; they would hold the port.
        self.sweep_session(rep.pid, rep.start_ticks)
        await asyncio.sleep(delay)
        if not (rep.stopping or self.closing):
            await self.spawn(rep)

    def fail(self, rep: ReplicaProcess, error: str) -> None:
        rep.state = ReplicaState.FAILED
        rep.error = error
        process.remove_record(self.records_dir, rep.replica_id)
        logger.error("replica %s failed: %s", rep.replica_id, error)

    # -- Stopping -----------------------------------------------------------------------

    async def shutdown(self, rep: ReplicaProcess, drain_timeout: float) -> None:
        """Stop one replica in named steps; never restarts it."""
        # 1. Draining: the caller routes no new requests here; the supervisor stands down.
        rep.stopping = True
        rep.state = ReplicaState.DRAINING
        await cancel(rep.supervisor)
        outcome = "was not running"
        if rep.pid is not None and self.running(rep):
            # 2. SIGTERM the leader only: it drains in-flight requests and stops its workers.
            self.send(rep.pid, signal.SIGTERM, group=False)
            outcome = "exited after SIGTERM"
            # 3. Wait for the drain deadline.
            if not await self._exits_within(rep, drain_timeout):
                # 4. SIGKILL the whole session while the leader still holds its id.
                self.send(rep.pid, signal.SIGKILL, group=True)
                outcome = "killed after the drain deadline"
                if not await self._exits_within(rep, self.config.kill_wait):
                    outcome = "did not exit after SIGKILL"
        # 5. Sweep what the engine left in its session, then forget the pid file.
        swept = self.sweep_session(rep.pid, rep.start_ticks)
        process.remove_record(self.records_dir, rep.replica_id)
        rep.state = ReplicaState.STOPPED
        msg = "replica %s stopped: %s; %d leftover process(es) killed"
        logger.info(msg, rep.replica_id, outcome, swept)


async def cancel(task: asyncio.Task[None] | None) -> None:
    # asyncio.wait, not `await task`: our own cancellation must still propagate.
    if task is not None and not task.done():
        task.cancel()
        await asyncio.wait({task})
