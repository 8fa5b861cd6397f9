"""Database plumbing: declarative Base, engine/session factories and Alembic at startup."""

from __future__ import annotations

import fcntl
import logging
import threading
from collections.abc import Iterator
from contextlib import contextmanager
from datetime import UTC, datetime
from pathlib import Path
from typing import Any

from alembic import command
from alembic.config import Config
from alembic.runtime.migration import MigrationContext
from alembic.script import ScriptDirectory
from sqlalchemy import DateTime, Engine, MetaData, create_engine, event
from sqlalchemy.engine import URL, Dialect, make_url
from sqlalchemy.orm import DeclarativeBase, Session, sessionmaker
from sqlalchemy.types import TypeDecorator

from app.config import Settings

log = logging.getLogger(__name__)

# Stable constraint names on SQLite and PostgreSQL, so migrations can name what they alter.
NAMING_CONVENTION = {
    "ix": "ix_%(column_0_label)s",
    "uq": "uq_%(table_name)s_%(column_0_N_name)s",
    "ck": "ck_%(table_name)s_%(constraint_name)s",
    "fk": "fk_%(table_name)s_%(column_0_name)s_%(referred_table_name)s",
    "pk": "pk_%(table_name)s",
}


class Base(DeclarativeBase):
    """Declarative base of every table; metadata carries the naming convention."""

    metadata = MetaData(naming_convention=NAMING_CONVENTION)


class UTCDateTime(TypeDecorator[datetime]):
    """Aware UTC datetimes on every backend (SQLite stores naive text, Postgres timestamptz)."""

    impl = DateTime(timezone=True)
    cache_ok = True

    def process_bind_param(self, value: datetime | None, dialect: Dialect) -> datetime | None:
        if value is None:
            return None
        value = value.replace(tzinfo=UTC) if value.tzinfo is None else value.astimezone(UTC)
        # SQLite compares the stored text, so store one canonical naive-UTC form.
        return value.replace(tzinfo=None) if dialect.name == "sqlite" else value

    def process_result_value(self, value: datetime | None, dialect: Dialect) -> datetime | None:
        if value is None:
            return None
        return value.replace(tzinfo=UTC) if value.tzinfo is None else value.astimezone(UTC)


class SchemaNotReady(RuntimeError):
    """The database schema is not at the migrations' head and we may not upgrade it."""


def database_url(settings: Settings) -> URL:
    """Parsed URL; plain postgresql:// means psycopg 3, the driver we ship."""
    url = make_url(settings.database_url)
    if url.drivername in ("postgresql", "postgres"):
        url = url.set(drivername="postgresql+psycopg")
    return url


def _sqlite_pragmas(dbapi_connection: Any, _record: Any) -> None:
    """WAL lets readers run beside the one writer; foreign keys are off by default in SQLite."""
    cursor = dbapi_connection.cursor()
    cursor.execute("PRAGMA journal_mode=WAL")
    cursor.execute("PRAGMA synchronous=NORMAL")
    cursor.execute("PRAGMA foreign_keys=ON")
    cursor.close()


def make_engine(settings: Settings) -> Engine:
    """Engine for the configured URL; creates the SQLite file's directory if needed."""
    url = database_url(settings)
    if url.get_backend_name() == "sqlite":
        if url.database and url.database != ":memory:":
            Path(url.database).parent.mkdir(parents=True, exist_ok=True)
        # timeout: wait for the write lock instead of failing at once under concurrency.
        engine = create_engine(url, connect_args={"timeout": 30, "check_same_thread": False})
        event.listen(engine, "connect", _sqlite_pragmas)
        return engine
    return create_engine(
        url, pool_size=settings.db_pool_size, max_overflow=settings.db_pool_size, pool_pre_ping=True
    )


