from __future__ import annotations

from collections.abc import AsyncIterator
from pathlib import Path

import pytest

from tests.databases import database_url
from turnout.api.services.admin import catalog_records
from turnout.store import tenants
from turnout.store.db import Database


@pytest.fixture(params=["sqlite", pytest.param("postgres", marks=pytest.mark.postgres)])
async def db(request: pytest.FixtureRequest, tmp_path: Path) -> AsyncIterator[Database]:
    async with database_url(request.param, tmp_path) as url:
        database = Database(url)
        await database.migrate()
        async with database.session() as s:
            await tenants.seed_architectures(s, catalog_records())
        try:
            yield database
        finally:
            await database.dispose()
