"""`dfcl keys create|list|revoke`: API keys (stored hashed; scopes allocate, read, admin)."""

from __future__ import annotations

from typing import Annotated

import typer

from app.cli._common import registry_transaction


def create(
    scope: Annotated[
        list[str], typer.Option("--scope", help="allocate, read or admin (repeat for several).")
    ],
    name: Annotated[str, typer.Option("--name", help="Who or what uses the key.")] = "",
) -> None:
    """Create a key and print it once (only its SHA-256 is stored)."""
    from app.services import keys

    with registry_transaction() as (session, _):
        row, secret = keys.create(session, scope, name)
    typer.echo(secret)
    typer.echo(
        f"key {row.id} ({row.name or 'unnamed'}), scopes {','.join(row.scopes)}: store it now, "
        "it cannot be shown again",
        err=True,
    )


def list_keys() -> None:
    """Keys (id, prefix, name, scopes, created, revoked); secrets are never shown."""
    from app.services import keys

    with registry_transaction() as (session, _):
        rows = keys.list_keys(session)
        for row in rows:
            revoked = f"revoked {row.revoked_at:%Y-%m-%d %H:%M}" if row.revoked_at else "active"
            typer.echo(
                f"{row.id}\t{row.prefix}...\t{row.name or '-'}\t{','.join(row.scopes)}\t"
                f"{row.created_at:%Y-%m-%d %H:%M}\t{revoked}"
            )
    if not rows:
        typer.echo("no API keys (dfcl keys create --scope ...)")


def revoke(
    key: Annotated[str, typer.Argument(help="Key id or the prefix `dfcl keys list` shows.")],
) -> None:
    """Revoke a key; every worker refuses it from its next request on."""
    from app.services import keys

    with registry_transaction() as (session, _):
        row = keys.revoke(session, key.removesuffix("..."))
    typer.echo(f"revoked {row.id} ({row.name or 'unnamed'})")


def register(app: typer.Typer) -> None:
    keys_app = typer.Typer(
        help="API keys (stored hashed; scopes allocate, read, admin).", no_args_is_help=True
    )
    keys_app.command("create")(create)
    keys_app.command("list")(list_keys)
    keys_app.command("revoke")(revoke)
    app.add_typer(keys_app, name="keys")
