"""Hillstrom e-mail experiment (64,000 customers, 3 randomized arms) -> the data contract.

Treatment 0 = no e-mail, 1 = mens e-mail, 2 = womens e-mail (randomized 1/3 each in the original
experiment); revenue = `spend` (dollars in the following two weeks); cost = `visit` (0/1) -- as
DFCL does with Criteo, the visit is the constrained resource.

Protocol (seeded): the rows are shuffled and cut into three disjoint parts -- RCT-test
(`test_fraction`, default 30%), RCT-train (`rct_fraction`, default 10%) and an OBS pool (the
rest). RCT parts keep the original random assignment (propensity 1/3). The OBS sample keeps each
pool row with a probability q(x, t) that depends on its features and its arm, imitating a past
campaign that e-mailed valuable recent customers and matched the e-mail to the merchandise they
bought before:
    s = (log1p(history) - 5.0) / 0.9 - (recency - 6.0) / 3.5          "looks valuable"
    q(x, 0) = sigmoid(-1.5 b s)
    q(x, 1) = sigmoid(b (1.5 s + mens - womens))
    q(x, 2) = sigmoid(b (1.5 s + womens - mens))                     b = `bias` (0 = unbiased)
So in OBS the e-mailed customers are the ones who would spend more anyway, and the true OBS
logging propensity P(t | x, kept) = q(x, t) / sum_j q(x, j) is written to `propensity`.
"""

from __future__ import annotations

import json
from dataclasses import asdict, dataclass
from pathlib import Path
from typing import Any

import numpy as np
import numpy.typing as npt
import pandas as pd

from training.data.tables import DataError, read_frame, write_frame

TREATMENTS = ["no_email", "mens_email", "womens_email"]
SEGMENTS = {"No E-Mail": 0, "Mens E-Mail": 1, "Womens E-Mail": 2}
NUMERIC = ["recency", "history", "mens", "womens", "newbie"]
CATEGORICAL = ["zip_code", "channel"]  # history_segment is dropped: a binned copy of history
RAW_COLUMNS = [*NUMERIC, *CATEGORICAL, "segment", "visit", "spend"]


@dataclass(frozen=True)
class HillstromParams:
    """Split and selection settings (saved in dataset.json)."""

    rct_fraction: float = 0.10
    test_fraction: float = 0.30
    bias: float = 1.0
    seed: int = 0

    def __post_init__(self) -> None:
        if not (0 < self.rct_fraction < 1 and 0 < self.test_fraction < 1):
            raise ValueError("rct_fraction and test_fraction must lie in (0, 1)")
        if self.rct_fraction + self.test_fraction >= 1:
            raise ValueError("rct_fraction + test_fraction must leave rows for the OBS pool")
        if not np.isfinite(self.bias) or self.bias < 0:
            raise ValueError(f"bias must be a finite number >= 0, got {self.bias}")


def read_hillstrom(path: str | Path) -> pd.DataFrame:
    """Read the original CSV and map it to the contract (features, treatment, revenue, cost)."""
    path = Path(path)
    raw = read_frame(path)
    missing = [c for c in RAW_COLUMNS if c not in raw.columns]
    if missing:
        raise DataError(f"{path}: missing column {missing[0]!r} (has {list(raw.columns)})")
    segment = raw["segment"].astype(str)
    unknown = ~segment.isin(list(SEGMENTS))
    if unknown.any():
        row = int(np.argmax(unknown.to_numpy()))
        raise DataError(
            f"{path}: column 'segment' has {segment.iloc[row]!r} at row {row}; "
            f"expected one of {list(SEGMENTS)}"
        )
    frame = raw[NUMERIC + CATEGORICAL].copy()
    for name in CATEGORICAL:
        frame[name] = frame[name].astype(str)
    frame["treatment"] = segment.map(SEGMENTS).astype(np.int64)
    frame["revenue"] = raw["spend"]
    frame["cost"] = raw["visit"]
    return frame


def selection_probability(frame: pd.DataFrame, bias: float) -> npt.NDArray[np.float64]:
    """Probability q(x, t) of keeping a pool row under each arm, (N, 3) (see module doc)."""
    s = (np.log1p(frame["history"].to_numpy(np.float64)) - 5.0) / 0.9 - (
        frame["recency"].to_numpy(np.float64) - 6.0
    ) / 3.5
    mens = frame["mens"].to_numpy(np.float64)
    womens = frame["womens"].to_numpy(np.float64)
    logits = np.column_stack([-1.5 * s, 1.5 * s + mens - womens, 1.5 * s + womens - mens])
    return 1.0 / (1.0 + np.exp(-bias * logits))


def split(frame: pd.DataFrame, params: HillstromParams) -> dict[str, pd.DataFrame]:
    """Disjoint RCT-train, RCT-test and selected OBS tables (each with `propensity`)."""
    rng = np.random.default_rng(params.seed)
    order = rng.permutation(len(frame))
    n_test = int(round(params.test_fraction * len(frame)))
    n_rct = int(round(params.rct_fraction * len(frame)))
    parts = {
        "test": frame.iloc[order[:n_test]],
        "rct": frame.iloc[order[n_test : n_test + n_rct]],
        "pool": frame.iloc[order[n_test + n_rct :]],
    }
    out = {}
    for name in ("rct", "test"):
        out[name] = parts[name].assign(propensity=1.0 / 3.0).reset_index(drop=True)
    pool = parts["pool"]
    q = selection_probability(pool, params.bias)  # (N_pool, 3)
    arm = pool["treatment"].to_numpy()
    rows = np.arange(len(pool))
    keep = rng.uniform(size=len(pool)) < q[rows, arm]
    propensity = q[rows, arm] / q.sum(axis=1)
    out["obs"] = pool.assign(propensity=propensity)[keep].reset_index(drop=True)
    return out


def build(path: str | Path, out: str | Path, params: HillstromParams | None = None) -> Path:
    """Write rct/obs/test Parquet tables and dataset.json for the Hillstrom data."""
    params = params or HillstromParams()
    frame = read_hillstrom(path)
    tables = split(frame, params)
    directory = Path(out)
    directory.mkdir(parents=True, exist_ok=True)
    for name, table in tables.items():
        write_frame(table, directory / f"{name}.parquet")
    info: dict[str, Any] = {
        "treatments": TREATMENTS,
        "features": NUMERIC + CATEGORICAL,
        "categorical": CATEGORICAL,
        "kind": "hillstrom",
        "params": {
            **asdict(params),
            "source": Path(path).name,
            "rows": {name: len(table) for name, table in tables.items()},
            "revenue": "spend",
            "cost": "visit",
        },
    }
    (directory / "dataset.json").write_text(json.dumps(info, indent=2) + "\n")
    return directory
