"""Real databases for tests: a fresh SQLite file or a fresh PostgreSQL database per use."""

from __future__ import annotations

import os
import uuid
from collections.abc import AsyncIterator
from contextlib import asynccontextmanager
from pathlib import Path

import pytest

PG_ADMIN_DSN = os.environ.get(
    "TURNOUT_TEST_PG_DSN", "postgresql://postgres@127.0.0.1:5432/postgres"
)


async def _pg_connect():  # type: ignore[no-untyped-def]
    import asyncpg

    try:
        return await asyncpg.connect(PG_ADMIN_DSN, timeout=5)
    except (OSError, asyncpg.PostgresError) as exc:
        if os.environ.get("CI") == "true":
            raise RuntimeError(f"PostgreSQL at {PG_ADMIN_DSN} is required under CI: {exc}") from exc
        pytest.skip(
            f"PostgreSQL not reachable at {PG_ADMIN_DSN} ({exc}); start it "
            "(pg_ctlcluster ... main start) or set TURNOUT_TEST_PG_DSN to run these tests"
        )


async def create_pg_database() -> tuple[str, str]:
    """A fresh, empty PostgreSQL database: (its name, its SQLAlchemy URL)."""
    name = f"turnout_test_{uuid.uuid4().hex[:12]}"
    conn = await _pg_connect()
    try:
        await conn.execute(f'CREATE DATABASE "{name}"')
    finally:
        await conn.close()
    base = PG_ADMIN_DSN.rsplit("/", 1)[0].replace("postgresql://", "postgresql+asyncpg://")
    return name, f"{base}/{name}"


async def drop_pg_database(name: str) -> None:
    conn = await _pg_connect()
    try:
        await conn.execute(f'DROP DATABASE IF EXISTS "{name}" WITH (FORCE)')
    finally:
        await conn.close()


@asynccontextmanager
async def database_url(kind: str, tmp_path: Path) -> AsyncIterator[str]:
    if kind == "sqlite":
        yield f"sqlite+aiosqlite:///{tmp_path / 'turnout.db'}"
        return
    name, url = await create_pg_database()
    try:
        yield url
    finally:
        await drop_pg_database(name)
