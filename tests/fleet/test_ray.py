"""The fleet on Ray through real processes: a Ray cluster of three nodes, Turnout's roles on
PostgreSQL, engines on CPU (the scenarios are in ``ray_scenarios.py``).

Ray listens on every interface, and nothing may listen beyond loopback here, so the scenarios
run in their own network namespace (its loopback the only interface) and pid namespace (so
every process they start dies with them, whatever happens). This test starts them there with
pytest and shows their output.
"""

from __future__ import annotations

import asyncio
import importlib.util
import os
import sys
from collections.abc import Iterator
from pathlib import Path

import pytest

from tests.conftest import TinyModelFactory
from tests.databases import PG_ADMIN_DSN, create_pg_database, drop_pg_database
from tests.fleet.cluster import isolation_missing, run_isolated

pytestmark = [pytest.mark.ray, pytest.mark.slow, pytest.mark.postgres]

ROOT = Path(__file__).resolve().parents[2]
SCENARIOS = Path(__file__).with_name("ray_scenarios.py")


def _missing() -> str | None:
    if importlib.util.find_spec("ray") is None:
        return "ray is not installed (pip install -e '.[ray]'; make test installs it)"
    return isolation_missing()


async def pg_database() -> tuple[str, str]:
    """A fresh PostgreSQL database: its name, and its URL through the server's Unix socket
    (a network namespace has its own loopback: the server's TCP port is not reachable from
    inside, its socket file is)."""
    import asyncpg

    name, _ = await create_pg_database()
    conn = await asyncpg.connect(PG_ADMIN_DSN, timeout=5)
    try:
        sockets = str(await conn.fetchval("SHOW unix_socket_directories"))
    finally:
        await conn.close()
    user = PG_ADMIN_DSN.split("://", 1)[1].split("@", 1)[0].split(":", 1)[0] or "postgres"
    return name, f"postgresql+asyncpg://{user}@/{name}?host={sockets.split(',')[0].strip()}"


@pytest.fixture
def pg_socket_url() -> Iterator[str]:
    name, url = asyncio.run(pg_database())
    try:
        yield url
    finally:
        asyncio.run(drop_pg_database(name))


@pytest.mark.timeout(900)
def test_fleet_scenarios_on_a_ray_cluster(
    tmp_path: Path, pg_socket_url: str, tiny_model: TinyModelFactory
) -> None:
    missing = _missing()
    if missing is not None:
        if os.environ.get("CI") == "true":
            pytest.fail(f"the Ray fleet tests must run under CI: {missing}")
        pytest.skip(missing)
    argv = [
        sys.executable, "-m", "pytest", "-x", "-q", "-p", "no:cacheprovider",
        "--basetemp", str(tmp_path / "inner"), str(SCENARIOS),
    ]  # fmt: skip
    env = {
        **os.environ,
        "TURNOUT_FLEET_PG_URL": pg_socket_url,
        # The session's tiny models (other tests build the same): the scenarios need not.
        "TURNOUT_FLEET_MODELS": os.pathsep.join(str(tiny_model(seed=s)) for s in (1, 2)),
    }
    done = run_isolated(argv, env, timeout=840, cwd=ROOT)
    output = done.stdout + done.stderr
    print(output)  # pytest shows it with the result
    assert done.returncode == 0, output[-12000:]
    assert " passed" in output and " skipped" not in output, output[-3000:]
