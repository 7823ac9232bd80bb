"""Local placement: each replica is an engine subprocess of this machine on a free port.

GPUs: the placement is given the machine's GPU ids (``TURNOUT_GPUS`` or NVML) and hands each
replica its own, never overlapping another live replica's, as ``CUDA_VISIBLE_DEVICES``; a
replica that needs more than are free is refused with :class:`NoCapacity`.

One supervisor task per replica (:mod:`turnout.placement.supervisor`) watches its process:
readiness, liveness (a hung engine is killed and restarted), restarts with backoff, FAILED with
the engine's last log lines, and the named stop sequence.

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
import sys
from dataclasses import dataclass, field
from pathlib import Path

import httpx

from turnout.placement import process
from turnout.placement.base import (
    Capacity,
    NoCapacity,
    NodeCapacity,
    ReloadFailed,
    ReplicaHandle,
    ReplicaSpec,
    ReplicaStatus,
)
from turnout.placement.engines import passed_through, render_argv
from turnout.placement.supervisor import ReplicaProcess, SupervisionConfig, Supervisor, cancel
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
    python: str = sys.executable
    close_drain_timeout: float = 10.0  # drain deadline used by close()
    reload_timeout: float = 600.0  # one in-place weight reload (loading a model's weights)
    supervision: SupervisionConfig = field(default_factory=SupervisionConfig)
    #: This machine's GPU ids (TURNOUT_GPUS or NVML); empty: no GPUs.
    gpu_ids: tuple[int, ...] = ()
    #: The node name replicas report.
    node: str = "local"
    #: Engines die with this process (PDEATHSIG) instead of outliving it: for the engine a
    #: Ray actor runs, whose lifetime is the actor's.
    die_with_parent: bool = False


class LocalPlacement:
    """Runs replicas as subprocesses of this process. Implements ``Placement``."""

    def __init__(self, config: LocalPlacementConfig) -> None:
        self._cfg = config
        self._logs_dir = config.run_dir / "logs"
        self._records_dir = config.run_dir / "replicas"
        self._replicas: dict[str, ReplicaProcess] = {}
        self._sup = Supervisor(
            config.supervision, self._records_dir, config.python, config.die_with_parent
        )
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
        rep = ReplicaProcess(
            replica_id=spec.replica_id,
            port=port,
            log_path=self._logs_dir / f"{spec.replica_id}.log",
            ready_path=spec.engine.ready_path,
            health_path=spec.engine.health_path,
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
        if await self._sup.spawn(rep):
            rep.supervisor = asyncio.create_task(
                self._sup.supervise(rep), name=f"supervise-{rep.replica_id}"
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

    async def reload(self, handle: ReplicaHandle, spec: ReplicaSpec) -> ReplicaHandle:
        rep = self._replicas.get(handle.replica_id)
        if rep is None or rep.state in _TERMINAL:
            raise ReloadFailed(f"replica {handle.replica_id} does not run here")
        if not spec.engine.reload_path:
            raise ReloadFailed(f"engine of replica {rep.replica_id} cannot reload weights")
        try:
            resp = await self._sup.http.post(
                rep.address + spec.engine.reload_path,
                json={"model_path": str(spec.model_dir)},
                timeout=self._cfg.reload_timeout,
            )
            answer = resp.json()
        except (httpx.HTTPError, ValueError) as exc:
            raise ReloadFailed(f"replica {rep.replica_id}: reload failed: {exc!r}") from exc
        if resp.status_code != 200 or not answer.get("success"):
            raise ReloadFailed(f"replica {rep.replica_id}: {answer.get('message', resp.text)}")
        # From now on it is this deployment's, and a restart loads the new weights.
        rep.argv = render_argv(
            spec,
            model_dir=spec.model_dir,
            host=self._cfg.host,
            port=rep.port,
            python=self._cfg.python,
        )
        rep.model_dir = str(spec.model_dir)
        rep.labels["deployment_id"] = spec.deployment_id
        self._sup.save_record(rep)
        return rep.handle(self._cfg.node)

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
            await self._sup.check_ready(rep)  # answer promptly, not at the next poll
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
            rep.stopper = asyncio.create_task(self._sup.shutdown(rep, drain_timeout))
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
            await cancel(rep.supervisor)
        await self._sup.close()

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
                    swept = self._sup.sweep_session(rec.pid, rec.start_ticks)
                    process.remove_record(self._records_dir, rec.replica_id)
                    msg = "dropped dead replica %s (pid %d); killed %d leftover(s)"
                    logger.info(msg, rec.replica_id, rec.pid, swept)
                    continue
                adopted.append(await self._adopt(rec))
        return adopted

    async def _adopt(self, rec: process.ReplicaRecord) -> ReplicaHandle:
        rep = ReplicaProcess(
            replica_id=rec.replica_id,
            port=rec.port,
            log_path=Path(rec.log_path),
            ready_path=rec.ready_path,
            health_path=rec.health_path,
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
        await self._sup.check_ready(rep)
        rep.supervisor = asyncio.create_task(
            self._sup.supervise(rep), name=f"supervise-{rep.replica_id}"
        )
        logger.info("adopted replica %s (pid %d) at %s", rep.replica_id, rec.pid, rep.address)
        return rep.handle(self._cfg.node)

    # -- Processes ----------------------------------------------------------------------

    def _taken_ports(self) -> set[int]:
        # A port of a RESTARTING replica is free in the kernel but promised to its restart.
        return {r.port for r in self._replicas.values() if r.state not in _TERMINAL}
