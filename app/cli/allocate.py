"""`dfcl allocate`: one budget across a customer file, in the REST job's code path."""

from __future__ import annotations

import shutil
import uuid
from pathlib import Path
from typing import Annotated, Literal

import typer

from app.cli._common import fail


def allocate(
    source: Annotated[
        Path, typer.Argument(help="Customer table: a .parquet/.csv file or a directory of them.")
    ],
    budget: Annotated[float, typer.Option(help="Total budget (per customer with --per-capita).")],
    per_capita: Annotated[bool, typer.Option(help="--budget is per customer.")] = False,
    model: Annotated[
        str | None, typer.Option("--model", help="Model version (default: the active one).")
    ] = None,
    out: Annotated[
        Path | None,
        typer.Option(
            help="Decisions Parquet to write (default ./decisions.parquet unless --store)."
        ),
    ] = None,
    store: Annotated[
        bool, typer.Option(help="Store the allocation and its decisions in the database.")
    ] = True,
    engine: Annotated[
        str, typer.Option(help="local (this host) or ray (the [scale] extra; DFCL_RAY_ADDRESS).")
    ] = "local",
    campaign: Annotated[str | None, typer.Option(help="Campaign label stored with it.")] = None,
    exploration_rate: Annotated[
        float, typer.Option(min=0.0, max=1.0, help="Share of customers given a random arm.")
    ] = 0.0,
    seed: Annotated[int | None, typer.Option(min=0, help="Exploration seed.")] = None,
    id_column: Annotated[str, typer.Option(help="Column holding customer ids.")] = "customer_id",
) -> None:
    """Allocate a budget across every customer of a file, exactly as one global solve."""
    from sqlalchemy.exc import SQLAlchemyError

    from app.config import Settings
    from app.core.solver import InfeasibleBudget
    from app.db import SchemaNotReady, make_engine, prepare_schema
    from app.errors import DomainError
    from app.jobs.allocate import BatchRequest, JobCancelled, Progress, run_batch

    if engine not in ("local", "ray"):
        fail(f"--engine must be local or ray, got {engine!r}")
    settings = Settings()
    db = make_engine(settings)
    try:
        prepare_schema(db, settings)
    except (SchemaNotReady, SQLAlchemyError) as exc:
        fail(f"database: {exc}".splitlines()[0])
    finally:
        db.dispose()
    assert settings.jobs_dir is not None  # set by Settings' validator
    workdir = settings.jobs_dir / f"cli-{uuid.uuid4().hex[:12]}"
    chosen: Literal["local", "ray"] = "ray" if engine == "ray" else "local"
    request = BatchRequest(
        source, budget, per_capita, model, campaign, exploration_rate, seed, id_column, chosen
    )
    with typer.progressbar(length=1000, label="reading", file=None) as bar:
        done = 0

        def progress(p: Progress) -> None:
            nonlocal done
            bar.label = f"{p.phase:<8} {p.rows_scored:>12,} rows"
            step = int(p.fraction * 1000) - done
            if step > 0:
                bar.update(step)
                done += step

        try:
            result = run_batch(
                request, settings=settings, workdir=workdir, store=store, on_progress=progress
            )
        except (DomainError, InfeasibleBudget, JobCancelled, SQLAlchemyError) as exc:
            shutil.rmtree(workdir, ignore_errors=True)
            fail(str(exc).splitlines()[0] or type(exc).__name__)
        except BaseException:
            shutil.rmtree(workdir, ignore_errors=True)
            raise
    target = out if out is not None else (None if store else Path("decisions.parquet"))
    if target is not None:
        shutil.move(result.decisions_path, target)
    shutil.rmtree(workdir, ignore_errors=True)
    typer.echo(
        f"{result.n_customers:,} customers ({result.n_explored:,} explored), model "
        f"{result.model_version}: predicted revenue {result.revenue:,.2f}, cost "
        f"{result.cost:,.2f} of budget {result.budget_total:,.2f}, multiplier {result.lam:.6g}"
    )
    if result.allocation_id is not None:
        typer.echo(f"allocation {result.allocation_id} stored")
    if target is not None:
        typer.echo(f"decisions written to {target}")
    times = ", ".join(f"{k} {v:.2f}s" for k, v in result.timings_s.items())
    typer.echo(f"time: {times}")


def register(app: typer.Typer) -> None:
    app.command("allocate")(allocate)
