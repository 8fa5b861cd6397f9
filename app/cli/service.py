"""`dfcl serve`, `dfcl models ...` and `dfcl demo`: run the service and manage its models."""

from __future__ import annotations

import json
from pathlib import Path
from typing import Annotated, Any

import typer

from app.cli._common import fail, registry_transaction


def check_database(settings: Any) -> None:
    """Before starting workers: connect and migrate (or check) the schema as the service
    would, so a missing database or a schema behind with DFCL_AUTO_MIGRATE=false is one
    `error:` line, not a traceback inside a log line."""
    from sqlalchemy.exc import SQLAlchemyError

    from app.db import SchemaNotReady, make_engine, prepare_schema

    try:
        engine = make_engine(settings)
    except (SQLAlchemyError, ValueError, OSError) as exc:
        fail(f"cannot use DFCL_DATABASE_URL: {type(exc).__name__}: {exc}".splitlines()[0])
    try:
        prepare_schema(engine, settings)
    except SchemaNotReady as exc:
        fail(str(exc).splitlines()[0])
    except Exception as exc:  # driver, Alembic or file errors: one line, whatever their type
        fail(f"database {engine.url!r}: {type(exc).__name__}: {exc}".splitlines()[0])
    finally:
        engine.dispose()


def serve(
    host: Annotated[str | None, typer.Option(help="Bind address (default: DFCL_HOST).")] = None,
    port: Annotated[int | None, typer.Option(help="Port (default: DFCL_PORT).")] = None,
    workers: Annotated[int, typer.Option(min=1, help="Worker processes.")] = 1,
) -> None:
    """Start the allocation service (uvicorn); everything else comes from DFCL_* variables."""
    import uvicorn

    from app.config import Settings
    from app.observability import logging_config

    settings = Settings()
    check_database(settings)
    # JSON (or text) lines with the request id; the app logs one line per request itself.
    log_config = logging_config(settings.log_level, settings.log_format)
    uvicorn.run(
        "app.main:create_app",
        factory=True,
        host=host or settings.host,
        port=port or settings.port,
        workers=workers,
        log_level=settings.log_level,
        log_config=log_config,
        access_log=False,
    )


def _print_version(row: Any) -> None:
    state = "active" if row.is_active else "inactive"
    typer.echo(f"{row.version}\t{row.method}\t{len(row.treatments)} treatments\t{state}")


def models_register(
    directory: Annotated[Path, typer.Argument(help="Directory with model.onnx + model.json.")],
    activate: Annotated[bool, typer.Option(help="Also make it the active version.")] = False,
) -> None:
    """Check a model directory, copy it to DFCL_MODELS_DIR/<version>/ and record it."""
    from app.services import models

    with registry_transaction() as (session, registry):
        row = models.register(session, registry, directory)
        if activate:
            row = models.activate(session, registry, row.version)
    _print_version(row)


def models_list() -> None:
    """Registered versions, newest first."""
    from app.services import models

    with registry_transaction() as (session, _):
        rows = models.list_versions(session)
        for row in rows:
            _print_version(row)
    if not rows:
        typer.echo("no model versions registered (dfcl models register DIR)")


def models_activate(version: Annotated[str, typer.Argument(help="A registered version.")]) -> None:
    """Check and activate a version; running services switch on their next request."""
    from app.services import models

    with registry_transaction() as (session, registry):
        row = models.activate(session, registry, version)
    _print_version(row)


def demo(
    workdir: Annotated[Path, typer.Option(help="Where data and training runs go.")] = Path("demo"),
    method: Annotated[str, typer.Option(help="Training method (falls back if missing).")] = (
        "bi-dfcl"
    ),
    full: Annotated[
        bool,
        typer.Option(
            "--full",
            help="Full size: 50,000 OBS / 10,000 RCT / 10,000 test rows and the TrainConfig "
            "defaults (several minutes) instead of the quick demo (about a minute).",
        ),
    ] = False,
    n_obs: Annotated[
        int | None, typer.Option(min=1, help="Observational rows (default 10,000; --full 50,000).")
    ] = None,
    n_rct: Annotated[
        int | None, typer.Option(min=1, help="Randomized rows (default 4,000; --full 10,000).")
    ] = None,
    n_test: Annotated[
        int | None, typer.Option(min=1, help="Randomized test rows (default 2,000; --full 10,000).")
    ] = None,
    config: Annotated[Path | None, typer.Option(help="TrainConfig JSON overrides.")] = None,
    seed: Annotated[int, typer.Option(help="Seed for data and training.")] = 0,
    serve_after: Annotated[bool, typer.Option("--serve/--no-serve", help="Start the service.")] = (
        True
    ),
) -> None:
    """Simulate data, train (Bi-DFCL), register + activate the model, print curl, serve.

    Quick by default (small data, few epochs); --full for the full-size run. Each run revokes
    the API key of the previous demo run and prints a new one.
    """
    from app.config import Settings
    from app.db import SchemaNotReady
    from app.errors import DomainError
    from app.jobs import demo as demo_job

    overrides: dict[str, Any] = {} if full else dict(demo_job.DEMO_CONFIG)
    if config is not None:
        try:
            loaded = json.loads(config.read_text())
        except (OSError, ValueError) as exc:
            fail(f"config {config}: {exc}")
        if not isinstance(loaded, dict):
            fail(f"config {config}: must hold a JSON object")
        overrides.update(loaded)
    base = demo_job.FULL_SIZES if full else demo_job.DEMO_SIZES
    sizes = (n_obs or base[0], n_rct or base[1], n_test or base[2])
    settings = Settings()
    try:
        result = demo_job.run(
            settings,
            workdir,
            method=method,
            config=overrides,
            sizes=sizes,
            seed=seed,
            say=typer.echo,
        )
    except (DomainError, SchemaNotReady, ValueError, RuntimeError, OSError) as exc:
        fail(str(exc))
    typer.echo(
        f"\nmodel {result.version} is active: the {result.method} run's {result.phase} "
        "weights (see 'serving:' above). Try it:\n"
    )
    typer.echo(result.curl + "\n")
    if serve_after:
        typer.echo(f"starting the service on {settings.database_url} (Ctrl+C stops it)")
        serve(host=None, port=None, workers=1)


def register(app: typer.Typer) -> None:
    app.command()(serve)
    app.command()(demo)
    models_app = typer.Typer(help="Manage the model registry.", no_args_is_help=True)
    models_app.command("register")(models_register)
    models_app.command("list")(models_list)
    models_app.command("activate")(models_activate)
    app.add_typer(models_app, name="models")
