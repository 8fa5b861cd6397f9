"""`dfcl outcomes import`: load a campaign's observed outcomes in bulk."""

from __future__ import annotations

import uuid
from pathlib import Path
from typing import Annotated

import typer

from app.cli._common import fail, registry_transaction


def import_file(
    file: Annotated[Path, typer.Argument(help="CSV or Parquet: customer_id, revenue, cost.")],
    allocation: Annotated[str, typer.Option("--allocation", help="The allocation's id.")],
) -> None:
    """Record (upsert) one allocation's outcomes from a file, with the API's checks."""
    from app.services import outcomes

    try:
        allocation_id = uuid.UUID(allocation)
    except ValueError:
        fail(f"--allocation {allocation!r} is not an allocation id (a UUID)")
    try:
        columns = outcomes.read_file(file)
    except ValueError as exc:
        fail(str(exc))
    with registry_transaction() as (session, _):
        written = outcomes.record(session, allocation_id, *columns)
    typer.echo(
        f"{written.n_written} outcomes written; allocation {allocation_id} now has "
        f"{written.n_outcomes}"
    )


def register(app: typer.Typer) -> None:
    outcomes_app = typer.Typer(help="Observed outcomes of allocations.", no_args_is_help=True)
    outcomes_app.command("import")(import_file)
    app.add_typer(outcomes_app, name="outcomes")
