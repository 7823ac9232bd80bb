"""The database: an async SQLAlchemy engine, sessions, and migrations run on start.

SQLite (WAL) in the data dir by default; PostgreSQL when the URL says so. Plain driverless
URLs are mapped to the async drivers (``sqlite://`` → aiosqlite, ``postgresql://`` → asyncpg).
"""

from __future__ import annotations

import asyncio
import contextlib
import fcntl
import logging
import os
from collections.abc import AsyncIterator, Iterator
from contextlib import asynccontextmanager, contextmanager
from pathlib import Path
from typing import IO, Any

from alembic import command
from alembic.config import Config
from sqlalchemy import event, text
from sqlalchemy.engine import Connection, make_url
from sqlalchemy.ext.asyncio import (
    AsyncConnection,
    AsyncEngine,
    AsyncSession,
    async_sessionmaker,
    create_async_engine,
)

from turnout.errors import ConfigError

log = logging.getLogger(__name__)

MIGRATIONS = Path(__file__).parent / "migrations"

_ASYNC_DRIVERS = {
    "sqlite": "sqlite+aiosqlite",
    "sqlite+pysqlite": "sqlite+aiosqlite",
    "postgresql": "postgresql+asyncpg",
    "postgres": "postgresql+asyncpg",
    "postgresql+psycopg": "postgresql+asyncpg",
    "postgresql+psycopg2": "postgresql+asyncpg",
}


def async_url(url: str) -> str:
    try:
        parsed = make_url(url)
    except Exception as exc:
        raise ConfigError(f"TURNOUT_DATABASE_URL {url!r} is not a database URL: {exc}") from exc
    driver = _ASYNC_DRIVERS.get(parsed.drivername, parsed.drivername)
    if driver not in ("sqlite+aiosqlite", "postgresql+asyncpg"):
        raise ConfigError(
            f"database driver {parsed.drivername!r} is not supported; "
            "use sqlite:///PATH or postgresql://USER@HOST/DB"
        )
    return parsed.set(drivername=driver).render_as_string(hide_password=False)


def _sqlite_pragmas(dbapi_connection: Any, _record: Any) -> None:
    cursor = dbapi_connection.cursor()
    cursor.execute("PRAGMA journal_mode=WAL")
    cursor.execute("PRAGMA foreign_keys=ON")
    cursor.execute("PRAGMA busy_timeout=10000")
    # FULL: a commit is on disk when it returns. NORMAL in WAL mode may lose the last commits
    # on power loss, and this database holds the control plane's intent (persist-then-act).
    cursor.execute("PRAGMA synchronous=FULL")
    cursor.close()


class Database:
    def __init__(self, url: str) -> None:
        self.url = async_url(url)
        self.is_sqlite = self.url.startswith("sqlite")
        if self.is_sqlite:
            path = make_url(self.url).database
            if path and path != ":memory:":
                Path(path).parent.mkdir(parents=True, exist_ok=True)
        self.engine: AsyncEngine = create_async_engine(self.url, pool_pre_ping=not self.is_sqlite)
        if self.is_sqlite:
            event.listen(self.engine.sync_engine, "connect", _sqlite_pragmas)
        self._sessions = async_sessionmaker(self.engine, expire_on_commit=False)
        self._leader: AsyncConnection | None = None
        self._claim: IO[str] | None = None

    @asynccontextmanager
    async def session(self) -> AsyncIterator[AsyncSession]:
        """One transaction: committed when the block ends, rolled back if it raises."""
        async with self._sessions() as session, session.begin():
            yield session

    async def migrate(self) -> None:
        """Upgrade to the newest schema; safe when several processes start at once."""
        if self.is_sqlite:
            with _file_lock(self._lock_path()):
                async with self.engine.begin() as conn:
                    await conn.run_sync(_upgrade)
            return
        async with self.engine.begin() as conn:
            # Held to the end of the transaction: a second process waits, then finds it current.
            await conn.exec_driver_sql("SELECT pg_advisory_xact_lock(774211)")
            await conn.run_sync(_upgrade)

    def claim_for_server(self) -> None:
        """SQLite: refuse a second server on the same database (the data dir's), which would
        run a second set of workers on it. Held until the process exits (the kernel frees it
        after a kill -9 too). PostgreSQL: several processes share it by design; no claim."""
        path = self._lock_path()
        if not self.is_sqlite or path is None or self._claim is not None:
            return
        claim = Path(str(path).removesuffix(".migrate-lock") + ".server-lock").open("a+")
        try:
            fcntl.flock(claim, fcntl.LOCK_EX | fcntl.LOCK_NB)
        except BlockingIOError:
            claim.seek(0)
            holder = claim.read().strip() or "unknown"
            claim.close()
            raise ConfigError(
                f"another turnout server (pid {holder}) is already running on "
                f"{make_url(self.url).database}; stop it first, or give this server its own "
                "--data-dir (several server processes share a PostgreSQL database, never a "
                "SQLite one)"
            ) from None
        claim.truncate(0)
        claim.write(str(os.getpid()))
        claim.flush()
        self._claim = claim

    def _lock_path(self) -> Path | None:
        path = make_url(self.url).database
        return Path(path + ".migrate-lock") if path and path != ":memory:" else None

    async def try_leader_lock(self) -> bool:
        """PostgreSQL: take the worker leader lock on a connection kept for this process's life
        (the lock goes with the session, so a crashed leader frees it). SQLite: always True."""
        if self.is_sqlite:
            return True
        if self._leader is not None:
            return True
        conn = await self.engine.connect()
        got = await conn.scalar(text("SELECT pg_try_advisory_lock(774212)"))
        if got:
            self._leader = conn
            return True
        await conn.close()
        return False

    async def still_leader(self, timeout: float) -> bool:
        """Whether this process still holds the leader lock: its session is alive and the lock
        granted. False when the session dropped (a network cut, a restarted database, an
        administrator's ``pg_terminate_backend``): PostgreSQL freed the lock with it, and
        another worker may take it. SQLite: always True."""
        if self.is_sqlite:
            return True
        if self._leader is None:
            return False
        try:
            held = await asyncio.wait_for(
                self._leader.scalar(
                    text(
                        "SELECT count(*) FROM pg_locks WHERE locktype = 'advisory' AND "
                        "objid = 774212 AND pid = pg_backend_pid() AND granted"
                    )
                ),
                timeout,
            )
        except Exception:  # any failure of the lock's own session means it is gone
            log.warning("the leader lock's database session failed", exc_info=True)
            return False
        return bool(held)

    async def release_leader_lock(self) -> None:
        if self._leader is not None:
            with contextlib.suppress(Exception):  # its session may be gone already
                await self._leader.close()
            self._leader = None

    async def dispose(self) -> None:
        await self.engine.dispose()
        if self._claim is not None:
            self._claim.close()  # frees the server claim
            self._claim = None


@contextmanager
def _file_lock(path: Path | None) -> Iterator[None]:
    if path is None:
        yield
        return
    with path.open("a") as handle:
        fcntl.flock(handle, fcntl.LOCK_EX)
        try:
            yield
        finally:
            fcntl.flock(handle, fcntl.LOCK_UN)


def _upgrade(connection: Connection) -> None:
    cfg = Config()
    cfg.set_main_option("script_location", str(MIGRATIONS))
    cfg.attributes["connection"] = connection
    command.upgrade(cfg, "head")
