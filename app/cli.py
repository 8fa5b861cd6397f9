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
data_app = typer.Typer(
    help="Turn real data sets into the training data contract.", no_args_is_help=True
)
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
    from training.data import DataError
    from training.evaluate import evaluate_predictions, plot_curve, read_predictions

    if (predictions is None) == (model is None):
        fail("give either --model DIR or --predictions FILE (revenue_j, cost_j per row of DATA)")
        return
    try:
        k = _dataset_arms(data)
        if model is not None:
            from training.cli_support import model_predictions

            k_model = len(json.loads((model / "model.json").read_text())["treatments"])
            table, truth_arrays = _evaluation_data(data, truth, k_model)
            revenue_pred, cost_pred = model_predictions(model, table.features)
        else:
            assert predictions is not None
            revenue_pred, cost_pred = read_predictions(predictions, k)
            table, truth_arrays = _evaluation_data(data, truth, revenue_pred.shape[1])
        result = evaluate_predictions(
            table, revenue_pred, cost_pred, n_budgets=budgets, truth=truth_arrays
        )
        if plot is not None:
            label = (model if model is not None else predictions).name  # type: ignore[union-attr]
            plot_curve({label: result}, plot)
    except (DataError, ValueError, OSError, KeyError) as exc:
        fail(str(exc))
        return
    typer.echo(result.frame().to_string(index=False, float_format=lambda v: f"{v:.4f}"))
    for key, value in result.summary().items():
        typer.echo(f"{key}: {value:.4f}")
    if plot is not None:
        typer.echo(f"plot: {plot}")


def _dataset_arms(data: Path) -> int | None:
    """K from a dataset dir's dataset.json; None for a plain table (taken from the predictions)."""
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


@app.command("train")
def train_command(
    method: Annotated[
        str,
        typer.Option(
            "--method", help="tsm-rct|tsm-obs|tsm-pooled|dfcl-pl|dfcl-mer|dfcl-ifd|bi-dfcl"
        ),
    ],
    rct: Annotated[Path, typer.Option("--rct", help="randomized table (CSV or Parquet)")],
    out: Annotated[Path, typer.Option("--out", help="model directory to write")],
    obs: Annotated[Path | None, typer.Option("--obs", help="observational table")] = None,
    config: Annotated[Path | None, typer.Option("--config", help="TrainConfig JSON file")] = None,
    seed: Annotated[int | None, typer.Option("--seed", help="overrides the config's seed")] = None,
    quiet: Annotated[bool, typer.Option("--quiet", help="no progress bars")] = False,
) -> None:
    """Train a model on RCT (+ OBS) data and export model.onnx + model.json to OUT."""
    from training.cli_support import run_train
    from training.export import ExportError

    try:
        desc = run_train(method, rct, obs, out, config, seed, progress=not quiet)
    except (ValueError, ExportError) as exc:
        fail(str(exc))
        return
    val = desc["validation"]
    typer.echo(
        f"model {desc['version']} ({desc['method']}) written to {out}: validation EOM area "
        f"{val['eom_area']:.4f}, trained in {desc['training_seconds']:.1f} s\n"
        f"selected {val['selected_phase']} (default {val['default_phase']}; another candidate "
        f"replaces the default only if its paired validation gain exceeds "
        f"{desc['config']['select_z']:g} SE)"
    )


@app.command("export")
def export_command(
    checkpoint_dir: Annotated[Path, typer.Argument(help="model directory holding checkpoint.pt")],
) -> None:
    """Re-export model.onnx + model.json from a training checkpoint (parity-checked)."""
    from training.cli_support import run_export
    from training.export import ExportError

    try:
        desc = run_export(checkpoint_dir)
    except (ValueError, ExportError) as exc:
        fail(str(exc))
        return
    typer.echo(f"model {desc['version']} ({desc['method']}) exported to {checkpoint_dir}")


# --- service: serve, models register/list/activate, demo (issue 5) --------------------------

from collections.abc import Iterator as _Iterator  # noqa: E402
from contextlib import contextmanager as _contextmanager  # noqa: E402


@app.command()
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


@_contextmanager
def _registry_transaction() -> _Iterator[tuple[Any, Any]]:
    """(session, registry) on the configured database, migrated; commits at the end."""
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


