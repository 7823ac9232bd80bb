"""Limits travel from the store to the gateway with the keys (``KeyRefresher``), on SQLite and
PostgreSQL."""

from __future__ import annotations

from collections.abc import AsyncIterator
from pathlib import Path

import pytest
from tests.databases import database_url

from turnout.api.schemas.admin import KeyLimitUpdate, OrgLimitUpdate
from turnout.api.services.admin import AdminService
from turnout.errors import BadRequest, NotFound
from turnout.gateway.keys import KeyEntry, StaticInferenceKeys
from turnout.routing.follower import KeyRefresher
from turnout.store.db import Database

pytestmark = pytest.mark.anyio


@pytest.fixture(params=["sqlite", pytest.param("postgres", marks=pytest.mark.postgres)])
async def db(request: pytest.FixtureRequest, tmp_path: Path) -> AsyncIterator[Database]:
    async with database_url(request.param, tmp_path) as url:
        database = Database(url)
        await database.migrate()
        try:
            yield database
        finally:
            await database.dispose()


async def test_limits_reach_the_gateways_key_table(db: Database) -> None:
    admin = AdminService(db)
    await admin.seed()
    await admin.create_org("acme")
    inference = await admin.create_key("acme", "inference")
    management = await admin.create_key("acme", "management")
    assert inference.key is not None
    table = StaticInferenceKeys()
    refresher = KeyRefresher(db, table)

    await refresher.reconcile()
    assert table.lookup(inference.key) == KeyEntry("acme", inference.id)

    out = await admin.limit_key(inference.id, KeyLimitUpdate(rpm=60, tpm=1000))
    assert (out.rpm, out.tpm) == (60, 1000)
    org = await admin.limit_org("acme", OrgLimitUpdate(max_concurrent=4))
    assert org.max_concurrent == 4
    await refresher.reconcile()
    assert table.lookup(inference.key) == KeyEntry("acme", inference.id, 60, 1000, 4)

    # A field left out stays; null lifts the limit.
    out = await admin.limit_key(inference.id, KeyLimitUpdate.model_validate({"tpm": None}))
    assert (out.rpm, out.tpm) == (60, None)
    await refresher.reconcile()
    assert table.lookup(inference.key) == KeyEntry("acme", inference.id, 60, None, 4)
    listed = (await admin.list_keys("acme")).keys
    assert {k.id: k.rpm for k in listed}[inference.id] == 60

    with pytest.raises(BadRequest, match="inference keys"):
        await admin.limit_key(management.id, KeyLimitUpdate(rpm=1))
    with pytest.raises(NotFound):
        await admin.limit_key("key_nope", KeyLimitUpdate(rpm=1))
    with pytest.raises(NotFound):
        await admin.limit_org("nope", OrgLimitUpdate(max_concurrent=1))

    await admin.revoke_key(inference.id)
    await refresher.reconcile()
    assert table.lookup(inference.key) is None
