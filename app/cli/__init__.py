"""The `dfcl` command line: one module per command group, assembled here.

Heavy imports (training, torch, the web stack) happen inside the commands so `dfcl --help` stays
fast and the service never pulls torch in.
"""

from __future__ import annotations

import typer

from app.cli import allocate, data, keys, loop, outcomes, service, train

app = typer.Typer(
    name="dfcl",
    help="Budget-constrained treatment allocation with decision-focused causal learning.",
    no_args_is_help=True,
    pretty_exceptions_enable=False,
)
for group in (data, train, service, keys, outcomes, loop, allocate):
    group.register(app)


def main() -> None:
    app()


__all__ = ["app", "main"]
