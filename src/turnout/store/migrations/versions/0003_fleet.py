"""the fleet: GPUs per replica, where each replica runs, why an endpoint is short

Revision ID: 0003
Revises: 0002
Create Date: 2026-12-02 09:00:00
"""

from __future__ import annotations

import sqlalchemy as sa
from alembic import op

revision = "0003"
down_revision = "0002"
branch_labels = None
depends_on = None


def upgrade() -> None:
    with op.batch_alter_table("endpoints") as batch:
        # NULL: the architecture's serving default.
        batch.add_column(sa.Column("gpus_per_replica", sa.Integer(), nullable=True))
        # Why the endpoint runs fewer replicas than it wants (e.g. no capacity), or NULL.
        batch.add_column(sa.Column("replica_problem", sa.Text(), nullable=True))
    with op.batch_alter_table("replicas") as batch:
        # Replica ids hold the endpoint id (up to 128 characters) and two suffixes.
        batch.alter_column("id", existing_type=sa.String(length=64), type_=sa.String(length=200))
        batch.add_column(sa.Column("node", sa.String(length=256), nullable=True))
        batch.add_column(sa.Column("gpus", sa.JSON(), nullable=True))
        # What the replica is doing now, e.g. "fetching weights: 120/540 MiB".
        batch.add_column(sa.Column("detail", sa.Text(), nullable=True))
        batch.add_column(sa.Column("restarts", sa.Integer(), nullable=False, server_default="0"))


def downgrade() -> None:
    with op.batch_alter_table("replicas") as batch:
        batch.drop_column("restarts")
        batch.drop_column("detail")
        batch.drop_column("gpus")
        batch.drop_column("node")
        batch.alter_column("id", existing_type=sa.String(length=200), type_=sa.String(length=64))
    with op.batch_alter_table("endpoints") as batch:
        batch.drop_column("replica_problem")
        batch.drop_column("gpus_per_replica")
