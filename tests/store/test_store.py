"""The store against real SQLite and PostgreSQL databases."""

from __future__ import annotations

import pytest
from sqlalchemy.exc import IntegrityError

from turnout.errors import AliasTaken, Conflict, NotFound
from turnout.registry.architectures import BUILTIN_ARCHITECTURES
from turnout.states import ACTIVE, DeploymentState, Event, IllegalTransition, ReplicaState, Step
from turnout.store import deployments, endpoints, replicas, tenants, versions
from turnout.store.db import Database
from turnout.store.deployments import LostRace
from turnout.store.records import KeyKind, SyncStatus

pytestmark = pytest.mark.anyio


async def test_migrations_are_idempotent_and_catalog_seeded(db: Database) -> None:
    await db.migrate()
    async with db.session() as s:
        org = await tenants.create_org(s, "acme")
        for arch in BUILTIN_ARCHITECTURES:  # a grant's foreign key needs the seeded row
            await tenants.grant(s, org, arch.arch_id)
        granted = await tenants.granted_architectures(s, org)
    assert {"tiny-llama", "smollm2-135m", "llama3.1-8b", "llama-3.3-70b", "qwen-3-32b"} <= set(
        granted
    )


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
        d1 = await deployments.create_deployment(
            s, deployment_id="d1", endpoint=ep, version_pk=v.id, alias_used=None
        )
        d2 = await deployments.create_deployment(
            s, deployment_id="d2", endpoint=ep, version_pk=v.id, alias_used="prod"
        )
        await deployments.add_event(s, "d1", "start", "starting replicas")
        await replicas.upsert_replica(
            s, "r1", endpoint_id="acme-tiny", deployment_id="d1", state=ReplicaState.STARTING
        )
        await replicas.upsert_replica(
            s,
            "r1",
            endpoint_id="acme-tiny",
            deployment_id="d1",
            state=ReplicaState.READY,
            address="http://127.0.0.1:1",
        )
    assert (
        d2.seq > d1.seq
        and d1.version_number == 1
        and d1.model_name == "orgs/acme/models/tiny-llama/versions/1"
        and d1.state is DeploymentState.NOT_STARTED
        and d1.step is Step.SUBMITTED
    )
    async with db.session() as s:
        listed = await deployments.list_deployments(s, endpoint_id="acme-tiny")
        assert [d.id for d in listed] == ["d2", "d1"]  # newest first
        assert [e.step for e in await deployments.list_events(s, "d1")] == ["submitted", "start"]
        (replica,) = await replicas.list_replicas(s, deployment_id="d1")
        assert replica.state is ReplicaState.READY and replica.address == "http://127.0.0.1:1"
        assert await deployments.version_in_use(s, v.id, ACTIVE) == "acme-tiny"
        await endpoints.set_serving(s, "acme-tiny", "d1")
        await deployments.apply(s, "d2", Event.CANCEL)
        await deployments.apply(s, "d1", Event.START)
        await deployments.apply(s, "d1", Event.PROGRESS, step=Step.WARMING)
        await deployments.apply(s, "d1", Event.PROGRESS, step=Step.SWITCHED)
        await deployments.apply(s, "d1", Event.COMPLETE, message="complete")
        assert await deployments.version_in_use(s, v.id, ACTIVE) == "acme-tiny"
        assert (await endpoints.get_endpoint(s, "acme-tiny")).serving_deployment_id == "d1"
        done = await deployments.get_deployment(s, "d1")
        assert (done.state, done.step) == (DeploymentState.COMPLETE, Step.DONE)
        assert (await deployments.list_events(s, "d1"))[-1].step == "done"
    with pytest.raises(Conflict):
        async with db.session() as s:
            await endpoints.create_endpoint(
                s, "acme-tiny", org, "tiny-llama", replicas=1, engine="builtin"
            )


async def test_state_changes_follow_the_table_and_lose_races_loudly(
    db: Database, monkeypatch: pytest.MonkeyPatch
) -> None:
    async with db.session() as s:
        org = await tenants.create_org(s, "acme")
        v = await versions.create_version(
            s, org, "tiny-llama", weight_uri="u", fingerprint_suffix=None, aliases=[]
        )
        ep = await endpoints.create_endpoint(
            s, "acme-tiny", org, "tiny-llama", replicas=1, engine="builtin"
        )
        await deployments.create_deployment(
            s, deployment_id="d1", endpoint=ep, version_pk=v.id, alias_used=None
        )
        await deployments.apply(s, "d1", Event.START)
    # An illegal move writes nothing.
    with pytest.raises(IllegalTransition):
        async with db.session() as s:
            await deployments.apply(s, "d1", Event.COMPLETE)
    async with db.session() as s:
        d = await deployments.get_deployment(s, "d1")
        assert (d.state, d.step) == (DeploymentState.IN_PROGRESS, Step.STARTING)
    # Another writer (a cancel) wins between our read and our write: the compare-and-set
    # fails and says what it found instead of writing over it.
    async with db.session() as reader:
        stale = await deployments.get_deployment(reader, "d1")
    async with db.session() as s:
        await deployments.apply(s, "d1", Event.CANCEL)

    async def stale_read(session: object, deployment_id: str) -> object:
        return stale

    monkeypatch.setattr(deployments, "get_deployment", stale_read)
    with pytest.raises(LostRace) as lost:
        async with db.session() as s:
            await deployments.apply(s, "d1", Event.PROGRESS, step=Step.WARMING)
    monkeypatch.undo()
    assert lost.value.found is not None and lost.value.found.state is DeploymentState.CANCELLED
