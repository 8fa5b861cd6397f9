"""Table loading: the contract holds, and each bad input names file, column and an example row."""

from __future__ import annotations

import json
from pathlib import Path

import numpy as np
import pandas as pd
import pytest

from app.core.features import FeatureSpec
from training.data import DataError, encode_table, load_dataset, load_table


def _frame() -> pd.DataFrame:
    return pd.DataFrame(
        {
            "recency": [1.0, 4.0, 7.0, 2.0, 9.0, 3.0],
            "channel": ["web", "phone", "web", "web", "phone", "multichannel"],
            "treatment": [0, 1, 2, 0, 1, 1],
            "revenue": [0.0, 12.5, 0.0, 3.0, 0.0, 40.0],
            "cost": [0.0, 1.0, 0.0, 0.0, 1.0, 1.0],
        }
    )


def _write(frame: pd.DataFrame, path: Path) -> Path:
    if path.suffix == ".csv":
        frame.to_csv(path, index=False)
    else:
        frame.to_parquet(path, index=False)
    return path


@pytest.mark.parametrize("suffix", [".csv", ".parquet"])
def test_rct_table_loads_with_empirical_propensity(tmp_path: Path, suffix: str) -> None:
    table = load_table(_write(_frame(), tmp_path / f"rct{suffix}"), "rct")
    assert table.n_treatments == 3 and table.n_rows == 6
    assert list(table.features.columns) == ["recency", "channel"]
    assert table.treatment.dtype == np.int64
    np.testing.assert_allclose(table.propensity, [2 / 6, 3 / 6, 1 / 6, 2 / 6, 3 / 6, 3 / 6])
    x = encode_table(table, FeatureSpec.fit(table.features))
    assert x.shape == (6, 5)  # recency + 3 channels + <other>


def test_obs_without_propensity_is_unknown_and_given_propensity_is_kept(tmp_path: Path) -> None:
    obs = load_table(_write(_frame(), tmp_path / "obs.csv"), "obs", n_treatments=4)
    assert obs.n_treatments == 4 and np.isnan(obs.propensity).all()
    frame = _frame().assign(propensity=[0.5, 0.2, 1.0, 0.5, 0.2, np.nan])
    obs = load_table(_write(frame, tmp_path / "obs2.csv"), "obs")
    np.testing.assert_allclose(obs.propensity[:5], [0.5, 0.2, 1.0, 0.5, 0.2])
    assert np.isnan(obs.propensity[5])


def _assert_error(path: Path, column: str, row: int, **kwargs: object) -> None:
    with pytest.raises(DataError) as info:
        load_table(path, **kwargs)  # type: ignore[arg-type]
    message = str(info.value)
    assert str(path) in message, message
    assert f"'{column}'" in message, message
    assert f"row {row}" in message, message


def test_missing_column(tmp_path: Path) -> None:
    path = _write(_frame().drop(columns="cost"), tmp_path / "t.csv")
    _assert_error(path, "cost", 0)


def test_missing_requested_feature_column(tmp_path: Path) -> None:
    path = _write(_frame(), tmp_path / "t.csv")
    _assert_error(path, "age", 0, feature_columns=["recency", "age"])


def test_non_numeric_revenue(tmp_path: Path) -> None:
    frame = _frame().astype({"revenue": object})
    frame.loc[3, "revenue"] = "12,50"
    _assert_error(_write(frame, tmp_path / "t.csv"), "revenue", 3)


def test_non_numeric_feature_is_categorical_but_non_finite_numeric_feature_fails(
    tmp_path: Path,
) -> None:
    frame = _frame()
    frame.loc[4, "recency"] = np.inf
    _assert_error(_write(frame, tmp_path / "t.parquet"), "recency", 4)


@pytest.mark.parametrize(("value", "n_treatments"), [(3, 3), (-1, None), (1.5, None)])
def test_treatment_out_of_range_or_not_integer(
    tmp_path: Path, value: float, n_treatments: int | None
) -> None:
    frame = _frame().astype({"treatment": float})
    frame.loc[2, "treatment"] = value
    _assert_error(_write(frame, tmp_path / "t.csv"), "treatment", 2, n_treatments=n_treatments)


@pytest.mark.parametrize("column", ["revenue", "cost"])
def test_nan_outcome(tmp_path: Path, column: str) -> None:
    frame = _frame()
    frame.loc[5, column] = np.nan
    _assert_error(_write(frame, tmp_path / "t.csv"), column, 5)


