"""SQLAlchemy tables. Storage types only: repositories turn rows into frozen records.

Every status is one stored ``state`` column (plus its reason/error), never derived from flags.
Schema changes go through Alembic migrations in ``store/migrations``.
"""

from __future__ import annotations

from enum import StrEnum
from typing import Any

from sqlalchemy import (
    JSON,
    BigInteger,
    Enum,
    Float,
    ForeignKey,
    Index,
    Integer,
    MetaData,
    String,
    Text,
    UniqueConstraint,
)
from sqlalchemy.orm import DeclarativeBase, Mapped, mapped_column

from turnout.states import DeploymentState, ReplicaState, Step

NAMING = {
    "ix": "ix_%(column_0_label)s",
    "uq": "uq_%(table_name)s_%(column_0_name)s",
    "fk": "fk_%(table_name)s_%(column_0_name)s_%(referred_table_name)s",
    "pk": "pk_%(table_name)s",
}


def _enum_column(enum: type[StrEnum], length: int) -> Enum:
    """A plain VARCHAR holding the enum's values (not its member names); no CHECK constraint,
    so adding a member needs no migration."""
    return Enum(
        enum,
        native_enum=False,
        create_constraint=False,
        length=length,
        values_callable=lambda members: [m.value for m in members],
        validate_strings=True,
    )


class Base(DeclarativeBase):
    metadata = MetaData(naming_convention=NAMING)


class OrgRow(Base):
    __tablename__ = "orgs"
    id: Mapped[int] = mapped_column(Integer, primary_key=True, autoincrement=True)
    name: Mapped[str] = mapped_column(String(128), unique=True)
    created: Mapped[int] = mapped_column(BigInteger)
    #: requests in flight over all the org's endpoints, per gateway; NULL: no limit
    max_concurrent: Mapped[int | None] = mapped_column(Integer, nullable=True)


class ApiKeyRow(Base):
    __tablename__ = "api_keys"
    id: Mapped[str] = mapped_column(String(32), primary_key=True)
    org_id: Mapped[int] = mapped_column(ForeignKey("orgs.id", ondelete="CASCADE"), index=True)
    kind: Mapped[str] = mapped_column(String(16))  # management | inference
    key_hash: Mapped[str] = mapped_column(String(64), unique=True)
    prefix: Mapped[str] = mapped_column(String(16))
    created: Mapped[int] = mapped_column(BigInteger)
    revoked: Mapped[int | None] = mapped_column(BigInteger, nullable=True)
    #: inference keys: requests and tokens per minute, per gateway; NULL: no limit
    rpm: Mapped[int | None] = mapped_column(Integer, nullable=True)
    tpm: Mapped[int | None] = mapped_column(BigInteger, nullable=True)


class ArchitectureRow(Base):
    """The catalog as stored; seeded from the built-in catalog on every start."""

    __tablename__ = "architectures"
    arch_id: Mapped[str] = mapped_column(String(128), primary_key=True)
    description: Mapped[str] = mapped_column(Text)
    config: Mapped[dict[str, Any]] = mapped_column(JSON)
    serving: Mapped[dict[str, Any]] = mapped_column(JSON)


class ArchGrantRow(Base):
    __tablename__ = "arch_grants"
    org_id: Mapped[int] = mapped_column(ForeignKey("orgs.id", ondelete="CASCADE"), primary_key=True)
    arch_id: Mapped[str] = mapped_column(ForeignKey("architectures.arch_id"), primary_key=True)


class ModelVersionRow(Base):
    __tablename__ = "model_versions"
    __table_args__ = (UniqueConstraint("org_id", "arch_id", "version_number"),)
    id: Mapped[int] = mapped_column(Integer, primary_key=True, autoincrement=True)
    org_id: Mapped[int] = mapped_column(ForeignKey("orgs.id", ondelete="CASCADE"))
    arch_id: Mapped[str] = mapped_column(ForeignKey("architectures.arch_id"))
    version_number: Mapped[int] = mapped_column(Integer)
    weight_uri: Mapped[str] = mapped_column(Text)
    fingerprint_suffix: Mapped[str | None] = mapped_column(String(64), nullable=True)
    sync_status: Mapped[str] = mapped_column(String(16), index=True)
    sync_error: Mapped[str | None] = mapped_column(Text, nullable=True)
    bytes_done: Mapped[int] = mapped_column(BigInteger, default=0)
    bytes_total: Mapped[int] = mapped_column(BigInteger, default=0)
    digest: Mapped[str | None] = mapped_column(String(80), nullable=True)
    weight_path: Mapped[str | None] = mapped_column(Text, nullable=True)
    created: Mapped[int] = mapped_column(BigInteger)
    updated: Mapped[int] = mapped_column(BigInteger)
    #: Deleted versions keep their row so their integer id is never reused.
    deleted: Mapped[int | None] = mapped_column(BigInteger, nullable=True)


