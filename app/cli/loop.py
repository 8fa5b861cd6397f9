"""`dfcl loop-demo` and the hidden `dfcl retrain-job`: the closed loop of serving and retraining."""

from __future__ import annotations

import uuid
from pathlib import Path
from typing import Annotated

import typer

from app.cli._common import fail


def retrain_job(
    job_id: Annotated[str, typer.Argument(help="Job id (POST /v1/retrain made it).")],
    workdir: Annotated[Path, typer.Argument(help="The job's directory (settings.json, log).")],
) -> None:
    """Run one retraining job in this process (the service starts it by itself)."""
    from app.jobs.retrain import run

    run(uuid.UUID(job_id), workdir)


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
    from app.jobs.loop_demo import LoopConfig, run

    cfg = LoopConfig(
        days=days, customers_per_day=customers, exploration_rate=exploration_rate, budget=budget,
        train={"prediction_epochs": epochs, "epochs": epochs, "teacher_epochs": epochs},
        seed=seed,
    )  # fmt: skip
    try:
        run(workdir, cfg, typer.echo)
    except (ValueError, RuntimeError, OSError) as exc:
        fail(str(exc))


def register(app: typer.Typer) -> None:
    app.command("retrain-job", hidden=True)(retrain_job)
    app.command("loop-demo")(loop_demo)