class WriteGate:
    """Queues this process's writers on a lock when the database allows a single writer.

    SQLite's own busy handler retries after sleeps of up to 100 ms, so under concurrent writes
    a waiter can lose many rounds (seconds of tail latency); a lock hands over at once. The
    gate is taken just before a transaction's first write and released when it ends.
    """

    def __init__(self, enabled: bool) -> None:
        self._lock = threading.Lock() if enabled else None

    def enter(self, session: Session) -> None:
        if self._lock is not None and not session.info.get(_GATE_HELD):
            self._lock.acquire()
            session.info[_GATE_HELD] = True

    def leave(self, session: Session) -> None:
        if self._lock is not None and session.info.pop(_GATE_HELD, False):
            self._lock.release()


_GATE = "write_gate"
_GATE_HELD = "write_gate_held"


def begin_write(session: Session) -> None:
    """Call before a transaction's first write (see WriteGate)."""
    gate = session.info.get(_GATE)
    if gate is not None:
        gate.enter(session)


def end_write(session: Session, *_: Any) -> None:
    """Release the write gate once the transaction committed or rolled back."""
    gate = session.info.get(_GATE)
    if gate is not None:
        gate.leave(session)


def make_sessionmaker(engine: Engine) -> sessionmaker[Session]:
    """Sessions whose objects stay readable after commit (responses are built after it)."""
    gate = WriteGate(enabled=engine.dialect.name == "sqlite")
    factory = sessionmaker(engine, expire_on_commit=False, info={_GATE: gate})
    event.listen(factory, "after_commit", end_write)
    event.listen(factory, "after_rollback", end_write)
    return factory


def find_migrations(settings: Settings) -> Path:
    """Alembic script directory: the setting, else beside the package (source or editable
    install), else ./migrations (the Docker image copies it there)."""
    candidates = (
        [settings.migrations_dir]
        if settings.migrations_dir is not None
        else [Path(__file__).resolve().parents[1] / "migrations", Path.cwd() / "migrations"]
    )
    for path in candidates:
        if (path / "env.py").is_file():
            return path
    tried = ", ".join(str(p) for p in candidates)
    raise SchemaNotReady(
        f"Alembic migrations not found (looked in {tried}); set DFCL_MIGRATIONS_DIR"
    )


def alembic_config(migrations_dir: Path, url: URL) -> Config:
    """Alembic config built in code, so no alembic.ini is needed at run time."""
    config = Config()
    config.set_main_option("script_location", str(migrations_dir))
    config.set_main_option("sqlalchemy.url", url.render_as_string(hide_password=False))
    return config


def prepare_schema(engine: Engine, settings: Settings) -> None:
    """Bring the schema to head, or refuse to start when auto-migration is off and it is behind."""
    config = alembic_config(find_migrations(settings), engine.url)
    head = ScriptDirectory.from_config(config).get_current_head()
    with engine.connect() as connection:
        current = MigrationContext.configure(connection).get_current_revision()
    if current == head:
        return
    if not settings.auto_migrate:
        raise SchemaNotReady(
            f"database schema is at revision {current}, the code needs {head}; run "
            "`alembic upgrade head` or start with DFCL_AUTO_MIGRATE=true"
        )
    log.info("migrating database from %s to %s", current, head)
    with _sqlite_migration_lock(engine), engine.begin() as connection:
        config.attributes["connection"] = connection
        command.upgrade(config, "head")  # Postgres: env.py takes an advisory lock


@contextmanager
def _sqlite_migration_lock(engine: Engine) -> Iterator[None]:
    """One migrating process per SQLite file (several workers may start at once).

    pysqlite runs DDL outside a transaction, so the database itself cannot serialise two
    upgrades; an exclusive lock on a file beside it does, and the second process then finds
    the schema at head (Alembic re-reads the version inside the lock).
    """
    database = engine.url.database
    if engine.dialect.name != "sqlite" or not database or database == ":memory:":
        yield
        return
    with open(f"{database}.migrate-lock", "a") as handle:
        fcntl.flock(handle, fcntl.LOCK_EX)
        try:
            yield
        finally:
            fcntl.flock(handle, fcntl.LOCK_UN)
