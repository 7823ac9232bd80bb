"""PostgreSQL under concurrency and failure (issue 13), through real server processes:
concurrent deploys get distinct, ordered ``seq``; concurrent retries with one Idempotency-Key
return the original operation (never a 500); a long endpoint id fits the idempotency record;
and a leader whose database session is killed stops acting before another worker leads."""

from __future__ import annotations

import asyncio
import json
import shutil
import signal
from collections.abc import Iterator
from concurrent.futures import ThreadPoolExecutor
from datetime import datetime
from pathlib import Path
from typing import Any

import asyncpg
import httpx
import pytest

from tests.conftest import TinyModelFactory
from tests.databases import PG_ADMIN_DSN, create_pg_database, drop_pg_database
from tests.e2e.hardening_env import stub_template
from tests.e2e.rollout_env import Deployed, wait_until
from tests.e2e.server import TurnoutServer

pytestmark = [pytest.mark.slow, pytest.mark.postgres]

#: The longest endpoint id there is (NAME_PATTERN: 2-128 characters).
LONG_ENDPOINT = "a" + "b" * 126 + "z"


@pytest.fixture
def pg() -> Iterator[tuple[str, str]]:
    name, url = asyncio.run(create_pg_database())
    try:
        yield name, url
    finally:
        asyncio.run(drop_pg_database(name))


async def _query(database: str, sql: str) -> list[Any]:
    conn = await asyncpg.connect(PG_ADMIN_DSN.rsplit("/", 1)[0] + f"/{database}")
    try:
        return list(await conn.fetch(sql))
    finally:
        await conn.close()


@pytest.mark.timeout(300)
def test_concurrent_deploys_and_retries(
    tmp_path: Path, tiny_model: TinyModelFactory, pg: tuple[str, str]
) -> None:
    database, url = pg
    weights = tmp_path / "weights-in"
    shutil.copytree(tiny_model(seed=1), weights / "seed1")
    gates = tmp_path / "gates"
    gates.mkdir()
    templates = tmp_path / "engines.json"
    templates.write_text(json.dumps({"stub": stub_template(gates)}))
    env = {"TURNOUT_DATABASE_URL": url, "TURNOUT_ALLOWED_LOCAL_ROOTS": str(weights),
           "TURNOUT_ENGINE_TEMPLATES": str(templates)}  # fmt: skip
    data = tmp_path / "data"
    worker = TurnoutServer(data, env=env, role="worker")
    api = TurnoutServer(data, env=env, role="api")
    try:
        worker.start()
        api.start()
        api.cli("admin", "org", "create", "acme")
        key = api.cli("admin", "key", "create", "--org", "acme", "--kind", "management")
        api.cli("admin", "endpoint", "create", LONG_ENDPOINT, "--org", "acme", "--arch",
                "tiny-llama", "--engine", "stub")  # fmt: skip
        deployed = Deployed(api, key.stdout.strip(), "", LONG_ENDPOINT)
        deployed.upload("v1", weights / "seed1")
        model = deployed.versions["v1"]["name"]
        deploy = f"{api.url}/management/v1/endpoints/{LONG_ENDPOINT}:deployModel"
        auth = {"Authorization": f"Bearer {deployed.management_key}"}

        def post(idempotency_key: str | None) -> httpx.Response:
            headers = {**auth, **({"Idempotency-Key": idempotency_key} if idempotency_key else {})}
            return httpx.post(deploy, json={"model": model}, headers=headers, timeout=60)

        with ThreadPoolExecutor(12) as pool:
            plain = list(pool.map(post, [None] * 12))
            retry_key = "k" * 256  # the longest key, on the longest endpoint id
            retries = list(pool.map(post, [retry_key] * 8))
        for resp in plain + retries:
            assert resp.status_code == 200, resp.text
        assert len({r.json()["name"] for r in plain}) == 12
        assert len({r.json()["name"] for r in retries}) == 1
        rows = asyncio.run(_query(database, "SELECT id, seq, created FROM deployments"))
        assert len(rows) == 13  # twelve plus the one the retries share
        seqs = [r["seq"] for r in rows]
        assert len(set(seqs)) == len(seqs)
        by_seq = sorted(rows, key=lambda r: r["seq"])
        assert [r["created"] for r in by_seq] == sorted(r["created"] for r in rows)
        # The list API's newest-first order is the seq order.
        with api.http(deployed.management_key) as client:
            listed = client.get(f"/management/v1/endpoints/{LONG_ENDPOINT}/deployments").json()
        assert [d["name"] for d in listed["deployments"]] == [r["id"] for r in reversed(by_seq)]
        # Every queued deployment runs, one at a time, in that order.
        last = deployed.wait_done(by_seq[-1]["id"], timeout=240)
        assert last["response"]["rollout_status"] == "complete", last
    finally:
        api.stop()
        worker.stop()


def _logged_at(log: str, needle: str) -> datetime:
    line = next(line for line in log.splitlines() if needle in line)
    return datetime.strptime(line[:23], "%Y-%m-%d %H:%M:%S,%f")


@pytest.mark.timeout(300)
def test_a_leader_whose_session_drops_stops_before_another_leads(
    tmp_path: Path, pg: tuple[str, str]
) -> None:
    database, url = pg
    data = tmp_path / "data"
    workers = [TurnoutServer(data, env={"TURNOUT_DATABASE_URL": url}, role="worker")
               for _ in range(2)]  # fmt: skip
    try:
        for server in workers:
            server.start()

        def leader() -> TurnoutServer | None:
            leading = [w for w in workers if "is the leader" in w.log_path.read_text()]
            return leading[0] if leading else None

        old = wait_until(leader, lambda w: w is not None, timeout=60)
        standby = next(w for w in workers if w is not old)
        # Cut only the leader lock's own session: the process and its other sessions live on.
        killed = asyncio.run(_query(database, (
            "SELECT pg_terminate_backend(pid) FROM pg_locks "
            "WHERE locktype = 'advisory' AND objid = 774212 AND granted"
        )))  # fmt: skip
        assert [r[0] for r in killed] == [True]
        wait_until(lambda: standby.log_path.read_text(), lambda t: "is the leader" in t, timeout=60)
        old_log, new_log = old.log_path.read_text(), standby.log_path.read_text()
        assert "lost the leader lock" in old_log
        assert _logged_at(old_log, "stopped acting") < _logged_at(new_log, "is the leader")
        assert old.proc is not None
        wait_until(lambda: old.proc.poll() if old.proc else 0, lambda rc: rc is not None)
    finally:
        for server in workers:
            server.stop(signal.SIGTERM)
