"""The `dfcl` command line.

One Typer app; each area adds its commands in its own section below. Heavy imports
(training, torch, the web stack) happen inside the commands so `dfcl --help` stays fast
and the service never pulls torch in.
"""

from __future__ import annotations

import json
from pathlib import Path
from typing import Annotated, Any

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


@app.command()
def simulate(
    out: Annotated[
        Path, typer.Option("--out", help="Directory for rct/obs/test/truth + dataset.json.")
    ],
    n_obs: Annotated[
        int, typer.Option("--n-obs", min=1, help="Observational (logged) rows.")
    ] = 100_000,
    n_rct: Annotated[
        int, typer.Option("--n-rct", min=1, help="Randomized training rows.")
    ] = 10_000,
    n_test: Annotated[
        int, typer.Option("--n-test", min=1, help="Randomized test rows (+ truth).")
    ] = 100_000,
    treatments: Annotated[
        int, typer.Option("--treatments", min=2, help="K: control + K-1 intensities.")
    ] = 5,
    bias: Annotated[
        float, typer.Option("--bias", min=0.0, help="Confounding of the OBS policy.")
    ] = 1.0,
    seed: Annotated[int, typer.Option("--seed", help="Random seed.")] = 0,
) -> None:
    """Write a simulated discount campaign with known ground truth (see training/data/simulator)."""
    from training.data.simulator import simulate as run_simulation

    try:
        sim = run_simulation(
            n_obs=n_obs, n_rct=n_rct, n_test=n_test, n_treatments=treatments, bias=bias, seed=seed
        )
        sim.write(out)
    except (ValueError, OSError) as exc:
        fail(str(exc))
    typer.echo(f"wrote {out}: rct {n_rct}, obs {n_obs}, test {n_test} rows, K={treatments}")
    rev, cost = sim.truth_revenue.mean(axis=0), sim.truth_cost.mean(axis=0)
    for name, r, c in zip(sim.treatments, rev, cost, strict=True):
        typer.echo(f"  everyone on {name:>16}: true revenue {r:8.4f}  cost {c:7.4f} per capita")


@data_app.command("hillstrom")
def data_hillstrom(
    path: Annotated[Path, typer.Argument(help="The Hillstrom CSV (64,000 rows).")],
    out: Annotated[Path, typer.Option("--out", help="Directory for rct/obs/test + dataset.json.")],
    rct_fraction: Annotated[
        float, typer.Option("--rct-fraction", help="Share of rows: RCT-train.")
    ] = 0.10,
    test_fraction: Annotated[
        float, typer.Option("--test-fraction", help="Share of rows: RCT-test.")
    ] = 0.30,
    bias: Annotated[
        float, typer.Option("--bias", min=0.0, help="Strength of the OBS selection.")
    ] = 1.0,
    seed: Annotated[int, typer.Option("--seed", help="Seed of the split and the selection.")] = 0,
) -> None:
    """Turn the Hillstrom e-mail experiment into RCT-train, RCT-test and a biased OBS sample."""
    from training.data.hillstrom import HillstromParams, build

    try:
        params = HillstromParams(rct_fraction, test_fraction, bias, seed)
        directory = build(path, out, params)
    except (ValueError, OSError) as exc:
        fail(str(exc))
    rows = json.loads((directory / "dataset.json").read_text())["params"]["rows"]
    typer.echo(f"wrote {directory}: " + ", ".join(f"{k} {v} rows" for k, v in rows.items()))


@app.command()
def evaluate(
    data: Annotated[
        Path, typer.Argument(help="RCT table, or a dataset dir (its test table + truth).")
    ],
    predictions: Annotated[
        Path | None,
        typer.Option(
            "--predictions", help="CSV/Parquet with revenue_0.., cost_0.. row-aligned to DATA."
        ),
    ] = None,
    truth: Annotated[
        Path | None, typer.Option("--truth", help="Ground-truth table (simulator).")
    ] = None,
    budgets: Annotated[
        int, typer.Option("--budgets", min=1, help="Per-capita budgets on the grid.")
    ] = 10,
    plot: Annotated[
        Path | None, typer.Option("--plot", help="Save the budget curve as a PNG.")
    ] = None,
) -> None:
    """Budget curve (mode E: equal realized spend), normalised area and AUCC (K=2) on RCT data."""
    from training.data import DataError
    from training.evaluate import evaluate_predictions, plot_curve, read_predictions

    if predictions is None:
        fail("give --predictions FILE (columns revenue_0.., cost_0.. row-aligned with DATA)")
        return
    try:
        k = _dataset_arms(data)
        revenue_pred, cost_pred = read_predictions(predictions, k)
        table, truth_arrays = _evaluation_data(data, truth, revenue_pred.shape[1])
        result = evaluate_predictions(
            table, revenue_pred, cost_pred, n_budgets=budgets, truth=truth_arrays
        )
        if plot is not None:
            plot_curve({predictions.stem: result}, plot)
    except (DataError, ValueError, OSError) as exc:
        fail(str(exc))
        return
    typer.echo(result.frame().to_string(index=False, float_format=lambda v: f"{v:.4f}"))
    for key, value in result.summary().items():
        typer.echo(f"{key}: {value:.4f}")
    if plot is not None:
        typer.echo(f"plot: {plot}")


def _dataset_arms(data: Path) -> int | None:
    """K from a dataset directory's dataset.json; None for a plain table (taken from predictions)."""
    from training.data import DataError

    if not data.is_dir():
        return None
    try:
        return len(json.loads((data / "dataset.json").read_text())["treatments"])
    except (OSError, ValueError, KeyError, TypeError) as exc:
        raise DataError(f"{data / 'dataset.json'}: cannot read the treatments ({exc})") from None


def _evaluation_data(data: Path, truth: Path | None, n_treatments: int) -> tuple[Any, Any]:
    """RCT table to evaluate on and optional truth arrays ((N, K), (N, K)) from a file or dir."""
    from training.data import load_dataset, load_table
    from training.evaluate import read_predictions

    if data.is_dir():
        dataset = load_dataset(data)
        table = dataset.test
        if dataset.truth is not None and truth is None:
            truth = next(p for p in data.glob("truth.*") if p.suffix in (".parquet", ".csv"))
    else:
        table = load_table(data, "rct", n_treatments=n_treatments)
    truth_arrays = None if truth is None else read_predictions(truth, n_treatments)
    return table, truth_arrays


# --- training: train, export (issue 4) -----------------------------------------------------


# --- service: serve, models register/list/activate, demo (issue 5) --------------------------


def main() -> None:
    app()


if __name__ == "__main__":
    main()