class VersionAliasRow(Base):
    __tablename__ = "version_aliases"
    org_id: Mapped[int] = mapped_column(ForeignKey("orgs.id", ondelete="CASCADE"), primary_key=True)
    arch_id: Mapped[str] = mapped_column(String(128), primary_key=True)
    alias: Mapped[str] = mapped_column(String(128), primary_key=True)
    version_id: Mapped[int] = mapped_column(
        ForeignKey("model_versions.id", ondelete="CASCADE"), index=True
    )
    position: Mapped[int] = mapped_column(Integer, default=0)


class EndpointRow(Base):
    __tablename__ = "endpoints"
    endpoint_id: Mapped[str] = mapped_column(String(128), primary_key=True)
    org_id: Mapped[int] = mapped_column(ForeignKey("orgs.id", ondelete="CASCADE"), index=True)
    arch_id: Mapped[str] = mapped_column(ForeignKey("architectures.arch_id"))
    replicas: Mapped[int] = mapped_column(Integer, default=1)
    engine: Mapped[str] = mapped_column(String(64), default="builtin")
    #: None: the architecture's serving default.
    gpus_per_replica: Mapped[int | None] = mapped_column(Integer, nullable=True)
    serving_deployment_id: Mapped[str | None] = mapped_column(String(36), nullable=True)
    #: Why the endpoint runs fewer replicas than it wants (e.g. no capacity), else None.
    replica_problem: Mapped[str | None] = mapped_column(Text, nullable=True)
    #: An alias the endpoint follows: moving it submits a deployment with ``follow_policy``.
    follow_alias: Mapped[str | None] = mapped_column(String(128), nullable=True)
    follow_policy: Mapped[str | None] = mapped_column(Text, nullable=True)
    created: Mapped[int] = mapped_column(BigInteger)
    updated: Mapped[int] = mapped_column(BigInteger)


class DeploymentRow(Base):
    __tablename__ = "deployments"
    __table_args__ = (
        Index("ix_deployments_endpoint_seq", "endpoint_id", "seq"),
        # Two concurrent submissions cannot share a seq: the second insert fails and its
        # transaction runs again, taking the next one (api/services/races.py).
        UniqueConstraint("seq", name="uq_deployments_seq"),
    )
    id: Mapped[str] = mapped_column(String(36), primary_key=True)
    #: Submission order; deployments on one endpoint run first in, first out by it.
    seq: Mapped[int] = mapped_column(BigInteger)
    endpoint_id: Mapped[str] = mapped_column(
        ForeignKey("endpoints.endpoint_id", ondelete="CASCADE")
    )
    org_id: Mapped[int] = mapped_column(ForeignKey("orgs.id", ondelete="CASCADE"))
    version_id: Mapped[int] = mapped_column(ForeignKey("model_versions.id"))
    alias_used: Mapped[str | None] = mapped_column(String(128), nullable=True)
    state: Mapped[DeploymentState] = mapped_column(_enum_column(DeploymentState, 16), index=True)
    step: Mapped[Step] = mapped_column(_enum_column(Step, 32))
    error_code: Mapped[str | None] = mapped_column(String(64), nullable=True)
    error_message: Mapped[str | None] = mapped_column(Text, nullable=True)
    created: Mapped[int] = mapped_column(BigInteger)
    updated: Mapped[int] = mapped_column(BigInteger)
    #: The rollout policy as JSON (None: surge); see turnout.policy.
    policy: Mapped[str | None] = mapped_column(Text, nullable=True)
    #: The new version's share of traffic during a canary.
    traffic_percent: Mapped[int] = mapped_column(Integer, default=0, server_default="0")
    #: The last gate readings (opaque to the store).
    gates: Mapped[list[dict[str, Any]] | None] = mapped_column(JSON, nullable=True)


