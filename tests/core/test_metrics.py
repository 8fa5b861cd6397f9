"""EOM, mode-E bisection, budget curve and AUCC on synthetic randomized data with known truth."""

from __future__ import annotations

import numpy as np
import pytest
from hypothesis import given, settings
from hypothesis import strategies as st

from app.core import metrics
from app.core.solver import dual_choice


def _rct(n: int, k: int = 3, seed: int = 0) -> dict[str, np.ndarray]:
    """Potential outcomes with heterogeneous effects and a uniformly randomized arm."""
    rng = np.random.default_rng(seed)
    x = rng.standard_normal(n)
    arm = np.arange(k)
    rev_mean = 5.0 + 2.0 * np.outer(np.tanh(x), arm) / k + arm * 0.5  # (N, K)
    cost_mean = np.outer(1.0 + 0.5 * (x > 0), arm)  # (N, K), arm 0 free
    t = rng.integers(0, k, n)
    rows = np.arange(n)
    revenue = rev_mean[rows, t] + rng.normal(0, 3.0, n)
    cost = cost_mean[rows, t] * rng.uniform(0.5, 1.5, n)
    return {"x": x, "rev_mean": rev_mean, "cost_mean": cost_mean, "treatment": t,
            "revenue": revenue, "cost": cost, "propensity": metrics.arm_propensity(t)}  # fmt: skip


def _logged(d: dict[str, np.ndarray]) -> metrics.Logged:
    return metrics.Logged.of(d["treatment"], d["revenue"], d["cost"], d["propensity"])


def test_eom_by_hand() -> None:
    t = np.array([0, 1, 1, 0])
    r = np.array([1.0, 4.0, 2.0, 3.0])
    c = np.array([0.0, 1.0, 1.0, 0.0])
    p = np.array([0.5, 0.5, 0.5, 0.5])
    v = metrics.eom(metrics.Logged.of(t, r, c, p), np.array([1, 1, 0, 0]))  # rows 1 and 3
    assert v.revenue == pytest.approx((4.0 / 0.5 + 3.0 / 0.5) / 4)
    assert v.cost == pytest.approx((1.0 / 0.5) / 4)
    assert v.revenue_hajek == pytest.approx(3.5) and v.cost_hajek == pytest.approx(0.5)
    assert v.n_matched == 2
    terms = np.array([0.0, 8.0, 0.0, 6.0])
    assert v.revenue_se == pytest.approx(terms.std(ddof=1) / 2)


def test_eom_ci_covers_truth_across_seeds() -> None:
    policy_of = lambda d: np.where(d["x"] > 0, 2, np.where(d["x"] > -1, 1, 0))  # noqa: E731
    z = []
    for seed in range(20):
        d = _rct(4000, seed=seed)
        pol = policy_of(d)
        truth = d["rev_mean"][np.arange(4000), pol].mean()
        v = metrics.eom(_logged(d), pol)
        z.append((v.revenue - truth) / v.revenue_se)
    z = np.abs(np.array(z))
    assert np.mean(z < 1.96) >= 0.8, z
    assert z.max() < 4.0, z


def test_paired_difference_matches_two_eoms_with_smaller_se() -> None:
    d = _rct(5000, seed=3)
    a = np.where(d["x"] > 0, 2, 0)
    b = np.where(d["x"] > 0.5, 1, 0)
    va, vb = metrics.eom(_logged(d), a), metrics.eom(_logged(d), b)
    paired = metrics.paired_gain(a, b, _logged(d))
    assert paired.revenue == pytest.approx(va.revenue - vb.revenue)
    assert paired.cost == pytest.approx(va.cost - vb.cost)
    assert paired.revenue_se < np.hypot(va.revenue_se, vb.revenue_se)
    same = metrics.paired_gain(a, a, _logged(d))
    assert (same.revenue, same.revenue_se) == (0.0, 0.0)


