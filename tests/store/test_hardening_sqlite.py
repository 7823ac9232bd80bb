"""The SQLite control-plane database commits durably (issue 13)."""

from __future__ import annotations

from pathlib import Path

import pytest
from sqlalchemy import text

from turnout.errors import ConfigError
from turnout.store.db import Database


@pytest.mark.anyio
async def test_sqlite_commits_with_synchronous_full(tmp_path: Path) -> None:
    db = Database(f"sqlite:///{tmp_path / 'turnout.db'}")
    try:
        async with db.session() as s:
            assert await s.scalar(text("PRAGMA synchronous")) == 2  # FULL
            assert await s.scalar(text("PRAGMA journal_mode")) == "wal"
    finally:
        await db.dispose()


@pytest.mark.anyio
async def test_one_server_claims_a_sqlite_database(tmp_path: Path) -> None:
    first = Database(f"sqlite:///{tmp_path / 'turnout.db'}")
    second = Database(f"sqlite:///{tmp_path / 'turnout.db'}")
    first.claim_for_server()
    with pytest.raises(ConfigError, match="already running"):
        second.claim_for_server()
    await first.dispose()
    await second.dispose()
