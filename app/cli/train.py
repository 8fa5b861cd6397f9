"""`dfcl train` and `dfcl export`: offline training and ONNX export (need the `train` extra)."""

from __future__ import annotations

from pathlib import Path
from typing import Annotated

import typer

from app.cli._common import fail


def train(
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
    from training.export import ExportError
    from training.pipeline import train_and_export

    try:
        card = train_and_export(method, rct, obs, out, config, seed, progress=not quiet)
    except (ValueError, ExportError) as exc:
        fail(str(exc))
    val = card["validation"]
    typer.echo(
        f"model {card['version']} ({card['method']}) written to {out}: validation EOM area "
        f"{val['eom_area']:.4f}, trained in {card['training_seconds']:.1f} s\n"
        f"selected {val['selected_phase']} (default {val['default_phase']}; another candidate "
        f"replaces the default only if its paired validation gain exceeds "
        f"{card['config']['select_z']:g} SE)"
    )


def export(
    checkpoint_dir: Annotated[Path, typer.Argument(help="model directory holding checkpoint.pt")],
) -> None:
    """Re-export model.onnx + model.json from a training checkpoint (parity-checked)."""
    from training.export import ExportError
    from training.pipeline import reexport

    try:
        card = reexport(checkpoint_dir)
    except (ValueError, ExportError) as exc:
        fail(str(exc))
    typer.echo(f"model {card['version']} ({card['method']}) exported to {checkpoint_dir}")


def register(app: typer.Typer) -> None:
    app.command("train")(train)
    app.command("export")(export)