@pytest.mark.parametrize("value", [0.0, -0.1, 1.5])
def test_propensity_outside_unit_interval(tmp_path: Path, value: float) -> None:
    frame = _frame().assign(propensity=0.5)
    frame.loc[1, "propensity"] = value
    _assert_error(_write(frame, tmp_path / "t.csv"), "propensity", 1, kind="obs")


def test_nan_propensity_is_an_error_for_rct(tmp_path: Path) -> None:
    frame = _frame().assign(propensity=0.5)
    frame.loc[4, "propensity"] = np.nan
    _assert_error(_write(frame, tmp_path / "t.csv"), "propensity", 4, kind="rct")


def test_unreadable_and_missing_files(tmp_path: Path) -> None:
    with pytest.raises(DataError, match="file not found"):
        load_table(tmp_path / "nope.csv")
    bad = tmp_path / "t.json"
    bad.write_text("{}")
    with pytest.raises(DataError, match="unsupported file type"):
        load_table(bad)
    broken = tmp_path / "t.parquet"
    broken.write_bytes(b"not parquet")
    with pytest.raises(DataError, match="cannot read table"):
        load_table(broken)


def test_load_dataset_directory(tmp_path: Path) -> None:
    for name in ("rct", "obs", "test"):
        _write(_frame(), tmp_path / f"{name}.parquet")
    info = {"treatments": ["a", "b", "c"], "features": ["recency", "channel"],
            "categorical": ["channel"], "kind": "test", "params": {}}  # fmt: skip
    (tmp_path / "dataset.json").write_text(json.dumps(info))
    data = load_dataset(tmp_path)
    assert data.treatments == ["a", "b", "c"] and data.truth is None
    assert data.obs.kind == "obs" and np.isnan(data.obs.propensity).all()
    _write(pd.DataFrame({"revenue_0": [1.0]}), tmp_path / "truth.parquet")
    with pytest.raises(DataError, match="1 rows but the test table has 6"):
        load_dataset(tmp_path)


# --- Hillstrom adapter ------------------------------------------------------------------------


def _hillstrom_like(n: int, seed: int = 0) -> pd.DataFrame:
    """Rows in the original Hillstrom CSV layout (synthetic, so tests need no shared data)."""
    rng = np.random.default_rng(seed)
    segment = rng.choice(["No E-Mail", "Mens E-Mail", "Womens E-Mail"], n)
    history = np.round(rng.lognormal(5.0, 0.9, n), 2)
    visit = rng.binomial(1, np.where(segment == "No E-Mail", 0.1, 0.17))
    return pd.DataFrame(
        {
            "recency": rng.integers(1, 13, n),
            "history_segment": np.where(history > 350, "3) $200 - $350", "1) $0 - $100"),
            "history": history,
            "mens": rng.integers(0, 2, n),
            "womens": rng.integers(0, 2, n),
            "zip_code": rng.choice(["Urban", "Surburban", "Rural"], n),
            "newbie": rng.integers(0, 2, n),
            "channel": rng.choice(["Phone", "Web", "Multichannel"], n),
            "segment": segment,
            "visit": visit,
            "conversion": visit * rng.binomial(1, 0.1, n),
            "spend": np.round(visit * rng.binomial(1, 0.1, n) * rng.uniform(30, 500, n), 2),
        }
    )


def test_hillstrom_protocol(tmp_path: Path) -> None:
    from training.data.hillstrom import HillstromParams, build, read_hillstrom, split

    csv = tmp_path / "hillstrom.csv"
    _hillstrom_like(6000).to_csv(csv, index=False)
    data = load_dataset(build(csv, tmp_path / "out"))
    assert data.info["kind"] == "hillstrom" and data.treatments[0] == "no_email"
    assert (data.test.n_rows, data.rct.n_rows) == (1800, 600)
    assert data.info["params"]["rows"]["obs"] == data.obs.n_rows < 3600
    np.testing.assert_allclose(data.rct.propensity, 1 / 3)
    assert set(data.info["categorical"]) == {"zip_code", "channel"}
    assert "history_segment" not in data.test.features.columns

    frame = read_hillstrom(csv).assign(row_id=np.arange(6000))
    parts = split(frame, HillstromParams(seed=5))
    ids = [set(parts[k]["row_id"]) for k in ("rct", "test", "obs")]
    assert not (ids[0] & ids[1] or ids[0] & ids[2] or ids[1] & ids[2])  # disjoint parts
    obs = parts["obs"]
    emailed = obs["treatment"] > 0
    assert obs.loc[emailed, "history"].median() > 1.2 * obs.loc[~emailed, "history"].median()
    rct = pd.concat([parts["rct"], parts["test"]])
    rct_emailed = rct["treatment"] > 0
    ratio = rct.loc[rct_emailed, "history"].median() / rct.loc[~rct_emailed, "history"].median()
    assert 0.9 < ratio < 1.1  # randomized parts stay balanced
    unbiased = split(frame, HillstromParams(bias=0.0))["obs"]
    np.testing.assert_allclose(unbiased["propensity"], 1 / 3)


