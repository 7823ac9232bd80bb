"""operator limits: requests and tokens per minute per inference key, requests in flight per org

Revision ID: 0004
Revises: 0003
Create Date: 2026-12-09 09:00:00
"""

from __future__ import annotations

import sqlalchemy as sa
from alembic import op

revision = "0004"
down_revision = "0003"
branch_labels = None
depends_on = None


def upgrade() -> None:
    # NULL everywhere: no limit.
    with op.batch_alter_table("api_keys") as batch:
        batch.add_column(sa.Column("rpm", sa.Integer(), nullable=True))
        batch.add_column(sa.Column("tpm", sa.BigInteger(), nullable=True))
    with op.batch_alter_table("orgs") as batch:
        batch.add_column(sa.Column("max_concurrent", sa.Integer(), nullable=True))


def downgrade() -> None:
    with op.batch_alter_table("orgs") as batch:
        batch.drop_column("max_concurrent")
    with op.batch_alter_table("api_keys") as batch:
        batch.drop_column("tpm")
        batch.drop_column("rpm")
