"""Online pacing (app/core/pacing.py): calibration, the decision rule, the hard stop, the step."""

from __future__ import annotations

import numpy as np
import pytest

from app.core import pacing
from app.core.solver import allocate


def test_calibration_starts_at_one_and_learns_the_ratio_with_shrinkage() -> None:
    arms = pacing.ArmSpend.empty(2)
    assert pacing.calibrate(arms, 200.0).kappa.tolist() == [1.0, 1.0]
    t = np.ones(1_000, dtype=np.int64)
    predicted = np.full(1_000, 2.0)
    arms = arms.add_decisions(t, predicted)
    assert pacing.calibrate(arms, 200.0).kappa.tolist() == [1.0, 1.0]  # no outcome yet
    arms = arms.add_outcomes(t[:600], predicted[:600], 1.3 * predicted[:600])
    cal = pacing.calibrate(arms, 200.0)
    m = 200.0 * 2.0  # prior worth 200 average decisions of arm 1
    assert cal.kappa[1] == pytest.approx((1.3 * 1_200 + m) / (1_200 + m))
    assert cal.kappa[0] == 1.0
    resid = 1.3 * predicted[:600] - cal.kappa[1] * predicted[:600]
    assert cal.se[1] == pytest.approx(np.sqrt(np.sum(resid**2)) / (1_200 + m))
    # committed: realized where known, calibrated expectation for the 400 pending decisions
    assert pacing.committed(arms, cal.kappa) == pytest.approx(1.3 * 1_200 + cal.kappa[1] * 800)


def test_decide_takes_the_dual_argmax_and_stops_when_the_budget_cannot_pay() -> None:
    revenue = np.array([[0.0, 5.0, 6.0]] * 4)
    cost = np.array([[0.0, 1.0, 3.0]] * 4)
    out = pacing.decide(revenue, cost, lam=0.4, kappa=np.ones(3), remaining=100.0)
    assert out.treatment.tolist() == [2, 2, 2, 2] and not out.stopped.any()
    out = pacing.decide(revenue, cost, lam=1.0, kappa=np.ones(3), remaining=100.0)
    assert out.treatment.tolist() == [1, 1, 1, 1]  # 5 - 1 > 6 - 3
    # calibration makes arm 1 dearer: 5 - 1 * 4 < 6 - 3
    out = pacing.decide(revenue, cost, 1.0, np.array([1.0, 4.0, 1.0]), 100.0)
    assert out.treatment.tolist() == [2, 2, 2, 2]
    out = pacing.decide(revenue, cost, lam=0.4, kappa=np.ones(3), remaining=7.0)
    assert out.treatment.tolist() == [2, 2, 0, 0]  # the third no longer fits: stop from there
    assert out.stopped.tolist() == [False, False, True, True]
    assert out.cost.sum() <= 7.0
    explored = np.array([False, True, False, False])
    arm = np.array([0, 1, 0, 0])
    out = pacing.decide(revenue, cost, 0.4, np.ones(3), 100.0, explored, arm)
    assert out.treatment.tolist() == [2, 1, 2, 2] and out.greedy.tolist() == [2, 2, 2, 2]


def test_the_multiplier_rises_on_overspend_falls_on_underspend_and_waits_out_warmup() -> None:
    cfg = pacing.PacingConfig(step=2.0, warmup=100)
    args = {"n_batch": 10, "remaining_before": 500.0, "expected_remaining": 500.0,
            "expected_total": 1_000.0, "cfg": cfg}  # fmt: skip  # pace: 1.0 per customer
    assert pacing.next_multiplier(1.0, batch_spend=30.0, n_seen=50, **args) == 1.0  # warm-up
    up = pacing.next_multiplier(1.0, batch_spend=20.0, n_seen=500, **args)
    down = pacing.next_multiplier(1.0, batch_spend=5.0, n_seen=500, **args)
    same = pacing.next_multiplier(1.0, batch_spend=10.0, n_seen=500, **args)
    assert down < same == 1.0 < up
    assert up == pytest.approx(np.exp(2.0 / np.sqrt(1_000) * 10 * 1.0))
    capped = pacing.next_multiplier(1.0, batch_spend=1e9, n_seen=500, **args)
    assert capped == pytest.approx(np.exp(2.0 / np.sqrt(1_000) * 10 * cfg.max_gap))


def test_closed_loop_spends_the_budget_and_nearly_matches_hindsight() -> None:
    """Stationary arrivals with correct predictions: spend within 2 % of the budget, never
    over, and revenue within 2 % of the offline solve at the same spend."""
    rng = np.random.default_rng(0)
    n, k = 20_000, 4
    value = rng.gamma(2.0, 1.0, n)[:, None]
    revenue = value * np.array([1.0, 1.4, 1.7, 1.9]) * rng.uniform(0.8, 1.2, (n, k))
    cost = np.array([0.0, 0.3, 0.7, 1.2]) * rng.uniform(0.5, 1.5, (n, k)) * value
    budget = 0.4 * n
    lam = allocate(revenue[:2_000], cost[:2_000], 0.4 * 2_000).lam * 1.5  # a poor plan
    cfg = pacing.PacingConfig()
    arms = pacing.ArmSpend.empty(k)
    chosen = np.zeros(n, dtype=np.int64)
    for lo in range(0, n, 50):  # loop over batches; each batch is vectorised
        hi = lo + 50
        remaining = budget - float(arms.predicted.sum())
        d = pacing.decide(revenue[lo:hi], cost[lo:hi], lam, np.ones(k), remaining)
        arms = arms.add_decisions(d.treatment, d.cost)
        chosen[lo:hi] = d.treatment
        lam = pacing.next_multiplier(lam, float(d.cost.sum()), 50, remaining, n - lo, n, lo, cfg)
    rows = np.arange(n)
    spent = cost[rows, chosen].sum()
    assert 0.98 * budget <= spent <= budget
    hindsight = allocate(revenue, cost, spent).revenue
    assert revenue[rows, chosen].sum() >= 0.98 * hindsight
