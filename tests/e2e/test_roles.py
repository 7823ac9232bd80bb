"""Separate processes per role in front of one PostgreSQL: a worker, an API and a gateway.
The gateway follows the worker's routing changes through the store, and a rollout under load
through that gateway drops nothing."""

from __future__ import annotations

import asyncio
import shutil
import time
from collections.abc import Iterator
from pathlib import Path

import pytest

from tests.conftest import TinyModelFactory
from tests.databases import create_pg_database, drop_pg_database
from tests.e2e.rollout_env import Deployed
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
        with api.client(None) as anon:
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
