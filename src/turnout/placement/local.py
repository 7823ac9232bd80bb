"""Local placement: each replica is an engine subprocess of this machine on a free port.

GPUs: the placement is given the machine's GPU ids (``TURNOUT_GPUS`` or NVML) and hands each
replica its own, never overlapping another live replica's, as ``CUDA_VISIBLE_DEVICES``; a
replica that needs more than are free is refused with :class:`NoCapacity`.

One supervisor task per replica watches its process: it marks the replica READY once the
engine's ready path answers 200, restarts it on the same port after a crash (with doubling
backoff), and marks it FAILED, with the last lines of its log as the error, when it fails to
load or crashes too often. ``stop`` is a named sequence: DRAINING, SIGTERM, wait for the drain
deadline, SIGKILL the engine's whole session, sweep leftovers.

Replicas outlive the process that started them (see docs/placement.md):

- every engine leads a new session, so a crash or kill -9 of Turnout leaves it serving, and
  ``stop`` kills its whole tree, not just the leader;
- every engine has a pid file (:mod:`turnout.placement.process`) with its argv, environment and
  GPUs; :meth:`LocalPlacement.recover` adopts live replicas of a previous incarnation (and can
  restart them after a crash) and kills the remains of dead ones;
- only :meth:`close` with ``stop_replicas`` (an orderly stop of the all-in-one server) stops
  them.

This is the only module that starts processes or sends signals.
"""

from __future__ import annotations

import asyncio
import logging
import os
import re
import signal
import sys
from contextlib import suppress
from dataclasses import dataclass
from pathlib import Path

import httpx

from turnout.placement import process
from turnout.placement.base import (
    Capacity,
    NoCapacity,
    NodeCapacity,
    ReplicaHandle,
    ReplicaSpec,
    ReplicaStatus,
)
from turnout.placement.engines import engine_environment, passed_through, render_argv
from turnout.states import ReplicaState

logger = logging.getLogger(__name__)

_TERMINAL = (ReplicaState.STOPPED, ReplicaState.FAILED)
# Replica ids are the endpoint id (up to 128 characters) plus two suffixes, up to 200 in all
# (the replicas.id column); each names a pid record and a log file (file names: 255 bytes).
_SAFE_ID = re.compile(r"[A-Za-z0-9][A-Za-z0-9._-]{0,199}")


@dataclass(frozen=True, slots=True)
class LocalPlacementConfig:
    run_dir: Path  # logs/<replica_id>.log and replicas/<replica_id>.json live here
    host: str = "127.0.0.1"
    max_restarts: int = 3  # consecutive crashes restarted before the replica is FAILED
    restart_backoff: float = 1.0  # first restart delay; doubles per consecutive crash
    restart_backoff_max: float = 30.0
    probe_timeout: float = 2.0  # one GET of the ready path
    python: str = sys.executable
    ready_poll_interval: float = 0.25  # supervisor's ready-path poll while STARTING
    stable_after: float = 600.0  # READY this long: the crash streak starts over
    close_drain_timeout: float = 10.0  # drain deadline used by close()
    kill_wait: float = 10.0  # how long to wait for a SIGKILLed process to be reaped
    log_tail_lines: int = 20  # lines of the engine's log quoted in a FAILED error
    #: This machine's GPU ids (TURNOUT_GPUS or NVML); empty: no GPUs.
    gpu_ids: tuple[int, ...] = ()
    #: The node name replicas report.
    node: str = "local"
    #: Engines die with this process (PDEATHSIG) instead of outliving it: for the engine a
    #: Ray actor runs, whose lifetime is the actor's.
    die_with_parent: bool = False


@dataclass(eq=False)
class _Replica:
    """Mutable bookkeeping for one replica; only this module sees it."""

    replica_id: str
    port: int
    log_path: Path
    ready_path: str
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
    supervisor: asyncio.Task[None] | None = None
    stopper: asyncio.Task[None] | None = None

    def handle(self, node: str) -> ReplicaHandle:
        return ReplicaHandle(self.replica_id, self.address, self.pid, node, self.gpus)


