"""Files in, exported model out: what `dfcl train`, the demos and retraining jobs all run.

`train_and_export` loads and validates the tables (with dataset.json beside the RCT file when
there is one), trains, and writes config.json, history.json, checkpoint.pt, model.onnx and
model.json into one directory. It is the one place training meets the file system.
"""

from __future__ import annotations

import json
from collections.abc import Mapping
from pathlib import Path
from typing import Any

from app.core.model_card import ModelCard
from training.config import TrainConfig
from training.data import load_table
from training.export import export, export_checkpoint, save_checkpoint


def _dataset_info(rct_path: Path) -> dict[str, Any]:
    """dataset.json beside the RCT file (treatment names, feature list), if there is one."""
    info_path = rct_path.parent / "dataset.json"
    if not info_path.is_file():
        return {}
    try:
        info = json.loads(info_path.read_text())
    except json.JSONDecodeError as exc:
        raise ValueError(f"{info_path}: not valid JSON ({exc})") from None
    return info if isinstance(info, dict) else {}


def build_config(
    method: str,
    config_path: Path | None,
    seed: int | None = None,
    overrides: Mapping[str, Any] | None = None,
) -> TrainConfig:
    """Defaults < the config file < overrides (JSON field values) < method and seed."""
    base = TrainConfig.load(config_path).to_json() if config_path is not None else {}
    changes: dict[str, Any] = {**base, **(overrides or {}), "method": method}
    if seed is not None:
        changes["seed"] = seed
    return TrainConfig.from_json(changes)


def train_and_export(
    method: str, rct_path: Path, obs_path: Path | None, out_dir: Path,
    config_path: Path | None = None, seed: int | None = None, progress: bool = True,
    overrides: Mapping[str, Any] | None = None,
) -> ModelCard:  # fmt: skip
    """Load tables, train, save config/checkpoint/history, export ONNX; returns the card."""
    cfg = build_config(method, config_path, seed, overrides)
    info = _dataset_info(Path(rct_path))
    k = len(info["treatments"]) if "treatments" in info else None
    features = [str(f) for f in info["features"]] if "features" in info else None
    rct = load_table(rct_path, "rct", n_treatments=k, feature_columns=features)
    obs = None
    if obs_path is not None:
        obs = load_table(obs_path, "obs", n_treatments=rct.n_treatments, feature_columns=features)
    from training.train import train  # torch import only when training really starts

    result = train(cfg, rct, obs, progress=progress)
    names = info.get("treatments") or [f"treatment_{j}" for j in range(rct.n_treatments)]
    fields = {**result.card, "treatments": [str(n) for n in names],
              "training_seconds": round(result.seconds, 2)}  # fmt: skip
    out_dir = Path(out_dir)
    out_dir.mkdir(parents=True, exist_ok=True)
    result.config.save(out_dir / "config.json")  # as trained (outcome_loss resolved)
    (out_dir / "history.json").write_text(json.dumps(result.history, indent=1) + "\n")
    save_checkpoint(out_dir, result.net, fields, result.val_features)
    return export(result.net, out_dir, fields, result.val_features)


def reexport(checkpoint_dir: Path) -> ModelCard:
    """Re-export model.onnx + model.json from a checkpoint directory."""
    return export_checkpoint(Path(checkpoint_dir))
