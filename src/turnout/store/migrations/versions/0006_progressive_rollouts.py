"""progressive rollouts: policies, traffic shares, gate readings, followed aliases

Revision ID: 0006
Revises: 0005
Create Date: 2026-12-02 10:00:00
"""

from __future__ import annotations

import sqlalchemy as sa
from alembic import op

revision = "0006"
down_revision = "0005"
branch_labels = None
depends_on = None


def upgrade() -> None:
    with op.batch_alter_table("deployments") as batch:
        # The rollout policy as JSON (NULL: surge, the published behaviour).
        batch.add_column(sa.Column("policy", sa.Text(), nullable=True))
        # The new version's share of the endpoint's traffic during a canary.
        batch.add_column(
            sa.Column("traffic_percent", sa.Integer(), nullable=False, server_default="0")
        )
        # The last gate readings: [{name, threshold, reading, verdict, detail}].
        batch.add_column(sa.Column("gates", sa.JSON(), nullable=True))
    with op.batch_alter_table("endpoints") as batch:
        batch.add_column(sa.Column("follow_alias", sa.String(length=128), nullable=True))
        batch.add_column(sa.Column("follow_policy", sa.Text(), nullable=True))
    op.create_table(
        "gateway_stats",
        sa.Column("gateway_id", sa.String(length=64), nullable=False),
        sa.Column("deployment_id", sa.String(length=36), nullable=False),
        sa.Column("stats", sa.JSON(), nullable=False),
        sa.Column("updated", sa.Float(), nullable=False),
        sa.PrimaryKeyConstraint("gateway_id", "deployment_id", name=op.f("pk_gateway_stats")),
    )


def downgrade() -> None:
    op.drop_table("gateway_stats")
    with op.batch_alter_table("endpoints") as batch:
        batch.drop_column("follow_policy")
        batch.drop_column("follow_alias")
    with op.batch_alter_table("deployments") as batch:
        batch.drop_column("gates")
        batch.drop_column("traffic_percent")
        batch.drop_column("policy")