class DeploymentEventRow(Base):
    __tablename__ = "deployment_events"
    id: Mapped[int] = mapped_column(Integer, primary_key=True, autoincrement=True)
    deployment_id: Mapped[str] = mapped_column(
        ForeignKey("deployments.id", ondelete="CASCADE"), index=True
    )
    at: Mapped[float] = mapped_column(Float)
    step: Mapped[str] = mapped_column(String(32))
    message: Mapped[str] = mapped_column(Text)


class ReplicaRow(Base):
    __tablename__ = "replicas"
    id: Mapped[str] = mapped_column(String(200), primary_key=True)
    endpoint_id: Mapped[str] = mapped_column(String(128), index=True)
    deployment_id: Mapped[str] = mapped_column(String(36), index=True)
    address: Mapped[str | None] = mapped_column(String(256), nullable=True)
    pid: Mapped[int | None] = mapped_column(Integer, nullable=True)
    state: Mapped[ReplicaState] = mapped_column(_enum_column(ReplicaState, 16))
    error: Mapped[str | None] = mapped_column(Text, nullable=True)
    #: The node it runs on (the placement's name for it) and the GPU ids it was given.
    node: Mapped[str | None] = mapped_column(String(256), nullable=True)
    gpus: Mapped[list[int] | None] = mapped_column(JSON, nullable=True)
    #: What it is doing now, e.g. "fetching weights: 120/540 MiB".
    detail: Mapped[str | None] = mapped_column(Text, nullable=True)
    restarts: Mapped[int] = mapped_column(Integer, default=0, server_default="0")
    created: Mapped[int] = mapped_column(BigInteger)
    updated: Mapped[int] = mapped_column(BigInteger)


class IdempotencyRow(Base):
    __tablename__ = "idempotency_keys"
    org_id: Mapped[int] = mapped_column(ForeignKey("orgs.id", ondelete="CASCADE"), primary_key=True)
    #: e.g. ``deploy:<endpoint id>`` (endpoint ids are up to 128 characters).
    route: Mapped[str] = mapped_column(String(200), primary_key=True)
    key: Mapped[str] = mapped_column(String(256), primary_key=True)
    body_hash: Mapped[str] = mapped_column(String(64))
    resource_id: Mapped[str] = mapped_column(String(128))
    created: Mapped[int] = mapped_column(BigInteger)


class SourceGrantRow(Base):
    """A weight source an org may sync from (the operator's ``turnout admin org s3-allow`` and
    friends): an S3 bucket/prefix, a local directory, or a Hugging Face namespace/repo."""

    __tablename__ = "source_grants"
    __table_args__ = (UniqueConstraint("org_id", "scheme", "prefix"),)
    id: Mapped[int] = mapped_column(Integer, primary_key=True, autoincrement=True)
    org_id: Mapped[int] = mapped_column(ForeignKey("orgs.id", ondelete="CASCADE"), index=True)
    #: s3 | file | hf
    scheme: Mapped[str] = mapped_column(String(8))
    #: s3: ``bucket/prefix/`` (``bucket/`` for the whole bucket); file: an absolute directory;
    #: hf: ``namespace/`` or ``namespace/repo``.
    prefix: Mapped[str] = mapped_column(String(1024))
    #: The name of the credentials to use, never a secret: s3, an AWS profile of the server;
    #: hf, the server environment variable that holds the token.
    credentials: Mapped[str | None] = mapped_column(String(256), nullable=True)
    created: Mapped[int] = mapped_column(BigInteger)


class RoutingStateRow(Base):
    """One row: bumped each time the routing table changes, so gateways in other processes
    know to rebuild theirs."""

    __tablename__ = "routing_state"
    id: Mapped[int] = mapped_column(Integer, primary_key=True)
    generation: Mapped[int] = mapped_column(BigInteger)


class GatewayRow(Base):
    """Each gateway process reports the routing generation it serves, so a worker in another
    process knows when old replicas stop getting new requests."""

    __tablename__ = "gateways"
    id: Mapped[str] = mapped_column(String(64), primary_key=True)
    generation: Mapped[int] = mapped_column(BigInteger)
    seen: Mapped[float] = mapped_column(Float)


class GatewayStatsRow(Base):
    """What each gateway process counted per deployment (turnout.routing.stats), so a worker in
    another process can judge a canary."""

    __tablename__ = "gateway_stats"
    gateway_id: Mapped[str] = mapped_column(String(64), primary_key=True)
    deployment_id: Mapped[str] = mapped_column(String(36), primary_key=True)
    stats: Mapped[dict[str, Any]] = mapped_column(JSON)
    updated: Mapped[float] = mapped_column(Float)
