"""Separate processes per role in front of one PostgreSQL: a worker, an API and a gateway.
The gateway follows the worker's routing changes through the store, and a rollout under load
through that gateway drops nothing."""

from __future__ import annotations

import asyncio
import json
import shutil
import signal
import time
from collections.abc import Iterator
from pathlib import Path
from typing import Any

import pytest

from tests.conftest import TinyModelFactory, reap_replicas
from tests.databases import create_pg_database, drop_pg_database
from tests.e2e.rollout_env import Deployed, wait_until
from tests.e2e.server import TurnoutServer
from tests.e2e.test_rollout import Load

pytestmark = [pytest.mark.slow, pytest.mark.postgres]


@pytest.fixture
def pg_url() -> Iterator[str]:
    name, url = asyncio.run(create_pg_database())
    try:
        yield url
    finally:
        asyncio.run(drop_pg_database(name))


@pytest.mark.timeout(400)
def test_worker_api_gateway_processes(
    tmp_path: Path, tiny_model: TinyModelFactory, pg_url: str
) -> None:
    weights = tmp_path / "weights-in"
    for seed in (1, 2):
        shutil.copytree(tiny_model(seed=seed), weights / f"seed{seed}")
    env = {"TURNOUT_DATABASE_URL": pg_url, "TURNOUT_ALLOWED_LOCAL_ROOTS": str(weights)}
    data = tmp_path / "data"
    worker = TurnoutServer(data, env=env, role="worker")
    api = TurnoutServer(data, env=env, role="api")
    gateway = TurnoutServer(data, env=env, role="gateway")
    servers = [worker, api, gateway]
    try:
        for server in servers:
            server.start()
        api.cli("admin", "org", "create", "acme")
        mk = api.cli(
            "admin", "key", "create", "--org", "acme", "--kind", "management"
        ).stdout.strip()
        ik = api.cli(
            "admin", "key", "create", "--org", "acme", "--kind", "inference"
        ).stdout.strip()
        api.cli("admin", "endpoint", "create", "acme-tiny", "--org", "acme", "--arch", "tiny-llama")
        with api.http(None) as anon:
            assert anon.post("/v1/chat/completions", json={}).status_code == 404  # no gateway here
        deployed = Deployed(api, mk, ik, "acme-tiny")
        deployed.upload("v1", weights / "seed1")
        deployed.upload("v2", weights / "seed2")
        assert deployed.wait_done(deployed.deploy("v1"))["response"]["rollout_status"] == "complete"

        through_gateway = Deployed(gateway, mk, ik, "acme-tiny", deployed.versions)
        with Load(through_gateway, streaming=1, plain=2) as load:
            time.sleep(2)
            done = deployed.wait_done(deployed.deploy("v2"))
            complete_at = max(e["at"] for e in done["response"]["events"])
            time.sleep(3)
        assert done["response"]["rollout_status"] == "complete"
        assert not [o.error for o in load.outcomes if o.error]
        versions = [o.version for o in load.outcomes]
        assert deployed.version_id("v1") in versions
        after = [o for o in load.outcomes if o.started > complete_at + 1]
        assert after and {o.version for o in after} == {deployed.version_id("v2")}
    finally:
        for server in reversed(servers):
            server.stop()
        reap_replicas(tmp_path)  # a worker's orderly stop leaves its replicas serving


@pytest.mark.timeout(300)
def test_one_worker_leads_and_a_standby_takes_over(
    tmp_path: Path, tiny_model: TinyModelFactory, pg_url: str
) -> None:
    weights = tmp_path / "weights-in"
    shutil.copytree(tiny_model(seed=1), weights / "seed1")
    env = {"TURNOUT_DATABASE_URL": pg_url, "TURNOUT_ALLOWED_LOCAL_ROOTS": str(weights)}
    data = tmp_path / "data"
    workers = [TurnoutServer(data, env=env, role="worker") for _ in range(2)]
    api = TurnoutServer(data, env=env, role="api")
    try:
        for server in (*workers, api):
            server.start()

        def roles() -> list[str]:
            logs = [w.log_path.read_text() for w in workers]
            return [
                "leads" if "is the leader" in t else "standby" if "standby" in t else "?"
                for t in logs
            ]

        assert sorted(wait_until(roles, lambda r: "?" not in r, timeout=30)) == ["leads", "standby"]
        leader = workers[roles().index("leads")]
        standby = workers[roles().index("standby")]
        api.cli("admin", "org", "create", "acme")
        mk = api.cli(
            "admin", "key", "create", "--org", "acme", "--kind", "management"
        ).stdout.strip()
        api.cli("admin", "endpoint", "create", "acme-tiny", "--org", "acme", "--arch", "tiny-llama")
        deployed = Deployed(api, mk, "", "acme-tiny")
        deployed.upload("v1", weights / "seed1")
        leader.stop(signal.SIGKILL)
        wait_until(lambda: standby.log_path.read_text(), lambda t: "is the leader" in t, timeout=30)
        done = deployed.wait_done(deployed.deploy("v1"))
        assert done["response"]["rollout_status"] == "complete"
    finally:
        for server in (api, *workers):
            server.stop()
        reap_replicas(tmp_path)


