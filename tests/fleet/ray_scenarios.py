"""The fleet on a real Ray cluster, run by ``test_ray.py`` inside a network namespace.

A head (127.0.0.1, no GPUs) and two worker nodes (127.0.0.2 and 127.0.0.3, two fake GPUs
each, each with its own node cache) started with ``ray start``; a control plane of separate
processes on PostgreSQL (``--role worker`` places replicas on Ray and serves the weights,
``--role api``, ``--role gateway``), with ``TURNOUT_NODE_WEIGHTS=fetch`` so replicas fetch
their weights into their node's cache instead of reading the data dir. Engines run on CPU;
Ray only counts the GPUs.

Not collected on its own (its name is not ``test_*``): ``test_ray.py`` runs it with pytest in
the namespace, where the PostgreSQL URL arrives as ``TURNOUT_FLEET_PG_URL`` (a Unix socket:
the host's TCP ports are not reachable from inside).
"""

from __future__ import annotations

import json
import os
import shutil
import signal
import time
from collections.abc import Iterator
from pathlib import Path
from typing import Any
from urllib.parse import urlparse

import httpx
import psutil
import pytest

from tests.conftest import TinyModelFactory
from tests.e2e.rollout_env import Deployed, wait_until
from tests.e2e.server import TurnoutServer, free_port
from tests.e2e.test_rollout import Load
from tests.fleet.cluster import RayCluster, isolated

pytestmark = pytest.mark.skipif(not isolated(), reason="runs inside test_ray.py's namespace")

NODE_B, NODE_C = "127.0.0.2", "127.0.0.3"
ADMIN_TOKEN = "fleet-admin-token-0123456789abcdef"


@pytest.fixture(scope="module")
def cluster(tmp_path_factory: pytest.TempPathFactory) -> Iterator[RayCluster]:
    """The cluster, starting while the control plane is set up (see :class:`Fleet`)."""
    cluster = RayCluster(tmp_path_factory.mktemp("ray"), ((NODE_B, 2), (NODE_C, 2)))
    try:
        yield cluster.start_in_background()
    finally:
        cluster.stop()


@pytest.fixture(scope="module")
def models(tiny_model: TinyModelFactory) -> tuple[Path, Path]:
    """v1 and v2: built by the outer test's session when it passes them (other tests there
    build the same ones), else here."""
    given = os.environ.get("TURNOUT_FLEET_MODELS")
    if given:
        first, second = given.split(os.pathsep)
        return Path(first), Path(second)
    return tiny_model(seed=1), tiny_model(seed=2)


