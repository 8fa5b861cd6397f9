"""`dfcl simulate`, `dfcl data hillstrom`, `dfcl evaluate`: data sets and offline evaluation."""

from __future__ import annotations

import json
from pathlib import Path
from typing import Annotated

import typer

from app.cli._common import fail


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
    regime: Annotated[
        str,
        typer.Option(
            "--regime",
            help="'default', or 'deal-seekers': a hidden trait drives both the discount "
            "response and the OBS targeting (confounding that reorders customers).",
        ),
    ] = "default",
) -> None:
    """Write a simulated discount campaign with known ground truth (see training/data/simulator)."""
    from training.data.simulator import simulate as run_simulation

    try:
        sim = run_simulation(
            n_obs=n_obs, n_rct=n_rct, n_test=n_test, n_treatments=treatments, bias=bias,
            seed=seed, regime=regime,
        )  # fmt: skip
        sim.write(out)
    except (ValueError, OSError) as exc:
        fail(str(exc))
    typer.echo(f"wrote {out}: rct {n_rct}, obs {n_obs}, test {n_test} rows, K={treatments}")
    rev, cost = sim.truth_revenue.mean(axis=0), sim.truth_cost.mean(axis=0)
    for name, r, c in zip(sim.treatments, rev, cost, strict=True):
        typer.echo(f"  everyone on {name:>16}: true revenue {r:8.4f}  cost {c:7.4f} per capita")


def hillstrom(
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
    model: Annotated[
        Path | None,
        typer.Option("--model", help="Exported model dir (model.onnx + model.json)."),
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
    from app.errors import InvalidModel
    from app.inference import OnnxModel
    from training.data import DataError
    from training.evaluate import (
        dataset_arms,
        evaluate_predictions,
        evaluation_data,
        plot_curve,
        read_predictions,
    )

    if (predictions is None) == (model is None):
        fail("give either --model DIR or --predictions FILE (revenue_j, cost_j per row of DATA)")
    try:
        if model is not None:
            # The served scoring path: the model's own feature spec and onnxruntime, checked.
            onnx_model = OnnxModel.load(model)
            table, truth_arrays = evaluation_data(data, truth, onnx_model.n_treatments)
            revenue_pred, cost_pred = onnx_model.predict_columns(table.features)
            label = model.name
        else:
            assert predictions is not None
            revenue_pred, cost_pred = read_predictions(predictions, dataset_arms(data))
            table, truth_arrays = evaluation_data(data, truth, revenue_pred.shape[1])
            label = predictions.name
        result = evaluate_predictions(
            table, revenue_pred, cost_pred, n_budgets=budgets, truth=truth_arrays
        )
        if plot is not None:
            plot_curve({label: result}, plot)
    except (DataError, InvalidModel, ValueError, OSError, KeyError) as exc:
        fail(str(exc))
    typer.echo(result.frame().to_string(index=False, float_format=lambda v: f"{v:.4f}"))
    for key, value in result.summary().items():
        typer.echo(f"{key}: {value:.4f}")
    if plot is not None:
        typer.echo(f"plot: {plot}")


def register(app: typer.Typer) -> None:
    app.command()(simulate)
    app.command()(evaluate)
    data_app = typer.Typer(
        help="Turn real data sets into the training data contract.", no_args_is_help=True
    )
    data_app.command("hillstrom")(hillstrom)
    app.add_typer(data_app, name="data")
