"""`dfcl evaluate --model DIR` scores an exported model exactly like its predictions file."""

from __future__ import annotations

import json
from pathlib import Path

import pandas as pd
import pytest
from typer.testing import CliRunner

from app.cli import app
from app.inference import OnnxModel
from training.data import load_dataset

SMALL = {"epochs": 2, "prediction_epochs": 2, "steps_per_epoch": 8, "batch_size": 128,
         "hidden": [16, 8]}  # fmt: skip


def test_evaluate_model_matches_its_predictions_file(tiny_dir: Path, tmp_path: Path) -> None:
    runner = CliRunner()
    (tmp_path / "cfg.json").write_text(json.dumps(SMALL))
    out = tmp_path / "model"
    args = ["train", "--method", "tsm-pooled", "--rct", str(tiny_dir / "rct.parquet"),
            "--obs", str(tiny_dir / "obs.parquet"), "--out", str(out),
            "--config", str(tmp_path / "cfg.json"), "--quiet"]  # fmt: skip
    trained = runner.invoke(app, args)
    assert trained.exit_code == 0, trained.output

    by_model = runner.invoke(
        app, ["evaluate", str(tiny_dir), "--model", str(out), "--budgets", "4"]
    )
    assert by_model.exit_code == 0, by_model.output
    assert "true_revenue" in by_model.output  # the dataset dir's truth table is used

    # The same numbers through the predictions-file path.
    test = load_dataset(tiny_dir).test
    revenue, cost = OnnxModel.load(out).predict_columns(test.features)
    k = revenue.shape[1]
    frame = pd.DataFrame({**{f"revenue_{j}": revenue[:, j] for j in range(k)},
                          **{f"cost_{j}": cost[:, j] for j in range(k)}})  # fmt: skip
    frame.to_parquet(tmp_path / "pred.parquet")
    by_file = runner.invoke(
        app,
        [
            "evaluate",
            str(tiny_dir),
            "--predictions",
            str(tmp_path / "pred.parquet"),
            "--budgets",
            "4",
        ],
    )
    assert by_file.exit_code == 0, by_file.output
    assert by_model.output == by_file.output


@pytest.mark.parametrize(
    "args",
    [[], ["--model", "MODEL", "--predictions", "P.csv"], ["--model", "missing-dir"]],
)
def test_evaluate_refuses_bad_model_arguments(
    tiny_dir: Path, tmp_path: Path, args: list[str]
) -> None:
    args = [a.replace("MODEL", str(tmp_path)) for a in args]
    result = CliRunner().invoke(app, ["evaluate", str(tiny_dir), *args])
    assert result.exit_code != 0
    assert "error:" in result.output and "Traceback" not in result.output
