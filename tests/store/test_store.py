"""The store against real SQLite and PostgreSQL databases."""

from __future__ import annotations

import pytest
from sqlalchemy.exc import IntegrityError

from turnout.errors import AliasTaken, Conflict, NotFound
from turnout.store import endpoints, tenants, versions
from turnout.store.db import Database
from turnout.store.records import KeyKind, SyncStatus

pytestmark = pytest.mark.anyio


async def test_migrations_are_idempotent_and_catalog_seeded(db: Database) -> None:
    await db.migrate()
    async with db.session() as s:
        ids = [a.arch_id for a in await tenants.list_architectures(s)]
    assert {"tiny-llama", "smollm2-135m", "llama3.1-8b", "llama-3.3-70b", "qwen-3-32b"} <= set(ids)


async def test_orgs_keys_and_grants(db: Database) -> None:
    async with db.session() as s:
        org = await tenants.create_org(s, "acme")
        await tenants.grant(s, org, "tiny-llama")
        await tenants.add_key(
            s, org, key_id="key_1", kind=KeyKind.MANAGEMENT, key_hash="h1", prefix="tmk_abc"
        )
    with pytest.raises(Conflict):
        async with db.session() as s:
            await tenants.create_org(s, "acme")
    async with db.session() as s:
        key = await tenants.find_key_by_hash(s, "h1")
        assert key is not None and key.org_name == "acme" and key.kind is KeyKind.MANAGEMENT
        assert await tenants.granted_architectures(s, org) == ["tiny-llama"]
        await tenants.revoke_key(s, "key_1")
    async with db.session() as s:
        assert await tenants.active_key_hashes(s, KeyKind.MANAGEMENT) == {}
        with pytest.raises(NotFound):
            await tenants.get_architecture(s, "no-such-arch")


async def test_version_numbers_aliases_and_delete(db: Database) -> None:
    async with db.session() as s:
        org = await tenants.create_org(s, "acme")
        v1 = await versions.create_version(
            s,
            org,
            "tiny-llama",
            weight_uri="file:///w1",
            fingerprint_suffix=None,
            aliases=["production"],
        )
        v2 = await versions.create_version(
            s, org, "tiny-llama", weight_uri="file:///w2", fingerprint_suffix="ft", aliases=[]
        )
    assert (v1.version_number, v2.version_number) == (1, 2)
    assert v1.sync_status is SyncStatus.QUEUED and v1.aliases == ("production",)

    with pytest.raises(AliasTaken, match="held by version 1"):
        async with db.session() as s:
            await versions.set_aliases(s, org, "tiny-llama", v2.id, ["production"])
    async with db.session() as s:
        # The failed transaction changed nothing.
        assert (await versions.resolve_version(s, org, "tiny-llama", "production")).id == v1.id
        await versions.set_aliases(s, org, "tiny-llama", v1.id, [])
        await versions.set_aliases(s, org, "tiny-llama", v2.id, ["production", "latest"])
        assert (await versions.resolve_version(s, org, "tiny-llama", "latest")).version_number == 2
        await versions.mark_deleted(s, v2.id)
    async with db.session() as s:
        with pytest.raises(NotFound):
            await versions.resolve_version(s, org, "tiny-llama", "2")
        v3 = await versions.create_version(
            s,
            org,
            "tiny-llama",
            weight_uri="file:///w3",
            fingerprint_suffix=None,
            aliases=["production"],
        )
    assert v3.version_number == 3  # ids are never reused


async def test_version_number_is_unique_per_org_and_arch(db: Database) -> None:
    from turnout.store.tables import ModelVersionRow

    async with db.session() as s:
        org = await tenants.create_org(s, "acme")
        await versions.create_version(
            s, org, "tiny-llama", weight_uri="u", fingerprint_suffix=None, aliases=[]
        )
    with pytest.raises(IntegrityError):
        async with db.session() as s:
            s.add(
                ModelVersionRow(
                    org_id=org.id, arch_id="tiny-llama", version_number=1, weight_uri="x",
                    sync_status="queued", bytes_done=0, bytes_total=0, created=0, updated=0,
                )
            )  # fmt: skip


async def test_sync_status_and_fingerprint(db: Database) -> None:
    async with db.session() as s:
        org = await tenants.create_org(s, "acme")
        v = await versions.create_version(
            s, org, "tiny-llama", weight_uri="u", fingerprint_suffix="my-sfx", aliases=[]
        )
        await versions.update_sync(
            s,
            v.id,
            status=SyncStatus.DONE,
            digest="sha256:" + "ab" * 32,
            weight_path="/w",
            bytes_done=5,
            bytes_total=5,
        )
        done = await versions.get_version_by_pk(s, v.id)
    assert done is not None and done.sync_status is SyncStatus.DONE
    assert done.fingerprint == "fp_ababababab_my-sfx"


async def test_endpoints_deployments_events_replicas(db: Database) -> None:
    async with db.session() as s:
        org = await tenants.create_org(s, "acme")
        v = await versions.create_version(
            s, org, "tiny-llama", weight_uri="u", fingerprint_suffix=None, aliases=[]
        )
        ep = await endpoints.create_endpoint(
            s, "acme-tiny", org, "tiny-llama", replicas=2, engine="builtin"
        )
        d1 = await endpoints.create_deployment(
            s,
            deployment_id="d1",
            endpoint=ep,
            version_pk=v.id,
            alias_used=None,
            state="not_started",
        )
        d2 = await endpoints.create_deployment(
            s,
            deployment_id="d2",
            endpoint=ep,
            version_pk=v.id,
            alias_used="prod",
            state="not_started",
        )
        await endpoints.add_event(s, "d1", "start", "starting replicas")
        await endpoints.upsert_replica(
            s, "r1", endpoint_id="acme-tiny", deployment_id="d1", state="starting"
        )
        await endpoints.upsert_replica(
            s,
            "r1",
            endpoint_id="acme-tiny",
            deployment_id="d1",
            state="ready",
            address="http://127.0.0.1:1",
        )
    assert (
        d2.seq > d1.seq
        and d1.version_number == 1
        and d1.model_name == "orgs/acme/models/tiny-llama/versions/1"
    )
    async with db.session() as s:
        listed = await endpoints.list_deployments(s, endpoint_id="acme-tiny")
        assert [d.id for d in listed] == ["d2", "d1"]  # newest first
        assert [e.step for e in await endpoints.list_events(s, "d1")] == ["submitted", "start"]
        (replica,) = await endpoints.list_replicas(s, deployment_id="d1")
        assert replica.state == "ready" and replica.address == "http://127.0.0.1:1"
        assert (
            await endpoints.version_in_use(s, v.id, ["not_started", "in_progress"]) == "acme-tiny"
        )
        await endpoints.set_serving(s, "acme-tiny", "d1")
        await endpoints.update_deployment(s, "d2", state="cancelled")
        await endpoints.update_deployment(s, "d1", state="complete")
        assert (
            await endpoints.version_in_use(s, v.id, ["not_started", "in_progress"]) == "acme-tiny"
        )
        assert (await endpoints.get_endpoint(s, "acme-tiny")).serving_deployment_id == "d1"
    with pytest.raises(Conflict):
        async with db.session() as s:
            await endpoints.create_endpoint(
                s, "acme-tiny", org, "tiny-llama", replicas=1, engine="builtin"
            )
