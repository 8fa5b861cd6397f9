"""Load and validate the data tables (CSV or Parquet) that training and evaluation read.

A table holds feature columns, `treatment` (int 0..K-1), `revenue`, `cost` and an optional
`propensity` (probability that the logging policy chose the logged treatment). Every defect is
reported as a `DataError` naming the file, the column and an example row, so a CLI user never
sees a stack trace.
"""

from __future__ import annotations

import json
from dataclasses import dataclass
from pathlib import Path
from typing import Any, Literal

import numpy as np
import numpy.typing as npt
import pandas as pd

from app.core.features import FeatureError, FeatureSpec

OUTCOME_COLUMNS = ("treatment", "revenue", "cost")
RESERVED_COLUMNS = (*OUTCOME_COLUMNS, "propensity")
TABLE_SUFFIXES = (".csv", ".parquet", ".pq")


class DataError(ValueError):
    """A data file breaks the contract; the message names file, column and an example row."""


@dataclass(frozen=True)
class Table:
    """One validated source (RCT or OBS); arrays are row-aligned with `features`."""

    features: pd.DataFrame  # raw feature columns (N rows)
    treatment: npt.NDArray[np.int64]  # (N,) in 0..K-1
    revenue: npt.NDArray[np.float64]  # (N,)
    cost: npt.NDArray[np.float64]  # (N,)
    propensity: npt.NDArray[np.float64]  # (N,) in (0, 1]; NaN = unknown (OBS only)
    path: Path
    n_treatments: int
    kind: str = "rct"

    @property
    def n_rows(self) -> int:
        return len(self.treatment)


def read_frame(path: str | Path) -> pd.DataFrame:
    """Read a CSV or Parquet file into a DataFrame, turning I/O problems into DataError."""
    path = Path(path)
    if not path.is_file():
        raise DataError(f"{path}: file not found")
    suffix = path.suffix.lower()
    if suffix not in TABLE_SUFFIXES:
        raise DataError(f"{path}: unsupported file type {suffix!r} (use .csv or .parquet)")
    try:
        frame = pd.read_csv(path) if suffix == ".csv" else pd.read_parquet(path)
    except Exception as exc:  # parser errors come in many types; report them uniformly
        raise DataError(f"{path}: cannot read table ({type(exc).__name__}: {exc})") from None
    if frame.empty:
        raise DataError(f"{path}: table has no rows")
    return frame


def write_frame(frame: pd.DataFrame, path: str | Path) -> Path:
    """Write a table as Parquet or CSV depending on the suffix."""
    path = Path(path)
    path.parent.mkdir(parents=True, exist_ok=True)
    if path.suffix.lower() == ".csv":
        frame.to_csv(path, index=False)
    else:
        frame.to_parquet(path, index=False)
    return path


def _example(frame: pd.DataFrame, row: int) -> str:
    """One row rendered compactly for an error message."""
    record = frame.iloc[[row]].to_dict("records")[0]  # keeps each column's dtype
    return f"row {row}: " + json.dumps({str(k): _plain(v) for k, v in record.items()})


def _plain(value: Any) -> Any:
    if isinstance(value, np.generic):
        value = value.item()
    if isinstance(value, float) and not np.isfinite(value):
        return str(value)
    return value if isinstance(value, int | float | str | bool) or value is None else str(value)


def _numeric_column(
    frame: pd.DataFrame, name: str, path: Path, *, allow_nan: bool = False
) -> npt.NDArray[np.float64]:
    """Column as float64 (N,); non-numeric or (unless allowed) missing/inf values are errors."""
    column = frame[name]
    if column.dtype == bool:
        column = column.astype(np.int64)
    values: npt.NDArray[np.float64] = pd.to_numeric(column, errors="coerce").to_numpy(
        dtype=np.float64, na_value=np.nan
    )
    non_numeric = np.isnan(values) & column.notna().to_numpy()
    if non_numeric.any():
        row = int(np.argmax(non_numeric))
        raise DataError(
            f"{path}: column {name!r} has a non-numeric value {column.iloc[row]!r} "
            f"({_example(frame, row)})"
        )
    bad = np.isinf(values) if allow_nan else ~np.isfinite(values)
    if bad.any():
        row = int(np.argmax(bad))
        raise DataError(
            f"{path}: column {name!r} has a missing or infinite value ({_example(frame, row)})"
        )
    return values