@settings(max_examples=30, deadline=None)
@given(seed=st.integers(0, 10_000), n_budgets=st.integers(1, 5))
def test_paired_gain_is_the_per_budget_paired_difference_and_its_grid_mean(
    seed: int, n_budgets: int
) -> None:
    """(N,): the paired HT difference of two policies (what eom_difference computed); (B, N):
    its per-customer mean over the budgets (what model selection and retraining computed)."""
    d = _rct(200, seed=seed)
    logged = _logged(d)
    t, r, c, p = d["treatment"], d["revenue"], d["cost"], d["propensity"]
    rng = np.random.default_rng(seed)
    pol, anchor = rng.integers(0, 3, (2, n_budgets, 200))
    w = ((t == pol[0]).astype(np.float64) - (t == anchor[0])) / p
    one = metrics.paired_gain(pol[0], anchor[0], logged)
    assert (one.revenue, one.revenue_se) == (np.mean(w * r), np.std(w * r, ddof=1) / np.sqrt(200))
    assert (one.cost, one.cost_se) == (np.mean(w * c), np.std(w * c, ddof=1) / np.sqrt(200))
    grid = ((pol == t).astype(np.float64) - (anchor == t)).mean(axis=0) / p * r  # (N,)
    many = metrics.paired_gain(pol, anchor, logged)
    assert (many.revenue, many.revenue_se) == (grid.mean(), grid.std(ddof=1) / np.sqrt(200))
    by_budget = [
        metrics.paired_gain(a, b, logged).revenue for a, b in zip(pol, anchor, strict=True)
    ]
    assert many.revenue == pytest.approx(np.mean(by_budget), rel=1e-9, abs=1e-12)
    with pytest.raises(ValueError, match=r"policies \(3,\) and anchor"):
        metrics.paired_gain(pol[0, :3], anchor[0, :3], logged)


def test_eom_rejects_bad_input() -> None:
    d = _rct(10)
    t, r, c, p = d["treatment"], d["revenue"], d["cost"], d["propensity"]
    with pytest.raises(ValueError, match="propensity must lie in"):
        metrics.Logged.of(t, r, c, np.where(np.arange(10) == 3, 0.0, p))
    with pytest.raises(ValueError, match="revenue has a non-finite value at row 2"):
        metrics.Logged.of(t, np.where(np.arange(10) == 2, np.nan, r), c, p)
    with pytest.raises(ValueError, match="cost must be a non-empty"):
        metrics.Logged.of(t, r, c[:5], p)
    with pytest.raises(ValueError, match="treatment must be >= 0"):
        metrics.Logged(t - 5, r, c, p)  # direct construction runs the same checks
    with pytest.raises(ValueError, match="policy must be an integer"):
        metrics.eom(_logged(d), t[:3])
    logged = metrics.Logged.of(t.astype(np.float64).tolist(), r, c, p)
    assert logged.treatment.dtype == np.int64 and logged.revenue.dtype == np.float64


def test_lam_meets_realized_budget_and_falls_with_budget() -> None:
    d = _rct(3000)
    logged = _logged(d)
    t, c, p = logged.treatment, logged.cost, logged.propensity
    lams = []
    for b in (0.2, 0.5, 0.8):
        lam = metrics.lam_for_realized_budget(d["rev_mean"], d["cost_mean"], logged, b)
        spent = np.mean((t == dual_choice(d["rev_mean"], d["cost_mean"], lam)) * c / p)
        assert spent <= b
        assert spent > b - 0.05  # bisection ends at the budget, not far below it
        lams.append(lam)
    assert lams[0] >= lams[1] >= lams[2] > 0
    assert metrics.lam_for_realized_budget(d["rev_mean"], d["cost_mean"], logged, 1e6) == 0.0


def test_lam_warm_bracket_agrees_and_bad_bracket_falls_back() -> None:
    """A feasible hi_start gives the same lam (to tolerance); an infeasible one is ignored."""
    d = _rct(3000)
    logged = _logged(d)
    t, c, p = logged.treatment, logged.cost, logged.propensity
    cold = metrics.lam_for_realized_budget(d["rev_mean"], d["cost_mean"], logged, 0.5)
    for hi_start in (2.0 * cold, 1.01 * cold, 1e-6 * cold):  # last one overspends
        warm = metrics.lam_for_realized_budget(
            d["rev_mean"], d["cost_mean"], logged, 0.5, hi_start=hi_start
        )
        spent = np.mean((t == dual_choice(d["rev_mean"], d["cost_mean"], warm)) * c / p)
        assert 0.5 - 0.05 < spent <= 0.5
        assert warm == pytest.approx(cold, rel=0.05)


@settings(max_examples=25, deadline=None)
@given(seed=st.integers(0, 10_000), frac=st.floats(0.05, 1.2))
def test_lam_never_overspends_when_feasible(seed: int, frac: float) -> None:
    d = _rct(300, seed=seed)
    t, c, p = d["treatment"], d["cost"], d["propensity"]
    rng = np.random.default_rng(seed)
    rp = rng.uniform(0, 10, (300, 3))
    cp = np.column_stack([np.zeros(300), rng.uniform(0, 3, (300, 2))])
    top = np.mean((t == np.argmax(rp, axis=1)) * c / p)
    budget = frac * top
    lam = metrics.lam_for_realized_budget(rp, cp, _logged(d), budget)
    assert np.mean((t == dual_choice(rp, cp, lam)) * c / p) <= budget + 1e-12


