"""What outlives a placement in memory: each replica's pid file and its ``/proc`` entry.

A :class:`ReplicaRecord` is written to ``run_dir/replicas/<replica_id>.json`` every time a
replica process starts, and removed when it stops or fails. A later placement on the same
run dir reads these records to find replicas that a previous incarnation left running.

A pid alone is not an identity: the kernel reuses pids. Each record therefore carries the
process start time (field 22 of ``/proc/<pid>/stat``, in clock ticks since boot); a pid whose
start time differs is another process and is never signalled.

This module only reads files and /proc; starting and signalling processes lives in
:mod:`turnout.placement.local`.
"""

from __future__ import annotations

import json
import logging
import os
import signal
import socket
from dataclasses import asdict, dataclass, field
from pathlib import Path

logger = logging.getLogger(__name__)

_PROC = Path("/proc")


# For engines that must not outlive their starter (an engine run by a Ray actor dies with the
# actor, and so frees its node's GPUs): run as `python -I -S -c DIE_WITH_PARENT <parent pid>
# <argv...>`, it sets the parent-death signal and execs the engine. A shim rather than
# preexec_fn, because preexec_fn is unsafe in a process with threads.
DIE_WITH_PARENT = """\
import ctypes, os, signal, sys
try:
    ctypes.CDLL(None, use_errno=True).prctl(1, int(signal.SIGKILL), 0, 0, 0)  # PDEATHSIG
except (AttributeError, OSError):
    pass
if os.getppid() != int(sys.argv[1]):
    os._exit(1)  # the parent died before prctl took effect: the signal will never come
try:
    os.execvp(sys.argv[2], sys.argv[2:])
except OSError as exc:
    print(f"turnout: cannot execute {sys.argv[2]!r}: {exc}", file=sys.stderr, flush=True)
    os._exit(127)
"""


@dataclass(frozen=True, slots=True)
class ProcStat:
    """The few fields of ``/proc/<pid>/stat`` a placement needs."""

    pid: int
    state: str  # "R", "S", "Z" (zombie: exited, not yet reaped), ...
    ppid: int
    pgrp: int
    session: int
    start_ticks: int


def read_stat(pid: int) -> ProcStat | None:
    """``/proc/<pid>/stat`` parsed, or None when there is no such process."""
    try:
        raw = (_PROC / str(pid) / "stat").read_text()
    except (FileNotFoundError, ProcessLookupError, PermissionError):
        return None
    # The command name (field 2) is in parentheses and may itself hold spaces or ")".
    fields = raw[raw.rindex(")") + 2 :].split()
    return ProcStat(
        pid=pid,
        state=fields[0],
        ppid=int(fields[1]),
        pgrp=int(fields[2]),
        session=int(fields[3]),
        start_ticks=int(fields[19]),
    )


def is_alive(pid: int, start_ticks: int | None) -> bool:
    """True if ``pid`` runs and is the same process (same start time) as recorded."""
    stat = read_stat(pid)
    if stat is None or stat.state in ("Z", "X"):
        return False
    return start_ticks is None or stat.start_ticks == start_ticks


def session_members(session: int, not_before: int | None) -> list[int]:
    """Live pids in ``session`` that started no earlier than ``not_before`` ticks.

    A replica is started as the leader of a new session, so its whole engine tree (vLLM
    workers, a shell's children) shares the session id even after the leader is gone. The
    start-time bound keeps a reused session id from matching unrelated, older processes.
    """
    members = []
    for entry in _PROC.iterdir():
        if not entry.name.isdigit():
            continue
        stat = read_stat(int(entry.name))
        if stat is None or stat.session != session or stat.state in ("Z", "X"):
            continue
        if not_before is None or stat.start_ticks >= not_before:
            members.append(stat.pid)
    return members


def own_start_ticks() -> int | None:
    stat = read_stat(os.getpid())
    return None if stat is None else stat.start_ticks


def free_port(host: str, taken: set[int]) -> int:
    """A port the kernel says is free on ``host`` and that is not in ``taken``."""
    for _ in range(100):
        with socket.socket(socket.AF_INET, socket.SOCK_STREAM) as sock:
            sock.bind((host, 0))
            port: int = sock.getsockname()[1]
        if port not in taken:
            return port
    raise RuntimeError(f"no free port found on {host}")


def describe_exit(returncode: int | None) -> str:
    """``-9`` → "was killed by SIGKILL", for error messages and logs."""
    if returncode is None:
        return "exited"
    if returncode < 0:
        try:
            return f"was killed by {signal.Signals(-returncode).name}"
        except ValueError:
            pass
    return f"exited with code {returncode}"


@dataclass(frozen=True, slots=True)
class ReplicaRecord:
    """One replica process as persisted in its pid file."""

    replica_id: str
    pid: int
    start_ticks: int | None
    port: int
    address: str
    ready_path: str
    log_path: str
    log_offset: int  # where this process's output starts in the log
    endpoint_id: str
    deployment_id: str
    served_name: str
    model_dir: str
    health_path: str = "/health"
    #: How to start it again (argv, the environment it got beyond Turnout's own, its GPUs).
    argv: list[str] = field(default_factory=list)
    env: dict[str, str] = field(default_factory=dict)
    gpus: list[int] = field(default_factory=list)
    # The Turnout process that started it: by default, this one.
    owner_pid: int = field(default_factory=os.getpid)
    owner_start_ticks: int | None = field(default_factory=own_start_ticks)

    def owner_alive_elsewhere(self) -> bool:
        """True if another live process owns this replica (not ours to adopt)."""
        if self.owner_pid == os.getpid():
            return False
        return is_alive(self.owner_pid, self.owner_start_ticks)


def record_path(records_dir: Path, replica_id: str) -> Path:
    return records_dir / f"{replica_id}.json"


def write_record(records_dir: Path, record: ReplicaRecord) -> None:
    """Write atomically: a reader never sees half a record."""
    records_dir.mkdir(parents=True, exist_ok=True)
    final = record_path(records_dir, record.replica_id)
    tmp = final.with_suffix(".json.tmp")
    # Owner only: the record holds the environment the template passes through (a token).
    fd = os.open(tmp, os.O_WRONLY | os.O_CREAT | os.O_TRUNC, 0o600)
    with os.fdopen(fd, "w") as out:
        out.write(json.dumps(asdict(record), indent=1))
    os.replace(tmp, final)


def remove_record(records_dir: Path, replica_id: str) -> None:
    record_path(records_dir, replica_id).unlink(missing_ok=True)


def load_records(records_dir: Path) -> list[ReplicaRecord]:
    """Every readable record; an unreadable one is logged and skipped, never fatal."""
    if not records_dir.is_dir():
        return []
    records = []
    for path in sorted(records_dir.glob("*.json")):
        try:
            records.append(ReplicaRecord(**json.loads(path.read_text())))
        except (OSError, ValueError, TypeError) as exc:
            logger.warning("skipping unreadable replica record %s: %s", path, exc)
    return records


def log_tail(path: Path, offset: int, max_lines: int, max_bytes: int = 16384) -> str:
    """The last lines a process wrote to its log since ``offset`` (its engine's own words)."""
    try:
        with path.open("rb") as fh:
            size = fh.seek(0, os.SEEK_END)
            fh.seek(max(offset, size - max_bytes))
            data = fh.read()
    except OSError as exc:
        return f"(log {path} unreadable: {exc})"
    lines = data.decode("utf-8", errors="replace").rstrip().splitlines()
    return "\n".join(lines[-max_lines:])