@pytest.mark.timeout(500)
def test_replicas_outlive_a_killed_worker_and_are_adopted(
    tmp_path: Path, tiny_model: TinyModelFactory, pg_url: str
) -> None:
    weights = tmp_path / "weights-in"
    for seed in (1, 2):
        shutil.copytree(tiny_model(seed=seed), weights / f"seed{seed}")
    env = {"TURNOUT_DATABASE_URL": pg_url, "TURNOUT_ALLOWED_LOCAL_ROOTS": str(weights)}
    data = tmp_path / "data"
    worker = TurnoutServer(data, env=env, role="worker")
    api = TurnoutServer(data, env=env, role="api")
    gateway = TurnoutServer(data, env=env, role="gateway")
    restarted = TurnoutServer(data, env=env, role="worker")
    try:
        for server in (worker, api, gateway):
            server.start()
        api.cli("admin", "org", "create", "acme")
        mk = api.cli(
            "admin", "key", "create", "--org", "acme", "--kind", "management"
        ).stdout.strip()
        ik = api.cli(
            "admin", "key", "create", "--org", "acme", "--kind", "inference"
        ).stdout.strip()
        api.cli(
            "admin", "endpoint", "create", "acme-tiny", "--org", "acme", "--arch", "tiny-llama",
            "--replicas", "2",
        )  # fmt: skip
        deployed = Deployed(api, mk, ik, "acme-tiny")
        deployed.upload("v1", weights / "seed1")
        deployed.upload("v2", weights / "seed2")
        assert deployed.wait_done(deployed.deploy("v1"))["response"]["rollout_status"] == "complete"
        before = replica_pids(data)
        assert len(before) == 2

        through_gateway = Deployed(gateway, mk, ik, "acme-tiny", deployed.versions)
        with Load(through_gateway, streaming=1, plain=2) as load:
            time.sleep(1)
            worker.stop(signal.SIGKILL)  # no orderly anything: the process is gone
            time.sleep(3)
            assert replica_pids(data) == before  # its replicas kept running, and serving
            served_while_down = len(load.outcomes)
            restarted.start()
            listed = wait_until(
                lambda: replica_list(api),
                lambda rows: len(rows) == 2 and {r["state"] for r in rows} == {"ready"},
                timeout=60,
            )
            assert {r["replica_id"] for r in listed} == set(before)  # adopted, no duplicates
            assert replica_pids(data) == before  # the same processes serve
            done = deployed.wait_done(deployed.deploy("v2"))
            time.sleep(2)
        assert done["response"]["rollout_status"] == "complete"
        assert served_while_down > 0
        assert not [o.error for o in load.outcomes if o.error]
        after = replica_list(api)
        assert len(after) == 2 and {r["version_id"] for r in after} == {deployed.version_id("v2")}
    finally:
        for server in (gateway, api, restarted, worker):
            server.stop()
        reap_replicas(tmp_path)


def replica_pids(data: Path) -> dict[str, int]:
    records = (data / "run" / "replicas").glob("*.json")
    return {r["replica_id"]: r["pid"] for r in (json.loads(p.read_text()) for p in records)}


def replica_list(server: TurnoutServer) -> list[dict[str, Any]]:
    rows: list[dict[str, Any]] = json.loads(
        server.cli("admin", "replica", "list", "--json").stdout
    )["replicas"]
    return rows