def _print_version(row: Any) -> None:
    state = "active" if row.is_active else "inactive"
    typer.echo(f"{row.version}\t{row.method}\t{len(row.treatments)} treatments\t{state}")


@models_app.command("register")
def models_register(
    directory: Annotated[Path, typer.Argument(help="Directory with model.onnx + model.json.")],
    activate: Annotated[bool, typer.Option(help="Also make it the active version.")] = False,
) -> None:
    """Check a model directory, copy it to DFCL_MODELS_DIR/<version>/ and record it."""
    from app.services import models

    with _registry_transaction() as (session, registry):
        row = models.register(session, registry, directory)
        if activate:
            row = models.activate(session, registry, row.version)
    _print_version(row)


@models_app.command("list")
def models_list() -> None:
    """Registered versions, newest first."""
    from app.services import models

    with _registry_transaction() as (session, _):
        rows = models.list_versions(session)
        for row in rows:
            _print_version(row)
    if not rows:
        typer.echo("no model versions registered (dfcl models register DIR)")


@models_app.command("activate")
def models_activate(version: Annotated[str, typer.Argument(help="A registered version.")]) -> None:
    """Check and activate a version; running services switch on their next request."""
    from app.services import models

    with _registry_transaction() as (session, registry):
        row = models.activate(session, registry, version)
    _print_version(row)


@app.command()
def demo(
    workdir: Annotated[Path, typer.Option(help="Where data and training runs go.")] = Path("demo"),
    method: Annotated[str, typer.Option(help="Training method (falls back if missing).")] = (
        "bi-dfcl"
    ),
    n_obs: Annotated[int, typer.Option(min=1, help="Observational rows.")] = 50_000,
    n_rct: Annotated[int, typer.Option(min=1, help="Randomized rows.")] = 10_000,
    n_test: Annotated[int, typer.Option(min=1, help="Randomized test rows.")] = 10_000,
    config: Annotated[Path | None, typer.Option(help="TrainConfig JSON overrides.")] = None,
    seed: Annotated[int, typer.Option(help="Seed for data and training.")] = 0,
    serve_after: Annotated[bool, typer.Option("--serve/--no-serve", help="Start the service.")] = (
        True
    ),
) -> None:
    """Simulate data, train (Bi-DFCL), register + activate the model, print curl, serve."""
    from app.config import Settings
    from app.db import SchemaNotReady
    from app.errors import DomainError
    from app.services import demo as demo_service

    overrides: dict[str, Any] = {}
    if config is not None:
        try:
            overrides = json.loads(config.read_text())
        except (OSError, ValueError) as exc:
            fail(f"config {config}: {exc}")
    settings = Settings()
    try:
        result = demo_service.run(
            settings,
            workdir,
            method=method,
            config=overrides,
            sizes=(n_obs, n_rct, n_test),
            seed=seed,
            say=typer.echo,
        )
    except (DomainError, SchemaNotReady, ValueError, RuntimeError, OSError) as exc:
        fail(str(exc))
        return
    typer.echo(f"\nmodel {result.version} ({result.method}) is active. Try it:\n")
    typer.echo(result.curl + "\n")
    if serve_after:
        typer.echo(f"starting the service on {settings.database_url} (Ctrl+C stops it)")
        serve(host=None, port=None, workers=1)


# --- keys: create, list, revoke (issue 7) ---------------------------------------------------

keys_app = typer.Typer(
    help="API keys (stored hashed; scopes allocate, read, admin).", no_args_is_help=True
)
app.add_typer(keys_app, name="keys")


@keys_app.command("create")
def keys_create(
    scope: Annotated[
        list[str], typer.Option("--scope", help="allocate, read or admin (repeat for several).")
    ],
    name: Annotated[str, typer.Option("--name", help="Who or what uses the key.")] = "",
) -> None:
    """Create a key and print it once (only its SHA-256 is stored)."""
    from app.services import keys

    with _registry_transaction() as (session, _):
        row, secret = keys.create(session, scope, name)
    typer.echo(secret)
    typer.echo(
        f"key {row.id} ({row.name or 'unnamed'}), scopes {','.join(row.scopes)}: store it now, "
        "it cannot be shown again",
        err=True,
    )