def test_budget_curve_rewards_good_predictions() -> None:
    d = _rct(20_000, seed=1)
    logged = _logged(d)
    good = metrics.budget_curve(d["rev_mean"], d["cost_mean"], logged)
    rng = np.random.default_rng(0)
    bad = metrics.budget_curve(rng.uniform(size=(20_000, 3)), d["cost_mean"], logged)
    assert good.budget.shape == (10,)
    np.testing.assert_allclose(good.budget, bad.budget)  # same grid for both models
    assert good.low.cost == pytest.approx(0.0) and good.budget[-1] == pytest.approx(good.high.cost)
    assert np.all(good.cost <= good.budget + 1e-9)
    assert good.area > bad.area + 0.05
    assert good.mean_revenue > bad.mean_revenue
    expected = np.mean((good.revenue - good.low.revenue) / (good.high.revenue - good.low.revenue))
    assert good.area == pytest.approx(expected)


def test_budget_curve_custom_grid_and_errors() -> None:
    d = _rct(500)
    curve = metrics.budget_curve(d["rev_mean"], d["cost_mean"], _logged(d), [0.6, 0.3])
    assert curve.budget.tolist() == [0.6, 0.3] and curve.lam.shape == (2,)
    for b in range(2):  # the policy each row scores, in the caller's budget order
        choice = dual_choice(d["rev_mean"], d["cost_mean"], curve.lam[b])
        np.testing.assert_array_equal(curve.policy[b], choice)
        value = metrics.eom(_logged(d), choice)
        assert (curve.revenue[b], curve.cost[b]) == (value.revenue, value.cost)
    with pytest.raises(ValueError, match=r"must both be \(N=500, K\)"):
        metrics.budget_curve(d["rev_mean"][:, :2], d["cost_mean"], _logged(d))


def _reference_aucc(t: np.ndarray, yr: np.ndarray, yc: np.ndarray, s: np.ndarray, q: int) -> float:
    """Line-by-line loop transcription of the reference get_uplift_model_aucc (small N only)."""
    idx = np.argsort(-s, kind="stable")
    t, yr, yc = t[idx].astype(bool), yr[idx], yc[idx]
    n_t, n_c = t.sum(), (~t).sum()
    d_r = yr[t].mean() - yr[~t].mean()
    step = (yc[t].mean() - yc[~t].mean()) / q
    rewards = [0.0]
    ct = rt = cc = rc = 0.0
    j = 1
    for i in range(len(t)):
        if t[i]:
            ct, rt = ct + yc[i], rt + yr[i]
        else:
            cc, rc = cc + yc[i], rc + yr[i]
        if i >= len(t) - 1 or (j < q and ct / n_t - cc / n_c >= step * j):
            rewards.append(rt / n_t - rc / n_c)
            j += 1
    return float(np.sum(rewards) / (d_r * (q + 1)))


@pytest.mark.parametrize("seed", [0, 1, 2])
def test_aucc_matches_reference_loop(seed: int) -> None:
    rng = np.random.default_rng(seed)
    n = 600
    x = rng.standard_normal(n)
    t = rng.integers(0, 2, n)
    yc = rng.binomial(1, 0.3 + 0.2 * t * (x > 0))
    yr = rng.binomial(1, 0.1 + 0.1 * t * (x > 0.5)) * 1.0
    s = x + 0.5 * rng.standard_normal(n)
    want = _reference_aucc(t, yr, yc, s, 50)
    assert metrics.aucc(t, yr, yc, s, n_bins=50) == pytest.approx(want, rel=1e-12)


def test_aucc_random_is_half_and_informed_is_better() -> None:
    rng = np.random.default_rng(7)
    n = 100_000
    x = rng.standard_normal(n)
    t = rng.integers(0, 2, n)
    yc = rng.binomial(1, 0.3 + 0.3 * t * (x > 0)).astype(float)
    yr = rng.binomial(1, 0.05 + 0.1 * t * (x > 1)).astype(float)
    assert metrics.aucc(t, yr, yc, rng.standard_normal(n)) == pytest.approx(0.5, abs=0.05)
    rp = np.column_stack([np.full(n, 0.05), 0.05 + 0.1 * (x > 1)])
    cp = np.column_stack([np.full(n, 0.3), 0.3 + 0.3 * (x > 0)])
    assert metrics.aucc(t, yr, yc, metrics.roi_score(rp, cp)) > 0.6
    with pytest.raises(ValueError, match="binary treatment"):
        metrics.aucc(t + 1, yr, yc, x)
