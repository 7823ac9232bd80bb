"""A real Ray cluster on one machine for the fleet tests and bench: a head on 127.0.0.1 and
worker nodes on 127.0.0.2, 127.0.0.3, ... that declare fake GPUs.

Ray listens on every interface, and nothing may listen beyond loopback here, so the cluster
only ever runs inside a network namespace whose loopback is its only interface:
:func:`run_isolated` runs a command in a fresh one (``unshare --net``, plus ``--pid`` so that
whatever the command leaves behind dies with it). Inside, :class:`RayCluster` starts the
nodes with ``ray start`` (each with its own ports and its own ``TURNOUT_NODE_CACHE``), kills a
single node the way a machine dies (SIGKILL to its raylet, agents and workers: ``ray stop``
would stop every node of the machine) and stops everything with ``ray stop --force``.
"""

from __future__ import annotations

import os
import shutil
import signal
import subprocess
import sys
import tempfile
from collections.abc import Mapping, Sequence
from concurrent.futures import Future, ThreadPoolExecutor
from dataclasses import dataclass
from pathlib import Path

import psutil

#: Set inside the namespace by :func:`run_isolated`.
ISOLATED_ENV = "TURNOUT_NETNS"

#: Node death is noticed by the GCS's health checks; Ray's defaults take ~30 s, a test ~3 s.
FAST_HEALTH_CHECKS = {
    "RAY_health_check_initial_delay_ms": "1000",
    "RAY_health_check_period_ms": "1000",
    "RAY_health_check_timeout_ms": "1000",
    "RAY_health_check_failure_threshold": "3",
}


# --kill-child: should unshare itself be killed (a timeout), the namespace's first process
# gets SIGKILL, and with it every process of the namespace.
_UNSHARE = ("unshare", "--net", "--pid", "--fork", "--kill-child", "--mount-proc", "--")


def isolated() -> bool:
    return os.environ.get(ISOLATED_ENV) == "1"


def isolation_missing() -> str | None:
    """Why :func:`run_isolated` cannot work here, or None."""
    for tool in ("unshare", "ip"):
        if shutil.which(tool) is None:
            return f"{tool} is not installed"
    probe = subprocess.run(
        [*_UNSHARE, "ip", "link", "set", "lo", "up"],
        capture_output=True,
        text=True,
        check=False,
    )  # fmt: skip
    if probe.returncode != 0:
        return f"cannot create a network namespace: {probe.stderr.strip()}"
    return None


def run_isolated(
    argv: Sequence[str], env: Mapping[str, str], timeout: float, cwd: Path | None = None
) -> subprocess.CompletedProcess[str]:
    """Run ``argv`` in new network and pid namespaces whose loopback (127.0.0.0/8) is the
    only interface. When ``argv`` ends, everything it started is killed with the namespace."""
    inner = " ".join(_quote(a) for a in argv)
    # sh stays pid 1 (it reaps the daemons ray start leaves as orphans) and the command runs
    # as its child; when sh exits, the kernel kills the rest of the namespace.
    script = f"ip link set lo up && {inner}"
    return subprocess.run(
        [*_UNSHARE, "sh", "-c", script],
        env={**env, ISOLATED_ENV: "1"},
        cwd=cwd,
        capture_output=True,
        text=True,
        timeout=timeout,
        check=False,
    )


def _quote(arg: str) -> str:
    return "'" + arg.replace("'", "'\"'\"'") + "'"


@dataclass(frozen=True, slots=True)
class WorkerNode:
    ip: str
    gpus: int
    cpus: int
    #: Its TURNOUT_NODE_CACHE: where replicas on this node keep fetched weights and logs.
    cache: Path


