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