class Fleet:
    """The control plane's processes, their keys and versions, and what they report."""

    def __init__(self, root: Path, cluster: RayCluster, models: tuple[Path, Path]) -> None:
        self.cluster = cluster
        self.weights = root / "weights-in"
        for label, model in zip(("v1", "v2"), models, strict=True):
            shutil.copytree(model, self.weights / label)
        self.env = {
            "TURNOUT_DATABASE_URL": os.environ["TURNOUT_FLEET_PG_URL"],
            "TURNOUT_ALLOWED_LOCAL_ROOTS": str(self.weights),
            "TURNOUT_PLACEMENT": "ray",
            "TURNOUT_RAY_ADDRESS": cluster.address,
            "TURNOUT_NODE_WEIGHTS": "fetch",
            "TURNOUT_DRAIN_TIMEOUT": "5",
            "TURNOUT_READY_TIMEOUT": "150",
            "TURNOUT_ADMIN_TOKEN": ADMIN_TOKEN,
        }
        self.data = root / "data"
        self.ports = {"worker": free_port(), "api": free_port()}
        self.gateway = TurnoutServer(self.data, env=self.env, role="gateway")
        self.worker = self.api = self.gateway  # set by start_control_plane
        self.started: list[TurnoutServer] = [self.gateway]
        self.deployed: Deployed | None = None

    def start_control_plane(self) -> None:
        """The worker (placement, weights) and the API, on the same ports each time."""
        self.worker = TurnoutServer(
            self.data, env=self.env, role="worker", port=self.ports["worker"]
        )
        self.api = TurnoutServer(self.data, env=self.env, role="api", port=self.ports["api"])
        for server in (self.worker, self.api):
            server.start()
            self.started.append(server)
        if self.deployed is not None:
            self.deployed.server = self.api

    def kill_control_plane(self) -> None:
        for server in (self.worker, self.api):
            server.stop(signal.SIGKILL)

    def provision(self) -> None:
        """The gateway and the API with an org, keys and an endpoint while the cluster starts;
        then the worker, which places on it, and two synced versions."""
        self.gateway.start()
        self.api = TurnoutServer(self.data, env=self.env, role="api", port=self.ports["api"])
        self.api.start()
        self.started.append(self.api)
        api = self.api
        api.cli("admin", "org", "create", "acme")
        mk = api.cli("admin", "key", "create", "--org", "acme", "--kind", "management")
        ik = api.cli("admin", "key", "create", "--org", "acme", "--kind", "inference")
        api.cli(
            "admin", "endpoint", "create", "acme-tiny", "--org", "acme", "--arch", "tiny-llama",
            "--replicas", "2", "--gpus-per-replica", "1",
        )  # fmt: skip
        self.deployed = Deployed(api, mk.stdout.strip(), ik.stdout.strip(), "acme-tiny")
        self.cluster.wait_started()
        self.worker = TurnoutServer(
            self.data, env=self.env, role="worker", port=self.ports["worker"]
        )
        self.worker.start()
        self.started.append(self.worker)
        for label in ("v1", "v2"):
            self.deployed.upload(label, self.weights / label)

    @property
    def management(self) -> Deployed:
        assert self.deployed is not None
        return self.deployed

    @property
    def through_gateway(self) -> Deployed:
        d = self.management
        return Deployed(self.gateway, d.management_key, d.inference_key, d.endpoint, d.versions)

    def replicas(self, endpoint: str = "acme-tiny") -> list[dict[str, Any]]:
        """``turnout admin replica list --json``, as the admin API serves it (the CLI's own
        output is checked once, in the first test)."""
        with self.api.http(ADMIN_TOKEN) as http:
            resp = http.get("/admin/v1/replicas", params={"endpoint": endpoint})
        resp.raise_for_status()
        rows: list[dict[str, Any]] = resp.json()["replicas"]
        return rows

    def replicas_from_cli(self, endpoint: str) -> list[dict[str, Any]]:
        out = self.api.cli("admin", "replica", "list", "--endpoint", endpoint, "--json").stdout
        rows: list[dict[str, Any]] = json.loads(out)["replicas"]
        return rows

    def deploy(self, label: str, endpoint: str = "acme-tiny") -> dict[str, Any]:
        d = self.management
        with d.client() as client:
            operation = client.deploy(endpoint, d.versions[label]["name"])
        done = d.wait_done(str(operation["name"]), timeout=240)
        assert done["response"]["rollout_status"] == "complete", done
        return done

    def digest(self, label: str) -> str:
        return str(self.management.versions[label]["response"]["digest"]).split(":", 1)[1]

    def stop(self) -> None:
        for server in reversed(self.started):
            server.stop()


@pytest.fixture(scope="module")
def fleet(
    cluster: RayCluster, models: tuple[Path, Path], tmp_path_factory: pytest.TempPathFactory
) -> Iterator[Fleet]:
    fleet = Fleet(tmp_path_factory.mktemp("fleet"), cluster, models)
    try:
        fleet.provision()
        yield fleet
    finally:
        fleet.stop()


def engines() -> dict[int, str]:
    """Engine processes on this machine (every node's): pid → the model dir they serve."""
    found = {}
    for proc in psutil.process_iter(["cmdline"]):
        cmdline = proc.info["cmdline"] or []
        if "turnout.engine" in cmdline and "--model-dir" in cmdline:
            found[proc.pid] = cmdline[cmdline.index("--model-dir") + 1]
    return found


def assert_on_its_node(row: dict[str, Any], gpus: int) -> None:
    """Ready, serving on its node's address, and its engine sees exactly its GPUs."""
    assert row["state"] == "ready", row
    url = urlparse(row["address"])
    assert url.hostname == row["node"], row
    assert len(row["gpus"]) == gpus, row
    (engine,) = [
        p
        for p in psutil.process_iter(["cmdline"])
        if "turnout.engine" in (p.info["cmdline"] or []) and str(url.port) in p.info["cmdline"]
    ]
    visible = engine.environ().get("CUDA_VISIBLE_DEVICES")
    assert visible == ",".join(str(g) for g in row["gpus"]), (row, visible)


def ask(fleet: Fleet, endpoint: str = "acme-tiny") -> httpx.Response:
    with fleet.gateway.http(fleet.management.inference_key) as http:
        return http.post(
            "/v1/chat/completions",
            json={
                "model": endpoint,
                "messages": [{"role": "user", "content": "hi"}],
                "max_tokens": 4,
            },
        )


def errors(load: Load) -> list[str]:
    return [o.error for o in load.outcomes if o.error]


