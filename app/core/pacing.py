"""Online pacing: one multiplier lam shared by every decision of a campaign (methods §9).

A campaign spends one budget B on customers who arrive over time. Each customer gets
argmax_j r_ij - lam * kappa_j * c_ij at the campaign's current multiplier, where kappa_j is the
arm's realized/predicted cost calibration. After each batch, lam moves by one step of dual
mirror descent (the multiplicative form of the dual sub-gradient step of Balseiro, Lu and
Mirrokni): up when the batch spent more per customer than the pace, down when less.

- Pace. The target per-customer spend is what is left divided by the customers still
  expected: rho = (B - committed) / expected_remaining. Re-targeting after every batch lets a
  budget change or a drift in spend be absorbed over the rest of the campaign.
- Step. log lam += step / sqrt(N) * n * (spend / (n * rho) - 1), with N the expected
  customers of the whole campaign (the 1/sqrt(T) rate of the theory) and the relative gap
  capped at `max_gap` per customer, so one very expensive batch cannot jump lam.
- Warm-up. For the first `warmup` customers lam stays at its starting value (the plan), while
  early spend is mostly noise.
- Hard stop. Every customer of a batch is owed at least its cheapest arm, so those costs are
  reserved first; the extra cost of the chosen arms is then granted in arrival order, and from
  the first customer whose extra no longer fits on, everyone gets the cheapest arm (the caller
  is told who). When the cheapest arm costs something, the cheapest arms of the customers still
  expected are reserved too, so early customers cannot spend what later ones are owed.
- Calibration. Realized cost over predicted cost per arm, on the decisions whose outcomes are
  in, shrunk towards 1 by a prior worth `prior_decisions` average decisions of that arm.
  Committed spend is the realized cost of decisions with outcomes plus the calibrated expected
  cost of the others.

Pure numpy: the service keeps the state in the database, the benchmark in memory.
"""

from __future__ import annotations

from dataclasses import dataclass

import numpy as np

from app.core._types import FloatArray, IntArray


@dataclass(frozen=True)
class PacingConfig:
    """Step size, warm-up and bounds of the multiplier (see the module docstring)."""

    step: float = 2.0
    warmup: int = 500
    max_gap: float = 4.0
    lam_min: float = 1e-6
    lam_max: float = 1e6
    prior_decisions: float = 200.0


@dataclass(frozen=True)
class ArmSpend:
    """Per-arm cost aggregates of one campaign, each (K,)."""

    n: FloatArray  # decisions on the arm
    predicted: FloatArray  # sum of predicted cost over all its decisions
    n_outcomes: FloatArray  # decisions with a recorded outcome
    outcome_predicted: FloatArray  # sum of predicted cost over those
    realized: FloatArray  # sum of realized cost over those
    realized_sq: FloatArray  # sums for the ratio's standard error
    cross: FloatArray
    predicted_sq: FloatArray

    @classmethod
    def empty(cls, k: int) -> ArmSpend:
        z = np.zeros(k)
        return cls(z, z, z, z, z, z, z, z)

    def add_decisions(self, treatment: IntArray, predicted_cost: FloatArray) -> ArmSpend:
        k = self.n.size
        return ArmSpend(
            self.n + np.bincount(treatment, minlength=k),
            self.predicted + np.bincount(treatment, predicted_cost, minlength=k),
            self.n_outcomes, self.outcome_predicted, self.realized, self.realized_sq,
            self.cross, self.predicted_sq,
        )  # fmt: skip

    def add_outcomes(
        self, treatment: IntArray, predicted_cost: FloatArray, realized_cost: FloatArray
    ) -> ArmSpend:
        k = self.n.size

        def total(w: FloatArray) -> FloatArray:
            return np.bincount(treatment, w, minlength=k).astype(np.float64)

        return ArmSpend(
            self.n, self.predicted,
            self.n_outcomes + np.bincount(treatment, minlength=k),
            self.outcome_predicted + total(predicted_cost),
            self.realized + total(realized_cost),
            self.realized_sq + total(realized_cost**2),
            self.cross + total(realized_cost * predicted_cost),
            self.predicted_sq + total(predicted_cost**2),
        )  # fmt: skip


@dataclass(frozen=True)
class Calibration:
    """Per-arm realized/predicted cost ratio kappa with its standard error, each (K,)."""

    kappa: FloatArray
    se: FloatArray


