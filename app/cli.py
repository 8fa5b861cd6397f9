"""The `dfcl` command line.

One Typer app; each area adds its commands in its own section below. Heavy imports
(training, torch, the web stack) happen inside the commands so `dfcl --help` stays fast
and the service never pulls torch in.
"""

from __future__ import annotations

import typer

app = typer.Typer(
    name="dfcl",
    help="Budget-constrained treatment allocation with decision-focused causal learning.",
    no_args_is_help=True,
    pretty_exceptions_enable=False,
)
data_app = typer.Typer(help="Turn real data sets into the training data contract.", no_args_is_help=True)
models_app = typer.Typer(help="Manage the model registry.", no_args_is_help=True)
app.add_typer(data_app, name="data")
app.add_typer(models_app, name="models")


def fail(message: str, code: int = 2) -> None:
    """Print a one-line error for a CLI user and exit non-zero (no stack trace)."""
    typer.secho(f"error: {message}", err=True, fg=typer.colors.RED)
    raise typer.Exit(code)


# --- data: simulate, hillstrom, evaluate (issue 3) ---------------------------------------


# --- training: train, export (issue 4) -----------------------------------------------------


# --- service: serve, models register/list/activate, demo (issue 5) --------------------------


def main() -> None:
    app()


if __name__ == "__main__":
    main()
