"""hardening: unique deployment seq, room for long idempotency routes, per-org weight sources

Revision ID: 0005
Revises: 0004
Create Date: 2026-12-10 09:00:00

MERGE NOTE: revision 0004 (the gateway's) lands separately; when both are on one branch, set
``down_revision = "0004"`` here so the chain stays linear (0003 -> 0004 -> 0005).
"""

from __future__ import annotations

import sqlalchemy as sa
from alembic import op

revision = "0005"
down_revision = "0004"
branch_labels = None
depends_on = None


def upgrade() -> None:
    # Before the constraint: concurrent submissions could have stored one seq twice.
    # Renumber 1..n in the order they had (ties by id), which keeps every FIFO as it was.
    op.execute(
        "UPDATE deployments SET seq = (SELECT COUNT(*) FROM deployments AS d2 "
        "WHERE d2.seq < deployments.seq OR (d2.seq = deployments.seq AND d2.id <= deployments.id))"
    )
    with op.batch_alter_table("deployments") as batch:
        batch.create_unique_constraint("uq_deployments_seq", ["seq"])
    with op.batch_alter_table("idempotency_keys") as batch:
        batch.alter_column("route", existing_type=sa.String(length=64), type_=sa.String(length=200))
    op.create_table(
        "source_grants",
        sa.Column("id", sa.Integer(), autoincrement=True, nullable=False),
        sa.Column("org_id", sa.Integer(), nullable=False),
        sa.Column("scheme", sa.String(length=8), nullable=False),
        sa.Column("prefix", sa.String(length=1024), nullable=False),
        sa.Column("credentials", sa.String(length=256), nullable=True),
        sa.Column("created", sa.BigInteger(), nullable=False),
        sa.ForeignKeyConstraint(
            ["org_id"], ["orgs.id"], name="fk_source_grants_org_id_orgs", ondelete="CASCADE"
        ),
        sa.PrimaryKeyConstraint("id", name="pk_source_grants"),
        sa.UniqueConstraint("org_id", "scheme", "prefix", name="uq_source_grants_org_id"),
    )
    op.create_index("ix_source_grants_org_id", "source_grants", ["org_id"])


def downgrade() -> None:
    op.drop_index("ix_source_grants_org_id", table_name="source_grants")
    op.drop_table("source_grants")
    with op.batch_alter_table("idempotency_keys") as batch:
        batch.alter_column("route", existing_type=sa.String(length=200), type_=sa.String(length=64))
    with op.batch_alter_table("deployments") as batch:
        batch.drop_constraint("uq_deployments_seq", type_="unique")