@keys_app.command("list")
def keys_list() -> None:
    """Keys (id, prefix, name, scopes, created, revoked); secrets are never shown."""
    from app.services import keys

    with _registry_transaction() as (session, _):
        rows = keys.list_keys(session)
        for row in rows:
            revoked = f"revoked {row.revoked_at:%Y-%m-%d %H:%M}" if row.revoked_at else "active"
            typer.echo(
                f"{row.id}\t{row.prefix}...\t{row.name or '-'}\t{','.join(row.scopes)}\t"
                f"{row.created_at:%Y-%m-%d %H:%M}\t{revoked}"
            )
    if not rows:
        typer.echo("no API keys (dfcl keys create --scope ...)")


@keys_app.command("revoke")
def keys_revoke(
    key: Annotated[str, typer.Argument(help="Key id or the prefix `dfcl keys list` shows.")],
) -> None:
    """Revoke a key; every worker refuses it from its next request on."""
    from app.services import keys

    with _registry_transaction() as (session, _):
        row = keys.revoke(session, key.removesuffix("..."))
    typer.echo(f"revoked {row.id} ({row.name or 'unnamed'})")


# --- outcomes, retraining job, closed-loop demo (issue 6) -----------------------------------

outcomes_app = typer.Typer(help="Observed outcomes of allocations.", no_args_is_help=True)
app.add_typer(outcomes_app, name="outcomes")


@outcomes_app.command("import")
def outcomes_import(
    file: Annotated[Path, typer.Argument(help="CSV or Parquet: customer_id, revenue, cost.")],
    allocation: Annotated[str, typer.Option("--allocation", help="The allocation's id.")],
) -> None:
    """Record (upsert) one allocation's outcomes from a file, with the API's checks."""
    import uuid

    from app.services import outcomes

    try:
        allocation_id = uuid.UUID(allocation)
    except ValueError:
        fail(f"--allocation {allocation!r} is not an allocation id (a UUID)")
        return
    try:
        columns = outcomes.read_file(file)
    except ValueError as exc:
        fail(str(exc))
        return
    with _registry_transaction() as (session, _):
        written = outcomes.record(session, allocation_id, *columns)
    typer.echo(
        f"{written['n_written']} outcomes written; allocation {allocation_id} now has "
        f"{written['n_outcomes']}"
    )


@app.command("retrain-job", hidden=True)
def retrain_job(
    job_id: Annotated[str, typer.Argument(help="Job id (POST /v1/retrain made it).")],
    workdir: Annotated[Path, typer.Argument(help="The job's directory (settings.json, log).")],
) -> None:
    """Run one retraining job in this process (the service starts it by itself)."""
    import uuid

    from app.services.retrain_job import run

    run(uuid.UUID(job_id), workdir)


@app.command("loop-demo")
def loop_demo(
    workdir: Annotated[Path, typer.Option(help="Where data, database and models go.")] = Path(
        "loop-demo"
    ),
    days: Annotated[int, typer.Option(min=1, help="Simulated days of allocations.")] = 5,
    customers: Annotated[int, typer.Option(min=10, help="Customers per day.")] = 4_000,
    exploration_rate: Annotated[float, typer.Option(min=0.0, max=1.0)] = 0.2,
    budget: Annotated[float, typer.Option(min=0.0, help="Budget per customer.")] = 1.0,
    epochs: Annotated[
        int, typer.Option(min=1, help="Epochs of every training phase (both models).")
    ] = 10,
    seed: Annotated[int, typer.Option(help="Seed for simulation and training.")] = 0,
) -> None:
    """Closed loop on the simulator: serve, explore, log outcomes, retrain, compare true revenue."""
    from app.services.loop_demo import LoopConfig, run

    cfg = LoopConfig(
        days=days, customers_per_day=customers, exploration_rate=exploration_rate, budget=budget,
        train={"prediction_epochs": epochs, "epochs": epochs, "teacher_epochs": epochs},
        seed=seed,
    )  # fmt: skip
    try:
        run(workdir, cfg, typer.echo)
    except (ValueError, RuntimeError, OSError) as exc:
        fail(str(exc))


def main() -> None:
    app()


if __name__ == "__main__":
    main()