def load_table(
    path: str | Path,
    kind: Literal["rct", "obs"] = "rct",
    n_treatments: int | None = None,
    feature_columns: list[str] | None = None,
) -> Table:
    """Read and validate one table; RCT propensity defaults to the empirical arm frequency."""
    path = Path(path)
    if kind not in ("rct", "obs"):
        raise ValueError(f"kind must be 'rct' or 'obs', got {kind!r}")
    frame = read_frame(path)
    frame.columns = [str(c) for c in frame.columns]
    required = list(OUTCOME_COLUMNS) + list(feature_columns or [])
    missing = [c for c in required if c not in frame.columns]
    if missing:
        raise DataError(
            f"{path}: missing column {missing[0]!r} (has {list(frame.columns)}; "
            f"{_example(frame, 0)})"
        )

    raw_treatment = _numeric_column(frame, "treatment", path)
    not_int = raw_treatment != np.round(raw_treatment)
    if not_int.any():
        row = int(np.argmax(not_int))
        raise DataError(f"{path}: column 'treatment' must hold integers ({_example(frame, row)})")
    treatment = raw_treatment.astype(np.int64)
    k = int(treatment.max()) + 1 if n_treatments is None else int(n_treatments)
    out_of_range = (treatment < 0) | (treatment >= k)
    if k < 2 or out_of_range.any():
        row = int(np.argmax(out_of_range)) if out_of_range.any() else 0
        raise DataError(
            f"{path}: column 'treatment' must lie in 0..{max(k, 2) - 1} with at least two "
            f"treatments ({_example(frame, row)})"
        )
    revenue = _numeric_column(frame, "revenue", path)
    cost = _numeric_column(frame, "cost", path)

    if "propensity" in frame.columns:
        propensity = _numeric_column(frame, "propensity", path, allow_nan=(kind == "obs"))
        outside = ~np.isnan(propensity) & ((propensity <= 0.0) | (propensity > 1.0))
        if outside.any():
            row = int(np.argmax(outside))
            raise DataError(
                f"{path}: column 'propensity' must lie in (0, 1] ({_example(frame, row)})"
            )
    elif kind == "rct":
        freq = np.bincount(treatment, minlength=k) / len(treatment)
        propensity = freq[treatment]
    else:
        propensity = np.full(len(treatment), np.nan)

    if feature_columns is None:
        feature_columns = [c for c in frame.columns if c not in RESERVED_COLUMNS]
    features = frame[feature_columns].reset_index(drop=True)
    for name in features.columns:  # numeric features must be finite; categoricals may be missing
        if pd.api.types.is_numeric_dtype(features[name]):
            _numeric_column(frame, name, path)
    return Table(
        features=features,
        treatment=treatment,
        revenue=revenue,
        cost=cost,
        propensity=propensity,
        path=path,
        n_treatments=k,
        kind=kind,
    )


def encode_table(table: Table, spec: FeatureSpec) -> npt.NDArray[np.float32]:
    """Encode a table's features (N, F), reporting encoding problems against its file."""
    try:
        return spec.encode(table.features)
    except FeatureError as exc:
        raise DataError(f"{table.path}: {exc}") from None


@dataclass(frozen=True)
class Dataset:
    """A dataset directory as written by `dfcl simulate` / `dfcl data hillstrom`."""

    info: dict[str, Any]  # dataset.json
    rct: Table
    obs: Table
    test: Table
    truth: pd.DataFrame | None  # revenue_j / cost_j per test row (simulator only)

    @property
    def treatments(self) -> list[str]:
        return list(self.info["treatments"])


def load_dataset(directory: str | Path) -> Dataset:
    """Load dataset.json and the rct/obs/test tables (+ truth when present) of a directory."""
    directory = Path(directory)
    info_path = directory / "dataset.json"
    if not info_path.is_file():
        raise DataError(f"{info_path}: file not found")
    try:
        info = json.loads(info_path.read_text())
        k = len(info["treatments"])
        features = [str(f) for f in info["features"]]
    except (ValueError, KeyError, TypeError) as exc:
        raise DataError(f"{info_path}: malformed dataset description ({exc!r})") from None

    def find(stem: str) -> Path:
        for suffix in TABLE_SUFFIXES:
            if (directory / f"{stem}{suffix}").is_file():
                return directory / f"{stem}{suffix}"
        raise DataError(f"{directory}: no {stem}.parquet or {stem}.csv")

    rct = load_table(find("rct"), "rct", n_treatments=k, feature_columns=features)
    obs = load_table(find("obs"), "obs", n_treatments=k, feature_columns=features)
    test = load_table(find("test"), "rct", n_treatments=k, feature_columns=features)
    truth = None
    if any((directory / f"truth{s}").is_file() for s in TABLE_SUFFIXES):
        truth_path = find("truth")
        truth = read_frame(truth_path)
        if len(truth) != test.n_rows:
            raise DataError(f"{truth_path}: {len(truth)} rows but the test table has {test.n_rows}")
    return Dataset(info=info, rct=rct, obs=obs, test=test, truth=truth)