@pytest.mark.timeout(600)
def test_replicas_spread_roll_survive_the_control_plane_and_heal_a_lost_node(
    fleet: Fleet, cluster: RayCluster
) -> None:
    # 1. Two replicas of one GPU each: one on each worker node, weights fetched into the nodes.
    fleet.deploy("v1")
    rows = fleet.replicas_from_cli("acme-tiny")
    keys = ["replica_id", "endpoint_id", "deployment_id", "version_id", "node", "address", "gpus"]
    assert all(sorted(r) == sorted([*keys, "state"]) for r in rows), rows
    assert [{k: r[k] for k in keys} for r in fleet.replicas()] == [
        {k: r[k] for k in keys} for r in rows
    ]
    assert sorted(r["node"] for r in rows) == [NODE_B, NODE_C], rows
    for row in rows:
        assert_on_its_node(row, gpus=1)
    for node in cluster.workers.values():
        assert (node.cache / "weights" / fleet.digest("v1")).is_dir()
    caches = tuple(str(n.cache) for n in cluster.workers.values())
    assert len(engines()) == 2 and all(d.startswith(caches) for d in engines().values())

    # 2. v1 -> v2 under load through the gateway: nothing fails.
    with Load(fleet.through_gateway, streaming=1, plain=2) as load:
        time.sleep(2)
        fleet.deploy("v2")
        time.sleep(2)
    assert load.outcomes and not errors(load), errors(load)[:5]
    v1, v2 = (fleet.management.version_id(v) for v in ("v1", "v2"))
    assert {o.version for o in load.outcomes} == {v1, v2}
    rows = fleet.replicas()
    assert sorted(r["node"] for r in rows) == [NODE_B, NODE_C], rows

    # 3. kill -9 of the control plane: the gateway keeps serving the replicas; a new control
    #    plane adopts them (same ids, same engine processes, no duplicates) and rolls out.
    before = sorted(r["replica_id"] for r in rows)
    pids = sorted(engines())
    with Load(fleet.through_gateway, streaming=1, plain=2) as load:
        time.sleep(1)
        fleet.kill_control_plane()
        down_at = time.time()
        time.sleep(4)
        fleet.start_control_plane()
        up_at = time.time()
        wait_until(
            lambda: fleet.worker.log_tail(200_000),
            lambda t: t.count("found replica") >= 2,
            timeout=60,
        )
        time.sleep(2)  # a few reconcile passes: nothing is started twice
        assert sorted(r["replica_id"] for r in fleet.replicas()) == before
        assert sorted(engines()) == pids
        fleet.deploy("v1")
        time.sleep(2)
    assert not errors(load), errors(load)[:5]
    assert [o for o in load.outcomes if down_at < o.started and o.finished < up_at]
    rows = fleet.replicas()
    assert len(rows) == 2 and {r["version_id"] for r in rows} == {v1}, rows
    assert sorted(r["node"] for r in rows) == [NODE_B, NODE_C], rows

    # 4. A worker node dies: its replica is lost and replaced on the node that is left.
    lost = next(r["replica_id"] for r in rows if r["node"] == NODE_C)
    cluster.kill_node(NODE_C)

    def healed(found: list[dict[str, Any]]) -> bool:
        return len(found) == 2 and all(r["node"] == NODE_B and r["state"] == "ready" for r in found)

    rows = wait_until(fleet.replicas, healed, timeout=150, interval=1)
    assert lost not in {r["replica_id"] for r in rows}
    assert sorted(g for r in rows for g in r["gpus"]) == [0, 1]
    assert f"replica {lost} on {NODE_C} is lost" in fleet.worker.log_tail(200_000)
    assert ask(fleet).status_code == 200

    # The node comes back (empty): the next test places on it.
    cluster.start_worker(NODE_C)


@pytest.mark.timeout(300)
def test_a_two_gpu_replica_lands_on_one_node(fleet: Fleet) -> None:
    fleet.api.cli(
        "admin", "endpoint", "create", "acme-tp2", "--org", "acme", "--arch", "tiny-llama",
        "--replicas", "1", "--gpus-per-replica", "2",
    )  # fmt: skip
    fleet.deploy("v1", endpoint="acme-tp2")
    (row,) = fleet.replicas("acme-tp2")
    assert_on_its_node(row, gpus=2)
    assert row["gpus"] == [0, 1]
    assert row["node"] in (NODE_B, NODE_C)
    answer = ask(fleet, "acme-tp2")
    assert answer.status_code == 200, answer.text
    assert answer.headers["x-turnout-version"] == str(fleet.management.version_id("v1"))