class LocalPlacement:
    """Runs replicas as subprocesses of this process. Implements ``Placement``."""

    def __init__(self, config: LocalPlacementConfig) -> None:
        self._cfg = config
        self._logs_dir = config.run_dir / "logs"
        self._records_dir = config.run_dir / "replicas"
        self._replicas: dict[str, _Replica] = {}
        self._client: httpx.AsyncClient | None = None
        self._recover_lock = asyncio.Lock()
        self._closing = False

    # -- Placement protocol -------------------------------------------------------------

    async def capacity(self) -> Capacity:
        live = [r for r in self._replicas.values() if r.state not in _TERMINAL]
        used = {g for r in live for g in r.gpus}
        total = len(self._cfg.gpu_ids)
        node = NodeCapacity(self._cfg.node, total, total - len(used), len(live))
        return Capacity((node,))

    async def start(self, spec: ReplicaSpec) -> ReplicaHandle:
        await self._check_can_start(spec.replica_id)
        gpus = self._take_gpus(spec)
        self._logs_dir.mkdir(parents=True, exist_ok=True)
        port = process.free_port(self._cfg.host, self._taken_ports())
        # A bad template raises here, before any process.
        argv = render_argv(
            spec, model_dir=spec.model_dir, host=self._cfg.host, port=port, python=self._cfg.python
        )
        env = {**passed_through(spec.engine, os.environ), **dict(spec.env)}
        if self._cfg.gpu_ids or gpus:
            # Only its own GPUs: none at all for a CPU replica on a GPU machine.
            env["CUDA_VISIBLE_DEVICES"] = ",".join(str(g) for g in gpus)
        rep = _Replica(
            replica_id=spec.replica_id,
            port=port,
            log_path=self._logs_dir / f"{spec.replica_id}.log",
            ready_path=spec.engine.ready_path,
            labels={"endpoint_id": spec.endpoint_id, "deployment_id": spec.deployment_id},
            argv=argv,
            env=env,
            gpus=gpus,
            served_name=spec.served_name,
            model_dir=str(spec.model_dir),
        )
        rep.address = f"http://{self._cfg.host}:{rep.port}"
        rep.labels["port"] = str(rep.port)
        self._replicas[spec.replica_id] = rep
        if await self._spawn(rep):
            rep.supervisor = asyncio.create_task(
                self._supervise(rep), name=f"supervise-{rep.replica_id}"
            )
        return rep.handle(self._cfg.node)

    def _take_gpus(self, spec: ReplicaSpec) -> tuple[int, ...]:
        """The lowest free GPU ids for ``spec``; NoCapacity when too few are free."""
        if spec.gpus <= 0:
            return ()
        used = {g for r in self._replicas.values() if r.state not in _TERMINAL for g in r.gpus}
        free = [g for g in self._cfg.gpu_ids if g not in used]
        if len(free) < spec.gpus:
            raise NoCapacity(
                f"replica {spec.replica_id} needs {spec.gpus} GPU(s); {len(free)} of "
                f"{len(self._cfg.gpu_ids)} are free on {self._cfg.node} (TURNOUT_GPUS or NVML)"
            )
        return tuple(free[: spec.gpus])

    async def probe(self, handle: ReplicaHandle) -> ReplicaStatus:
        rep = self._replicas.get(handle.replica_id)
        if rep is None:
            return ReplicaStatus(
                handle,
                ReplicaState.STOPPED,
                error=f"replica {handle.replica_id} is unknown to this placement "
                "(never started here, or left by a previous run: call recover())",
            )
        if rep.state is ReplicaState.STARTING and not self._closing:
            await self._check_ready(rep)  # answer promptly, not at the next supervisor poll
        return ReplicaStatus(
            rep.handle(self._cfg.node),
            rep.state,
            restarts=rep.restarts,
            error=rep.error,
            log_path=rep.log_path,
            labels=dict(rep.labels),
        )

    async def stop(self, handle: ReplicaHandle, *, drain_timeout: float) -> None:
        rep = self._replicas.get(handle.replica_id)
        if rep is None or rep.state in _TERMINAL:
            return
        if rep.stopper is None:  # a second caller waits for the first stop, never re-signals
            rep.stopper = asyncio.create_task(self._shutdown(rep, drain_timeout))
        await asyncio.shield(rep.stopper)

    async def list_alive(self) -> list[ReplicaHandle]:
        # Adopting here lets a caller that only knows the Protocol see (and stop) leftovers.
        await self.recover()
        node = self._cfg.node
        return [r.handle(node) for r in self._replicas.values() if r.state not in _TERMINAL]

    async def close(self, *, stop_replicas: bool = True) -> None:
        self._closing = True
        node = self._cfg.node
        live = [r.handle(node) for r in self._replicas.values() if r.state not in _TERMINAL]
        if stop_replicas:
            logger.info("closing local placement: stopping %d replica(s)", len(live))
            await asyncio.gather(
                *(self.stop(h, drain_timeout=self._cfg.close_drain_timeout) for h in live)
            )
        else:
            logger.info("closing local placement: %d replica(s) keep serving", len(live))
        for rep in self._replicas.values():
            await _cancel(rep.supervisor)
        if self._client is not None:
            await self._client.aclose()
            self._client = None

    async def _check_can_start(self, replica_id: str) -> None:
        if self._closing:
            raise RuntimeError("LocalPlacement is closed; create a new one to start replicas")
        if not _SAFE_ID.fullmatch(replica_id):  # it names files in run_dir
            raise ValueError(f"replica id {replica_id!r} must match {_SAFE_ID.pattern}")
        record = process.record_path(self._records_dir, replica_id)
        if replica_id not in self._replicas and record.exists():
            await self.recover()  # a leftover with this id is adopted, never overwritten
            if replica_id not in self._replicas and record.exists():
                raise ValueError(f"replica {replica_id} belongs to another live process")
        old = self._replicas.get(replica_id)
        if old is not None and old.state not in _TERMINAL:
            raise ValueError(f"replica {replica_id} is already running; stop it first")

    # -- Recovery -----------------------------------------------------------------------

    async def recover(self) -> list[ReplicaHandle]:
        """Adopt live replicas left in ``run_dir`` by a previous incarnation; return them.

        Dead ones are dropped: their pid file is removed and whatever survives of their
        engine tree is killed. Records owned by another live process are left alone. An
        adopted replica is supervised (a crash makes it FAILED, never restarted) and can be
        stopped with :meth:`stop`.
        """
        adopted: list[ReplicaHandle] = []
        if self._closing:
            return adopted
        async with self._recover_lock:
            for rec in process.load_records(self._records_dir):
                if rec.replica_id in self._replicas or rec.owner_alive_elsewhere():
                    continue
                if not process.is_alive(rec.pid, rec.start_ticks):
                    swept = self._sweep_session(rec.pid, rec.start_ticks)
                    process.remove_record(self._records_dir, rec.replica_id)
                    msg = "dropped dead replica %s (pid %d); killed %d leftover(s)"
                    logger.info(msg, rec.replica_id, rec.pid, swept)
                    continue
                adopted.append(await self._adopt(rec))
        return adopted

    async def _adopt(self, rec: process.ReplicaRecord) -> ReplicaHandle:
        rep = _Replica(
            replica_id=rec.replica_id,
            port=rec.port,
            log_path=Path(rec.log_path),
            ready_path=rec.ready_path,
            labels={
                "endpoint_id": rec.endpoint_id,
                "deployment_id": rec.deployment_id,
                "port": str(rec.port),
                "adopted": "true",
            },
            argv=list(rec.argv),
            env=dict(rec.env),
            gpus=tuple(rec.gpus),
            served_name=rec.served_name,
            model_dir=rec.model_dir,
            address=rec.address,
            pid=rec.pid,
            start_ticks=rec.start_ticks,
            log_offset=rec.log_offset,
        )
        self._replicas[rep.replica_id] = rep
        await self._check_ready(rep)
        rep.supervisor = asyncio.create_task(
            self._supervise(rep), name=f"supervise-{rep.replica_id}"
        )
        logger.info("adopted replica %s (pid %d) at %s", rep.replica_id, rec.pid, rep.address)
        return rep.handle(self._cfg.node)

    # -- Processes ----------------------------------------------------------------------

    def _taken_ports(self) -> set[int]:
        # A port of a RESTARTING replica is free in the kernel but promised to its restart.
        return {r.port for r in self._replicas.values() if r.state not in _TERMINAL}

    async def _spawn(self, rep: _Replica) -> bool:
        """Start one process for ``rep``; on an OS error mark it FAILED and return False."""
        argv = rep.argv
        if self._cfg.die_with_parent:
            argv = [self._cfg.python, "-I", "-S", "-c", process.DIE_WITH_PARENT, str(os.getpid())]
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
                self._fail(rep, f"could not start {argv[0]!r}: {exc}")
                return False
        rep.pid = rep.proc.pid
        stat = process.read_stat(rep.pid)
        rep.start_ticks = None if stat is None else stat.start_ticks
        rep.state = ReplicaState.STARTING
        rep.ready_since = None
        process.write_record(self._records_dir, self._record(rep))
        logger.info("replica %s started: pid %d at %s", rep.replica_id, rep.pid, rep.address)
        return True

    def _record(self, rep: _Replica) -> process.ReplicaRecord:
        assert rep.pid is not None
        return process.ReplicaRecord(
            replica_id=rep.replica_id,
            pid=rep.pid,
            start_ticks=rep.start_ticks,
            port=rep.port,
            address=rep.address,
            ready_path=rep.ready_path,
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

    def _running(self, rep: _Replica) -> bool:
        if rep.pid is None:
            return False
        if rep.proc is not None:
            return rep.proc.returncode is None
        return process.is_alive(rep.pid, rep.start_ticks)

    async def _wait_exit(self, rep: _Replica) -> int | None:
        """Wait for the replica's process to end; its return code when it is our child."""
        if rep.proc is not None:
            return await rep.proc.wait()
        # An adopted process is not our child: we cannot wait() on it, only watch /proc.
        while self._running(rep):
            await asyncio.sleep(self._cfg.ready_poll_interval)
        return None

    async def _exits_within(self, rep: _Replica, timeout: float) -> bool:
        try:
            await asyncio.wait_for(self._wait_exit(rep), timeout)
        except TimeoutError:
            return False
        return True

    def _signal(self, pid: int, sig: signal.Signals, *, group: bool) -> None:
        with suppress(ProcessLookupError, PermissionError):
            if group:
                os.killpg(pid, sig)
            else:
                os.kill(pid, sig)

    def _sweep_session(self, sid: int | None, start_ticks: int | None) -> int:
        """SIGKILL whatever is left of an engine tree whose leader has exited."""
        if sid is None:
            return 0
        members = process.session_members(sid, start_ticks)
        for pid in members:
            self._signal(pid, signal.SIGKILL, group=False)
        return len(members)

    # -- Readiness and supervision ------------------------------------------------------

    def _http(self) -> httpx.AsyncClient:
        if self._client is None:
            # trust_env=False: a proxy from the environment must never see loopback probes.
            self._client = httpx.AsyncClient(timeout=self._cfg.probe_timeout, trust_env=False)
        return self._client

    async def _check_ready(self, rep: _Replica) -> None:
        pid = rep.pid
        try:
            resp = await self._http().get(rep.address + rep.ready_path)
        except httpx.HTTPError:
            return
        # Only the incarnation we asked may become READY (a restart may have happened since).
        if resp.status_code == 200 and rep.pid == pid and rep.state is ReplicaState.STARTING:
            rep.state = ReplicaState.READY
            rep.ready_since = asyncio.get_running_loop().time()
            logger.info("replica %s is ready (pid %s)", rep.replica_id, pid)

    async def _watch(self, rep: _Replica) -> int | None:
        """Poll the ready path while STARTING; return when the process exits."""
        exited = asyncio.ensure_future(self._wait_exit(rep))
        try:
            while rep.state is ReplicaState.STARTING and not exited.done():
                await asyncio.wait({exited}, timeout=self._cfg.ready_poll_interval)
                if not exited.done():
                    await self._check_ready(rep)
            return await exited
        finally:
            exited.cancel()

    async def _supervise(self, rep: _Replica) -> None:
        """Watch one replica until it is stopped or fails; restart it after crashes."""
        try:
            while not self._closing and not rep.stopping:
                returncode = await self._watch(rep)
                if rep.stopping or self._closing:
                    return
                if not await self._after_crash(rep, returncode):
                    return
        except Exception as exc:  # the one guarded boundary of this loop
            logger.exception("supervisor of replica %s crashed", rep.replica_id)
            self._fail(rep, f"placement supervisor error: {exc!r}")

    async def _after_crash(self, rep: _Replica, returncode: int | None) -> bool:
        """Decide after an unexpected exit: restart (True) or mark FAILED (False)."""
        how = process.describe_exit(returncode)
        loop_time = asyncio.get_running_loop().time()
        if rep.ready_since is not None and loop_time - rep.ready_since >= self._cfg.stable_after:
            rep.crash_streak = 0
        rep.crash_streak += 1
        adopted = rep.labels.get("adopted") == "true"
        if rep.restarts == 0 and rep.ready_since is None and not adopted:
            reason = f"replica {rep.replica_id} {how} before becoming ready"
        elif rep.crash_streak > self._cfg.max_restarts:
            reason = f"replica {rep.replica_id} {how}; {rep.crash_streak} crashes in a row"
        else:
            await self._restart(rep, how)
            return rep.state is not ReplicaState.FAILED
        tail = process.log_tail(rep.log_path, rep.log_offset, self._cfg.log_tail_lines)
        self._fail(rep, f"{reason}. Last lines of {rep.log_path}:\n{tail}")
        return False

    async def _restart(self, rep: _Replica, how: str) -> None:
        rep.state = ReplicaState.RESTARTING
        rep.restarts += 1
        delay = min(
            self._cfg.restart_backoff * 2 ** (rep.crash_streak - 1), self._cfg.restart_backoff_max
        )
        logger.warning(
            "replica %s %s; restart %d in %.1fs", rep.replica_id, how, rep.restarts, delay
        )
        # The crashed engine may have left children in its session; they would hold the port.
        self._sweep_session(rep.pid, rep.start_ticks)
        await asyncio.sleep(delay)
        if not (rep.stopping or self._closing):
            await self._spawn(rep)

    def _fail(self, rep: _Replica, error: str) -> None:
        rep.state = ReplicaState.FAILED
        rep.error = error
        process.remove_record(self._records_dir, rep.replica_id)
        logger.error("replica %s failed: %s", rep.replica_id, error)

    # -- Stopping -----------------------------------------------------------------------

    async def _shutdown(self, rep: _Replica, drain_timeout: float) -> None:
        """Stop one replica in named steps; never restarts it."""
        # 1. Draining: the caller routes no new requests here; the supervisor stands down.
        rep.stopping = True
        rep.state = ReplicaState.DRAINING
        await _cancel(rep.supervisor)
        outcome = "was not running"
        if rep.pid is not None and self._running(rep):
            # 2. SIGTERM the leader only: it drains in-flight requests and stops its workers.
            self._signal(rep.pid, signal.SIGTERM, group=False)
            outcome = "exited after SIGTERM"
            # 3. Wait for the drain deadline.
            if not await self._exits_within(rep, drain_timeout):
                # 4. SIGKILL the whole session while the leader still holds its id.
                self._signal(rep.pid, signal.SIGKILL, group=True)
                outcome = "killed after the drain deadline"
                if not await self._exits_within(rep, self._cfg.kill_wait):
                    outcome = "did not exit after SIGKILL"
        # 5. Sweep what the engine left in its session, then forget the pid file.
        swept = self._sweep_session(rep.pid, rep.start_ticks)
        process.remove_record(self._records_dir, rep.replica_id)
        rep.state = ReplicaState.STOPPED
        msg = "replica %s stopped: %s; %d leftover process(es) killed"
        logger.info(msg, rep.replica_id, outcome, swept)


async def _cancel(task: asyncio.Task[None] | None) -> None:
    # asyncio.wait, not `await task`: our own cancellation must still propagate.
    if task is not None and not task.done():
        task.cancel()
        await asyncio.wait({task})
