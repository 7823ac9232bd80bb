"""Separate processes per role in front of one PostgreSQL: a worker, an API and a gateway.
The gateway follows the worker's routing changes through the store, and a rollout under load
through that gateway drops nothing."""

from __future__ import annotations

import asyncio
import shutil
import signal
import time
from collections.abc import Iterator
from pathlib import Path

import pytest

from tests.conftest import TinyModelFactory
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