class RayCluster:
    """``ray start`` processes: a head without GPUs and worker nodes with fake ones."""

    def __init__(
        self,
        root: Path,
        workers: Sequence[tuple[str, int]] = (("127.0.0.2", 2), ("127.0.0.3", 2)),
        *,
        port: int = 6390,
        head_cpus: int = 1,
        worker_cpus: int = 2,
    ) -> None:
        if not isolated():
            raise RuntimeError("a RayCluster runs only inside run_isolated()'s namespace")
        self.root = root
        self.port = port
        self.head_cpus = head_cpus
        self.workers = {
            ip: WorkerNode(ip, gpus, worker_cpus, root / f"node-{ip}") for ip, gpus in workers
        }
        self.ray = str(Path(sys.executable).with_name("ray"))
        self.logs = root / "logs"
        # Ray's sockets live under its temp dir, and a socket path has at most 107 bytes.
        self.temp = Path(tempfile.mkdtemp(prefix="ray-", dir="/tmp"))
        self._starting: Future[RayCluster] | None = None

    @property
    def address(self) -> str:
        return f"127.0.0.1:{self.port}"

    def start_in_background(self) -> RayCluster:
        """Start the nodes on a thread (a test sets up its control plane meanwhile); then
        :meth:`wait_started`."""
        pool = ThreadPoolExecutor(1)
        self._starting = pool.submit(self.start)
        pool.shutdown(wait=False)
        return self

    def wait_started(self, timeout: float = 180) -> None:
        if self._starting is not None:
            self._starting.result(timeout=timeout)

    def start(self) -> RayCluster:
        self.logs.mkdir(parents=True, exist_ok=True)
        self._ray_start(
            "127.0.0.1",
            0,
            ["--head", "--port", str(self.port), "--num-cpus", str(self.head_cpus)],
            FAST_HEALTH_CHECKS,
        )
        with ThreadPoolExecutor(len(self.workers)) as pool:
            list(pool.map(self.start_worker, self.workers))
        return self

    def start_worker(self, ip: str) -> None:
        node = self.workers[ip]
        node.cache.mkdir(parents=True, exist_ok=True)
        self._ray_start(
            ip,
            list(self.workers).index(ip) + 1,
            ["--address", self.address, "--num-cpus", str(node.cpus)],
            {"TURNOUT_NODE_CACHE": str(node.cache)},
            gpus=node.gpus,
        )

    def _ray_start(
        self, ip: str, index: int, args: list[str], env: Mapping[str, str], gpus: int = 0
    ) -> None:
        # Every node of this machine needs its own ports: they all listen on every interface.
        base = self.port + 10 + 10 * index
        argv = [
            self.ray, "start", "--node-ip-address", ip, *args, "--num-gpus", str(gpus),
            "--disable-usage-stats", "--include-log-monitor=false",
            "--object-store-memory", str(80 * 2**20),
            "--dashboard-agent-listen-port", str(base),
            "--metrics-export-port", str(base + 1),
            "--runtime-env-agent-port", str(base + 2),
            "--min-worker-port", str(20000 + 1000 * index),
            "--max-worker-port", str(20999 + 1000 * index),
        ]  # fmt: skip
        # Each node its own temp dir: nodes started at once would pick the same socket names.
        argv += ["--temp-dir", str(self.temp / ip)]
        if index == 0:
            argv += ["--include-dashboard=false"]
        log = self.logs / f"ray-start-{ip}.log"
        with log.open("ab") as out:
            done = subprocess.run(
                argv,
                env={**os.environ, **env},
                stdout=out,
                stderr=subprocess.STDOUT,
                timeout=120,
                check=False,
            )
        if done.returncode != 0:
            raise RuntimeError(f"ray start on {ip} failed: {log.read_text()[-3000:]}")

    def node_processes(self, ip: str) -> list[psutil.Process]:
        """The raylet, agents and workers of one node (its object store lives in the raylet)."""
        marks = (f"--node_ip_address={ip}", f"--node-ip-address={ip}")
        found = []
        for proc in psutil.process_iter(["cmdline"]):
            cmdline = proc.info["cmdline"] or []
            if any(arg in marks for arg in cmdline):
                found.append(proc)
        return found

    def kill_node(self, ip: str) -> None:
        """The node dies as a machine does: every Ray process of it gets SIGKILL at once (its
        actors' engines die with them)."""
        procs = self.node_processes(ip)
        if not procs:
            raise RuntimeError(f"no Ray processes found for node {ip}")
        for proc in procs:
            try:
                proc.send_signal(signal.SIGKILL)
            except psutil.NoSuchProcess:
                pass
        psutil.wait_procs(procs, timeout=10)

    def stop(self) -> None:
        if self._starting is not None:
            self._starting.exception()  # never race nodes that are still starting
        self.logs.mkdir(parents=True, exist_ok=True)
        with (self.logs / "ray-stop.log").open("ab") as out:
            subprocess.run(
                [self.ray, "stop", "--force"], stdout=out, stderr=subprocess.STDOUT, check=False
            )
        # Keep the nodes' logs with the test's files, then free the short path.
        for node in self.temp.iterdir():
            session = node / "session_latest" / "logs"
            if session.is_dir():
                shutil.copytree(session, self.logs / node.name, dirs_exist_ok=True)
        shutil.rmtree(self.temp, ignore_errors=True)
