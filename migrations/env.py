"""Alembic environment: target the ORM metadata; URL from the caller or from Settings."""

from __future__ import annotations

from alembic import context
from sqlalchemy import Connection, create_engine, pool, text

import app.tables  # noqa: F401  (registers the tables on Base.metadata)
from app.config import Settings
from app.db import Base, database_url

config = context.config
target_metadata = Base.metadata

# Any id works; it only has to be the same for every process migrating this database.
_MIGRATION_LOCK_ID = 7_265_401


def _url() -> str:
    """The caller's URL (service startup, tests) or the environment's (`alembic upgrade head`)."""
    url = config.get_main_option("sqlalchemy.url")
    return url or database_url(Settings()).render_as_string(hide_password=False)


def _run(connection: Connection) -> None:
    """Run pending revisions; batch mode because SQLite cannot ALTER most things in place."""
    context.configure(
        connection=connection,
        target_metadata=target_metadata,
        render_as_batch=connection.dialect.name == "sqlite",
        compare_type=True,
    )
    with context.begin_transaction():
        if connection.dialect.name == "postgresql":
            # Several workers may start at once: one migrates, the others then see head.
            connection.execute(
                text("SELECT pg_advisory_xact_lock(:id)"), {"id": _MIGRATION_LOCK_ID}
            )
        context.run_migrations()


def run_migrations_offline() -> None:
    """Emit SQL instead of running it (`alembic upgrade head --sql`)."""
    context.configure(url=_url(), target_metadata=target_metadata, literal_binds=True)
    with context.begin_transaction():
        context.run_migrations()


def run_migrations_online() -> None:
    """Migrate over the connection handed in by the service, or a fresh one."""
    connection = config.attributes.get("connection")
    if connection is not None:
        _run(connection)
        return
    engine = create_engine(_url(), poolclass=pool.NullPool)
    with engine.connect() as connection:
        _run(connection)
        connection.commit()


if context.is_offline_mode():
    run_migrations_offline()
else:
    run_migrations_online()