def calibrate(arms: ArmSpend, prior_decisions: float) -> Calibration:
    """kappa_j = (A_j + m_j) / (P_j + m_j), m_j = prior_decisions x mean predicted cost of j.

    A_j, P_j: realized and predicted cost summed over decisions of arm j with outcomes. The
    standard error is the ratio estimator's, sqrt(sum (a - kappa p)^2) / (P + m).
    """
    mean_pred = np.divide(
        arms.predicted, arms.n, out=np.zeros_like(arms.predicted), where=arms.n > 0
    )
    m = prior_decisions * mean_pred
    denom = arms.outcome_predicted + m
    safe = denom > 0
    kappa = np.where(safe, (arms.realized + m) / np.where(safe, denom, 1.0), 1.0)
    resid = arms.realized_sq - 2 * kappa * arms.cross + kappa**2 * arms.predicted_sq
    se = np.where(safe, np.sqrt(np.maximum(resid, 0.0)) / np.where(safe, denom, 1.0), np.inf)
    return Calibration(kappa, se)


def committed(arms: ArmSpend, kappa: FloatArray) -> float:
    """Realized cost of decisions with outcomes + calibrated expected cost of the rest."""
    pending = arms.predicted - arms.outcome_predicted
    return float(np.sum(arms.realized + kappa * pending))


@dataclass(frozen=True)
class Decided:
    """Treatments of one batch (n,), which hit the hard stop, and their calibrated cost."""

    treatment: IntArray
    stopped: np.ndarray  # (n,) bool: cheapest arm because the budget could not pay
    cost: FloatArray  # (n,) calibrated expected cost of each decision
    greedy: IntArray  # (n,) the argmax at lam (for explored customers' propensity)


def decide(
    revenue: FloatArray,
    cost: FloatArray,
    lam: float,
    kappa: FloatArray,
    remaining: float,
    explored: np.ndarray | None = None,
    arm: IntArray | None = None,
    reserve: float = 0.0,
) -> Decided:
    """argmax r - lam kappa c per customer, explored customers on their drawn arm, hard stop.

    revenue, cost: predicted (n, K); kappa (K,); remaining: budget left before this batch;
    reserve: part of it kept for the cheapest arms of customers still expected after it.
    """
    n = revenue.shape[0]
    rows = np.arange(n)
    calibrated = cost * kappa[None, :]
    score = revenue - lam * calibrated
    # ties -> lower cost, then lower index (the solver's dual_choice rule)
    best = score.max(axis=1, keepdims=True)
    greedy = np.where(score == best, calibrated, np.inf).argmin(axis=1)
    treatment = greedy.copy()
    if explored is not None and arm is not None:
        treatment = np.where(explored, arm, treatment)
    # Every customer of the batch is owed at least its cheapest arm: reserve those first, then
    # grant the extra cost of the chosen arms in arrival order while it fits.
    cheapest = calibrated.argmin(axis=1)
    base = calibrated[rows, cheapest]
    extra = calibrated[rows, treatment] - base
    over = np.cumsum(extra) > remaining - reserve - float(base.sum())
    stopped = np.zeros(n, dtype=bool)
    if over.any():
        stopped[int(np.argmax(over)) :] = True
        stopped &= treatment != cheapest
        treatment = np.where(stopped, cheapest, treatment)
    return Decided(treatment, stopped, calibrated[rows, treatment], greedy)


def next_multiplier(
    lam: float,
    batch_spend: float,
    n_batch: int,
    remaining_before: float,
    expected_remaining: float,
    expected_total: float,
    n_seen: int,
    cfg: PacingConfig,
) -> float:
    """One dual mirror-descent step after a batch (see the module docstring).

    remaining_before: budget left before the batch; expected_remaining: customers still
    expected before it (this batch included); n_seen: customers decided before it.
    """
    if n_batch <= 0 or n_seen + n_batch <= cfg.warmup:
        return lam
    rho = remaining_before / max(expected_remaining, float(n_batch))
    if rho <= 0:
        return cfg.lam_max
    gap = batch_spend / (n_batch * rho) - 1.0
    gap = float(np.clip(gap, -1.0, cfg.max_gap))
    step = cfg.step / np.sqrt(max(expected_total, 1.0)) * n_batch * gap
    return float(np.clip(max(lam, cfg.lam_min) * np.exp(step), cfg.lam_min, cfg.lam_max))
