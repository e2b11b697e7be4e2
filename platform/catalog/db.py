"""Engine, sessions and migrations of the catalog; SQLite embedded, PostgreSQL in production."""

from __future__ import annotations

from collections.abc import Iterator
from contextlib import contextmanager
from pathlib import Path
from typing import Any

from alembic import command
from alembic.config import Config
from sqlalchemy import Connection, Engine, create_engine, event, text
from sqlalchemy.orm import Session, sessionmaker

MIGRATIONS = Path(__file__).parent / "migrations"
MIGRATION_LOCK_KEY = 0x7761_6D66_6D67  # "wamfmg": pg_advisory_xact_lock key of schema migrations


def _sqlite_pragmas(dbapi_connection: Any, _record: Any) -> None:
    cursor = dbapi_connection.cursor()
    cursor.execute("PRAGMA journal_mode=WAL")  # readers never block the one writer
    cursor.execute("PRAGMA foreign_keys=ON")
    cursor.execute("PRAGMA busy_timeout=30000")
    cursor.close()


def make_engine(url: str, pool_size: int = 5, max_overflow: int = 10) -> Engine:
    if url.startswith("sqlite"):
        path = url.split("///", 1)[-1]
        if path and path != ":memory:":
            Path(path).parent.mkdir(parents=True, exist_ok=True)
        engine = create_engine(url, connect_args={"timeout": 30, "check_same_thread": False})
        event.listen(engine, "connect", _sqlite_pragmas)
        return engine
    return create_engine(url, pool_pre_ping=True, pool_size=pool_size, max_overflow=max_overflow)


def alembic_config(url: str) -> Config:
    config = Config()
    config.set_main_option("script_location", str(MIGRATIONS))
    config.set_main_option("sqlalchemy.url", url.replace("%", "%%"))
    return config


def advisory_xact_lock(target: Connection | Session, key: int) -> None:
    """Holds PostgreSQL's advisory lock `key` (one bigint) until the transaction ends, so that
    several API replicas take turns; nothing on SQLite, which has one writer at a time."""
    dialect = target.dialect if isinstance(target, Connection) else target.get_bind().dialect
    if dialect.name == "postgresql":
        target.execute(text("SELECT pg_advisory_xact_lock(:key)"), {"key": key})


def migrate(engine: Engine) -> None:
    """Brings the schema to the newest migration; safe to run on every start, by several API
    replicas at once: on PostgreSQL they take turns (DDL is transactional there, so the second
    finds the schema at head and does nothing)."""
    with engine.begin() as connection:
        advisory_xact_lock(connection, MIGRATION_LOCK_KEY)
        config = alembic_config(str(engine.url))
        config.attributes["connection"] = connection
        command.upgrade(config, "head")


class Catalog:
    """Owns the engine; hands out short transactions."""

    def __init__(
        self, url: str, *, run_migrations: bool = True, pool_size: int = 5, max_overflow: int = 10
    ) -> None:
        """`pool_size` + `max_overflow` bound this process's PostgreSQL connections (see Settings)."""
        self.url = url
        self.engine = make_engine(url, pool_size, max_overflow)
        if run_migrations:
            migrate(self.engine)
        self._sessions = sessionmaker(self.engine, expire_on_commit=False)

    @contextmanager
    def session(self) -> Iterator[Session]:
        """One transaction: committed on success, rolled back on any exception."""
        with self._sessions() as session, session.begin():
            yield session

    def dispose(self) -> None:
        self.engine.dispose()
