"""What every `dfcl` command group shares: the one-line error exit and a database transaction."""

from __future__ import annotations

from collections.abc import Iterator
from contextlib import contextmanager
from typing import TYPE_CHECKING, NoReturn

import typer

if TYPE_CHECKING:
    from sqlalchemy.orm import Session

    from app.registry import Registry


def fail(message: str, code: int = 2) -> NoReturn:
    """Print a one-line error for a CLI user and exit non-zero (no stack trace)."""
    typer.secho(f"error: {message}", err=True, fg=typer.colors.RED)
    raise typer.Exit(code)


@contextmanager
def registry_transaction() -> Iterator[tuple[Session, Registry]]:
    """(session, registry) on the configured database, migrated; commits at the end.

    Domain and database errors become one `error:` line, like every other CLI failure.
    """
    from sqlalchemy.exc import SQLAlchemyError

    from app.config import Settings
    from app.db import SchemaNotReady, make_engine, make_sessionmaker, prepare_schema
    from app.errors import DomainError
    from app.registry import Registry

    settings = Settings()
    engine = make_engine(settings)
    try:
        prepare_schema(engine, settings)
        with make_sessionmaker(engine)() as session, session.begin():
            yield session, Registry(settings.models_dir, threads=settings.inference_threads)
    except (DomainError, SchemaNotReady) as exc:
        fail(str(exc))
    except SQLAlchemyError as exc:
        fail(f"database {engine.url!r}: {type(exc).__name__}: {exc}".splitlines()[0])
    finally:
        engine.dispose()
