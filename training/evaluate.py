"""Evaluate predicted revenue/cost tables on randomized data: budget curve, area, AUCC.

Whatever produces the predictions (a file today, an exported model via onnxruntime later), the
numbers come from one function, `evaluate_predictions`, so every method is scored alike.
"""

from __future__ import annotations

import json
from dataclasses import dataclass
from pathlib import Path

import numpy as np
import numpy.typing as npt
import pandas as pd

from app.core import metrics
from training.data import load_dataset, load_table
from training.data.tables import DataError, Table, read_frame

FloatArray = npt.NDArray[np.float64]


@dataclass(frozen=True)
class Evaluation:
    """Budget curve of one set of predictions, plus AUCC (K = 2) and ground truth when known."""

    curve: metrics.BudgetCurve
    aucc: float | None  # binary treatment only
    true_revenue: FloatArray | None  # (B,) true per-capita revenue of the policy at each budget
    true_cost: FloatArray | None  # (B,)

    def frame(self) -> pd.DataFrame:
        """One row per budget, in the units of the data (per capita)."""
        c = self.curve
        out = pd.DataFrame(
            {
                "budget": c.budget,
                "eom_revenue": c.revenue,
                "revenue_se": c.revenue_se,
                "eom_cost": c.cost,
                "cost_se": c.cost_se,
                "lam": c.lam,
            }
        )
        if self.true_revenue is not None and self.true_cost is not None:
            out["true_revenue"] = self.true_revenue
            out["true_cost"] = self.true_cost
        return out

    def summary(self) -> dict[str, float]:
        """Headline numbers (what model.json's `validation` and reports carry)."""
        out = {
            "eom_area": self.curve.area,
            "eom_mean_revenue": self.curve.mean_revenue,
            "eom_mid_revenue": float(self.curve.revenue[(len(self.curve.budget) - 1) // 2]),
            "low_revenue": self.curve.low.revenue,
            "high_revenue": self.curve.high.revenue,
        }
        if self.aucc is not None:
            out["aucc"] = self.aucc
        if self.true_revenue is not None:
            out["true_mean_revenue"] = float(np.mean(self.true_revenue))
        return out


def read_predictions(
    path: str | Path, n_treatments: int | None = None
) -> tuple[FloatArray, FloatArray]:
    """Read `revenue_0..revenue_{K-1}`, `cost_0..cost_{K-1}` columns: two (N, K) arrays.

    n_treatments=None takes K from the consecutive revenue_j columns present.
    """
    path = Path(path)
    frame = read_frame(path)
    if n_treatments is None:
        n_treatments = 0
        while f"revenue_{n_treatments}" in frame.columns:
            n_treatments += 1
        n_treatments = max(n_treatments, 2)
    names = [f"revenue_{j}" for j in range(n_treatments)] + [
        f"cost_{j}" for j in range(n_treatments)
    ]
    missing = [n for n in names if n not in frame.columns]
    if missing:
        raise DataError(f"{path}: missing column {missing[0]!r} (needs {names})")
    values = frame[names].apply(pd.to_numeric, errors="coerce").to_numpy(np.float64)
    bad = ~np.isfinite(values)
    if bad.any():
        row, col = (int(i[0]) for i in np.nonzero(bad))
        raise DataError(
            f"{path}: column {names[col]!r} has a non-numeric or missing value at row {row}"
        )
    return values[:, :n_treatments], values[:, n_treatments:]


def dataset_arms(data: Path) -> int | None:
    """K from a dataset dir's dataset.json; None for a plain table (taken from the predictions)."""
    if not data.is_dir():
        return None
    try:
        return len(json.loads((data / "dataset.json").read_text())["treatments"])
    except (OSError, ValueError, KeyError, TypeError) as exc:
        raise DataError(f"{data / 'dataset.json'}: cannot read the treatments ({exc})") from None


def evaluation_data(
    data: Path, truth: Path | None, n_treatments: int
) -> tuple[Table, tuple[FloatArray, FloatArray] | None]:
    """The RCT table to evaluate on and, when known, the truth arrays ((N, K), (N, K)).

    data: an RCT table, or a dataset directory (its test table, and its truth table unless
    `truth` names another file).
    """
    if data.is_dir():
        dataset = load_dataset(data)
        table = dataset.test
        if dataset.truth is not None and truth is None:
            truth = next(p for p in data.glob("truth.*") if p.suffix in (".parquet", ".csv"))
    else:
        table = load_table(data, "rct", n_treatments=n_treatments)
    truth_arrays = None if truth is None else read_predictions(truth, n_treatments)
    return table, truth_arrays


def evaluate_predictions(
    table: Table,
    revenue_pred: FloatArray,
    cost_pred: FloatArray,
    *,
    n_budgets: int = 10,
    budgets: FloatArray | None = None,
    truth: tuple[FloatArray, FloatArray] | None = None,
) -> Evaluation:
    """Mode-E budget curve of predictions (N, K) on an RCT table; truth (N, K) x 2 if known."""
    for name, arrays in (("predictions", (revenue_pred,)), ("truth", truth or ())):
        if arrays and len(arrays[0]) != table.n_rows:
            raise ValueError(f"{name} have {len(arrays[0])} rows, {table.path} has {table.n_rows}")
    if table.n_treatments != revenue_pred.shape[1]:
        raise ValueError(
            f"predictions have {revenue_pred.shape[1]} treatments, {table.path} has "
            f"{table.n_treatments}"
        )
    propensity = table.propensity
    if np.isnan(propensity).any():
        raise ValueError(f"{table.path}: evaluation needs known propensities (an RCT table)")
    logged = metrics.Logged.of(table.treatment, table.revenue, table.cost, propensity)
    curve = metrics.budget_curve(revenue_pred, cost_pred, logged, budgets, n_budgets=n_budgets)
    aucc = None
    if table.n_treatments == 2:
        score = metrics.roi_score(revenue_pred, cost_pred)
        aucc = metrics.aucc(table.treatment, table.revenue, table.cost, score)
    true_revenue = true_cost = None
    if truth is not None:
        rows = np.arange(table.n_rows)
        true_revenue = np.array([truth[0][rows, p].mean() for p in curve.policy])
        true_cost = np.array([truth[1][rows, p].mean() for p in curve.policy])
    return Evaluation(curve, aucc, true_revenue, true_cost)


def plot_curve(
    evaluations: dict[str, Evaluation], path: str | Path, title: str = "EOM revenue vs budget"
) -> Path:
    """Save revenue-vs-realized-cost curves (one per label) with the random-targeting line."""
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    fig, ax = plt.subplots(figsize=(7, 4.5))
    for label, ev in evaluations.items():
        c = ev.curve
        ax.errorbar(c.cost, c.revenue, yerr=1.96 * c.revenue_se, marker="o", capsize=2,
                    label=f"{label} (area {c.area:.3f})")  # fmt: skip
    ref = next(iter(evaluations.values())).curve
    ax.plot([ref.low.cost, ref.high.cost], [ref.low.revenue, ref.high.revenue], "k--",
            label="random targeting")  # fmt: skip
    ax.set_xlabel("per-capita cost (EOM, realized)")
    ax.set_ylabel("per-capita revenue (EOM)")
    ax.set_title(title)
    ax.legend()
    fig.tight_layout()
    path = Path(path)
    path.parent.mkdir(parents=True, exist_ok=True)
    fig.savefig(path, dpi=120)
    plt.close(fig)
    return path