def test_hillstrom_bad_input_names_the_culprit(tmp_path: Path) -> None:
    from training.data.hillstrom import read_hillstrom

    frame = _hillstrom_like(50)
    frame.loc[7, "segment"] = "SMS"
    frame.to_csv(tmp_path / "bad.csv", index=False)
    with pytest.raises(DataError, match="'segment' has 'SMS' at row 7"):
        read_hillstrom(tmp_path / "bad.csv")
    frame.drop(columns="spend").to_csv(tmp_path / "short.csv", index=False)
    with pytest.raises(DataError, match="missing column 'spend'"):
        read_hillstrom(tmp_path / "short.csv")


# --- CLI: simulate, data hillstrom, evaluate ----------------------------------------------------


def test_cli_simulate_hillstrom_evaluate(tmp_path: Path) -> None:
    from typer.testing import CliRunner

    from app.cli import app

    runner = CliRunner()
    sim_dir = tmp_path / "sim"
    args = ["simulate", "--n-obs", "2000", "--n-rct", "500", "--n-test", "3000", "--treatments",
            "3", "--bias", "0.5", "--seed", "1", "--out", str(sim_dir)]  # fmt: skip
    result = runner.invoke(app, args)
    assert result.exit_code == 0, result.output
    assert json.loads((sim_dir / "dataset.json").read_text())["params"]["n_treatments"] == 3

    png = tmp_path / "curve.png"
    result = runner.invoke(
        app,
        [
            "evaluate",
            str(sim_dir),
            "--predictions",
            str(sim_dir / "truth.parquet"),
            "--budgets",
            "4",
            "--plot",
            str(png),
        ],  # fmt: skip
    )
    assert result.exit_code == 0, result.output
    assert "eom_area" in result.output and "true_revenue" in result.output
    assert png.stat().st_size > 1000

    csv = tmp_path / "hillstrom.csv"
    _hillstrom_like(900).to_csv(csv, index=False)
    result = runner.invoke(app, ["data", "hillstrom", str(csv), "--out", str(tmp_path / "h")])
    assert result.exit_code == 0, result.output
    assert "obs" in result.output


def test_cli_errors_are_one_line_without_traceback(tmp_path: Path) -> None:
    from typer.testing import CliRunner

    from app.cli import app

    frame = _frame()
    frame.loc[2, "treatment"] = 7
    bad = _write(frame, tmp_path / "rct.csv")
    preds = _write(
        pd.DataFrame({f"{o}_{j}": [1.0] for o in ("revenue", "cost") for j in range(3)}),
        tmp_path / "p.csv",
    )
    runner = CliRunner()
    messages: list[str] = []
    for args in (
        ["evaluate", str(bad), "--predictions", str(preds)],
        ["evaluate", str(_write(_frame(), tmp_path / "ok.csv")), "--predictions", str(preds)],
        ["data", "hillstrom", str(tmp_path / "missing.csv"), "--out", str(tmp_path / "o")],
        ["simulate", "--out", str(tmp_path / "s"), "--n-obs", "10", "--n-rct", "10",
         "--n-test", "10", "--bias", "nan"],
    ):  # fmt: skip
        result = runner.invoke(app, args)
        messages.append(result.output)
        assert result.exit_code == 2, (args, result.output)
        assert "error" in result.output.lower() and "Traceback" not in result.output
    assert "'treatment' must lie in 0..2" in messages[0] and "row 2" in messages[0]
    assert "predictions have 1 rows" in messages[1]
