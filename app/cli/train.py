"""`dfcl train` and `dfcl export`: offline training and ONNX export (need the `train` extra).

Every TrainConfig field is also a `dfcl train` option, generated from the dataclass so a new
field cannot be forgotten: `--upper-loss pifd`, `--hidden 64,32` (tuples as comma lists),
`--keep-warm-start/--no-keep-warm-start`. Precedence: defaults < --config FILE < options.
"""

from __future__ import annotations

import dataclasses
import inspect
import json
import types
from collections.abc import Callable
from pathlib import Path
from typing import Annotated, Any, Literal, Union, get_args, get_origin, get_type_hints

import typer

from app.cli._common import fail
from training.config import TrainConfig, field_help

_HAND_WRITTEN = ("method",)  # TrainConfig fields with a hand-written option below
_NONE = "none"  # `--dual-lambdas none` restores the default None of a tuple-or-None field


def _option_type(hint: Any) -> Any:
    """The type typer parses a field's option as: Literals stay (typer makes them choices),
    tuples and dicts become strings that `_field_value` parses."""
    args = [a for a in get_args(hint) if a is not type(None)]
    if get_origin(hint) in (Union, types.UnionType) and len(args) == 1:
        hint = args[0]  # X | None: the option carries X
    if get_origin(hint) is Literal or hint in (bool, int, float, str):
        return hint
    if get_origin(hint) in (tuple, dict) or hint in (tuple, dict):
        return str
    raise TypeError(f"TrainConfig field type {hint!r} has no command-line form")


def _field_value(raw: Any, hint: Any) -> Any:
    """Command-line value -> JSON value of the field (comma lists, JSON dicts, 'none')."""
    optional = type(None) in get_args(hint)
    inner = next((a for a in get_args(hint) if a is not type(None)), hint) if optional else hint
    if get_origin(inner) is tuple:
        if optional and str(raw).strip().lower() == _NONE:
            return None
        element = get_args(inner)[0]
        try:
            return [element(v) for v in str(raw).split(",") if v.strip()]
        except ValueError:
            raise ValueError(f"{raw!r} is not a comma list of {element.__name__}") from None
    if get_origin(inner) is dict or inner is dict:
        try:
            value = json.loads(str(raw))
        except json.JSONDecodeError as exc:
            raise ValueError(f"{raw!r} is not a JSON object ({exc})") from None
        if not isinstance(value, dict):
            raise ValueError(f"{raw!r} is not a JSON object")
        return value
    return raw


def _shown_default(value: Any) -> Any:
    """A field default as the help shows it (tuples as comma lists)."""
    if isinstance(value, tuple):
        return ",".join(str(v) for v in value)
    return _NONE if value is None else value


def _config_parameters() -> list[inspect.Parameter]:
    """One keyword-only typer option per TrainConfig field (except the hand-written ones)."""
    hints = get_type_hints(TrainConfig)
    docs = field_help()
    defaults = TrainConfig()
    params = []
    for f in dataclasses.fields(TrainConfig):
        if f.name in _HAND_WRITTEN:
            continue
        kind = _option_type(hints[f.name])
        flag = "--" + f.name.replace("_", "-")
        decls = f"{flag}/--no-{flag[2:]}" if kind is bool else flag
        default = getattr(defaults, f.name)
        option = typer.Option(
            decls,
            help=docs.get(f.name) or f"TrainConfig.{f.name}",
            show_default=str(_shown_default(default)),
            rich_help_panel="TrainConfig fields (override --config)",
        )
        # only options typed on the command line are used (`_given`), so the parameter's own
        # default matters only where typer needs one of the right type
        param_default = default if isinstance(default, bool | int | float | str) else None
        params.append(
            inspect.Parameter(
                f.name,
                inspect.Parameter.KEYWORD_ONLY,
                default=param_default,
                annotation=Annotated[kind | None, option],
            )
        )
    return params


def _given(ctx: typer.Context, options: dict[str, Any]) -> dict[str, Any]:
    """The config options typed on the command line, as JSON field values."""
    hints = get_type_hints(TrainConfig)
    typed = {
        name
        for name in options
        if getattr(ctx.get_parameter_source(name), "name", None) == "COMMANDLINE"
    }
    return {name: _field_value(options[name], hints[name]) for name in sorted(typed)}


def _train(
    ctx: typer.Context,
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
    quiet: Annotated[bool, typer.Option("--quiet", help="no progress bars")] = False,
    **options: Any,
) -> None:
    """Train a model on RCT (+ OBS) data and export model.onnx + model.json to OUT."""
    from training.export import ExportError
    from training.pipeline import train_and_export

    try:
        changes = _given(ctx, options)  # the file's config with these on top
        card = train_and_export(method, rct, obs, out, config, progress=not quiet,
                                overrides=changes)  # fmt: skip
    except (ValueError, ExportError) as exc:
        fail(str(exc))
    val = card.validation
    typer.echo(
        f"model {card.version} ({card.method}) written to {out}: validation EOM area "
        f"{val['eom_area']:.4f}, trained in {val['training_seconds']:.1f} s\n"
        f"selected {val['selected_phase']} (default {val['default_phase']}; another candidate "
        f"replaces the default only if its paired validation gain exceeds "
        f"{card.config['select_z']:g} SE)"
    )


def _with_config_options(func: Callable[..., None]) -> Callable[..., None]:
    """func with the TrainConfig options added to the signature typer reads."""
    fixed = inspect.signature(func, eval_str=True).parameters.values()
    explicit = [p for p in fixed if p.kind is not inspect.Parameter.VAR_KEYWORD]
    func.__signature__ = inspect.Signature([*explicit, *_config_parameters()])  # type: ignore[attr-defined]
    return func


train = _with_config_options(_train)


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
    typer.echo(f"model {card.version} ({card.method}) exported to {checkpoint_dir}")


def register(app: typer.Typer) -> None:
    app.command("train")(train)
    app.command("export")(export)
