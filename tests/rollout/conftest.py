"""The rollout tests' store: a real SQLite database with an org, an endpoint and versions."""

from __future__ import annotations

from collections.abc import AsyncIterator
from pathlib import Path

import pytest

from turnout.api.services.admin import catalog_records
from turnout.store import endpoints, tenants, versions
from turnout.store.db import Database
from turnout.store.records import SyncStatus


@pytest.fixture
async def db(tmp_path: Path) -> AsyncIterator[Database]:
    """An org, endpoint acme-tiny (2 replicas) and two synced versions (pk 1 and 2)."""
    database = Database(f"sqlite+aiosqlite:///{tmp_path / 't.db'}")
    await database.migrate()
    async with database.session() as s:
        await tenants.seed_architectures(s, catalog_records())
        org = await tenants.create_org(s, "acme")
        await endpoints.create_endpoint(
            s, "acme-tiny", org, "tiny-llama", replicas=2, engine="builtin"
        )
        for n in (1, 2):
            v = await versions.create_version(
                s, org, "tiny-llama", weight_uri="u", fingerprint_suffix=None, aliases=[]
            )
            await versions.update_sync(
                s, v.id, status=SyncStatus.DONE, digest=f"sha256:{n}" * 8, weight_path=str(tmp_path)
            )
    yield database
    await database.dispose()
