"""HiGHS as the reference optimum of the multiple-choice knapsack the solver answers."""

from __future__ import annotations

import highspy
import numpy as np


def knapsack_model(
    revenue: np.ndarray, cost: np.ndarray, budget: float, integer: bool = False
) -> highspy.HighsLp:
    """The knapsack as HiGHS sees it: one-hot rows per customer plus one budget row.

    LP relaxation by default; integer=True gives the exact MIP. The solver's property tests
    and `benchmarks/solver.py` both compare `allocate` against it.
    """
    n, k = revenue.shape
    lp = highspy.HighsLp()
    lp.num_col_, lp.num_row_ = n * k, n + 1
    lp.sense_ = highspy.ObjSense.kMaximize
    lp.col_cost_ = revenue.ravel()
    lp.col_lower_, lp.col_upper_ = np.zeros(n * k), np.ones(n * k)
    lp.row_lower_ = np.r_[np.ones(n), -highspy.kHighsInf]
    lp.row_upper_ = np.r_[np.ones(n), budget]
    lp.a_matrix_.format_ = highspy.MatrixFormat.kColwise
    lp.a_matrix_.start_ = np.arange(0, 2 * n * k + 1, 2, dtype=np.int32)
    lp.a_matrix_.index_ = np.column_stack([np.repeat(np.arange(n), k), np.full(n * k, n)]).ravel()
    lp.a_matrix_.value_ = np.column_stack([np.ones(n * k), cost.ravel()]).ravel()
    if integer:
        lp.integrality_ = [highspy.HighsVarType.kInteger] * (n * k)
    return lp
