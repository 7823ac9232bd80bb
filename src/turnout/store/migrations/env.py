"""Alembic environment: runs migrations on the connection that ``Database.migrate`` passes in."""

from __future__ import annotations

from alembic import context
from sqlalchemy.engine import Connection

from turnout.store.tables import Base

connection: Connection | None = context.config.attributes.get("connection")
if connection is None:
    raise RuntimeError("run migrations through turnout.store.db.Database.migrate()")

context.configure(
    connection=connection,
    target_metadata=Base.metadata,
    render_as_batch=connection.dialect.name == "sqlite",
)
with context.begin_transaction():
    context.run_migrations()
