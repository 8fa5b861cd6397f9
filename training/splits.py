"""Tensors of a data split and the EOM-based quantities training needs (via app.core.metrics)."""

from __future__ import annotations

from dataclasses import dataclass

import numpy as np
import torch
from torch import Tensor

from app.core import metrics


@dataclass(frozen=True)
class Split:
    """Row-aligned tensors of one data split: x (N, F) float32, the rest (N,)."""

    x: Tensor
    treatment: Tensor
    revenue: Tensor
    cost: Tensor
    propensity: Tensor

    def __len__(self) -> int:
        return len(self.treatment)

    def tensors(self) -> tuple[Tensor, ...]:
        return (self.x, self.treatment, self.revenue, self.cost, self.propensity)

    def subset(self, rows: Tensor) -> Split:
        """The given rows (R,) of every tensor."""
        return Split(*(t[rows] for t in self.tensors()))

    def concat(self, other: Split) -> Split:
        """Rows of self followed by rows of other."""
        return Split(
            *(torch.cat([a, b]) for a, b in zip(self.tensors(), other.tensors(), strict=True))
        )

    def logged(self) -> metrics.Logged:
        """The logged tensors as a validated numpy record (int64/float64) for EOM metrics."""
        return metrics.Logged.of(
            self.treatment.numpy(),
            self.revenue.numpy().astype(np.float64),
            self.cost.numpy().astype(np.float64),
            self.propensity.numpy().astype(np.float64),
        )


def budget_range(split: Split, n_treatments: int) -> tuple[float, float]:
    """EOM per-capita spend of the cheapest and dearest constant policies (methods §8.7)."""
    costs = [v.cost for v in metrics.constant_policies(split.logged(), n_treatments)]
    return float(min(costs)), float(max(costs))


def budget_grid(split: Split, n_treatments: int, n_budgets: int) -> np.ndarray:
    """Validation grid (B,) of per-capita budgets over the split's spend range."""
    return metrics.budget_grid(*budget_range(split, n_treatments), n_budgets)


def lam_at_budget(
    rev_hat: np.ndarray,
    cost_hat: np.ndarray,
    split: Split,
    budget: float,
    max_iter: int = 20,
    hi_start: float | None = None,
) -> float:
    """Mode-E lambda*: the policy's EOM-realized per-capita cost on `split` meets `budget`.

    Training needs lambda* only to ~1e-6 of its bracket (2^-20; the EOM cost itself is far
    noisier), which cuts the bisection work of every upper-level step by two thirds.
    hi_start: a lam believed feasible (e.g. the previous step's, or a smaller budget's) that
    replaces the wide max(r/c) upper bracket when it does fit the budget.
    """
    return metrics.lam_for_realized_budget(
        rev_hat, cost_hat, split.logged(), budget, max_iter=max_iter, hi_start=hi_start
    )


def validation_curve(
    rev_hat: np.ndarray, cost_hat: np.ndarray, split: Split, budgets: np.ndarray
) -> metrics.BudgetCurve:
    """Mode-E EOM budget curve of predictions (N, K) on a randomized split, grid (B,).

    Model selection uses its mean_revenue (revenue units, equal realized spend): the
    normalised `area` divides by R_high - R_low, which is tiny and noisy on small splits.
    """
    return metrics.budget_curve(rev_hat, cost_hat, split.logged(), budgets)
