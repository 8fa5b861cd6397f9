"""Offline policy evaluation on randomized data: EOM, the budget curve and AUCC (methods §3).

EOM (expected outcome metric): a policy's per-capita revenue and cost estimated from logged data
by inverse propensity weighting -- only customers whose logged treatment equals the policy's
choice count, each weighted 1/p(logged treatment). Horvitz-Thompson (the paper metric) and Hajek
(self-normalised, diagnostic) forms, each with a standard error so comparisons can carry a CI.

Doubly robust (AIPW) form (Dudik, Langford & Li 2011): give `Logged` a `Baseline` -- an outcome
model's predictions mu(x_i, t) for every row and arm, fit WITHOUT these rows -- and every
estimate below uses the per-row, per-arm scores

    Gamma_it = mu(x_i, t) + 1[T_i = t] / p_i * (y_i - mu(x_i, T_i))

instead of the HT terms 1[T_i = t] / p_i * y_i. Both are unbiased on randomized rows; the AIPW
score only carries the part of the outcome the baseline does not explain, so its variance (and
every standard error, paired gains included) shrinks by about the share of outcome variance
the baseline explains (`explained_share`). A baseline fit on the same rows would not be
independent of their noise and would bias the estimate: cross-fit it, or use a model that
never saw them (the champion, on rows logged after it was trained).

Models are compared at equal *realized* spend ("mode E", §1): for each per-capita
budget the multiplier lam is bisected until the EOM-estimated cost of pi_lam meets the budget, so
a model that under-predicts cost cannot win by overspending.
"""

from __future__ import annotations

from dataclasses import dataclass

import numpy as np

from app.core._types import FloatArray, IntArray
from app.core.solver import dual_chooser

_COST_EPS = 1e-12  # predicted costs at or below this do not bound lam (methods §8.19)


@dataclass(frozen=True)
class PolicyValue:
    """EOM estimate of one policy: per-capita revenue and cost with standard errors."""

    revenue: float  # Horvitz-Thompson per-capita revenue
    cost: float  # Horvitz-Thompson per-capita cost
    revenue_se: float
    cost_se: float
    revenue_hajek: float  # self-normalised form (lower variance, slightly biased)
    cost_hajek: float
    n_matched: int  # customers whose logged treatment equals the policy's


@dataclass(frozen=True)
class Baseline:
    """An outcome model's predictions for the logged rows: (N, K) revenue and cost per arm.

    The `mu` of the doubly robust estimates; it must not have been fit on these rows.
    """

    revenue: FloatArray
    cost: FloatArray


@dataclass(frozen=True)
class Logged:
    """Logged randomized data, (N,) each: what every EOM estimate reads, validated once.

    Build it with `Logged.of(treatment, revenue, cost, propensity)` (any array-likes); direct
    construction runs the same checks, so a `Logged` in hand is always well-formed. With a
    `baseline` (see `with_baseline`) every estimate is doubly robust (module docstring).
    """

    treatment: IntArray  # int64 logged arm
    revenue: FloatArray  # float64 factual revenue, finite
    cost: FloatArray  # float64 factual cost, finite
    propensity: FloatArray  # float64 probability of the logged arm, in (0, 1]
    baseline: Baseline | None = None

    def __post_init__(self) -> None:
        t, r, c, p = _validated(self.treatment, self.revenue, self.cost, self.propensity)
        for name, value in (("treatment", t), ("revenue", r), ("cost", c), ("propensity", p)):
            object.__setattr__(self, name, value)
        if self.baseline is not None:
            object.__setattr__(self, "baseline", _validated_baseline(self.baseline, t))

    @classmethod
    def of(cls, treatment: object, revenue: object, cost: object, propensity: object) -> Logged:
        """Validate and convert four (N,) array-likes (errors name the field and the row)."""
        return cls(treatment, revenue, cost, propensity)  # type: ignore[arg-type]

    def with_baseline(self, revenue: object, cost: object) -> Logged:
        """The same rows with an outcome model's (N, K) predictions: doubly robust estimates."""
        base = Baseline(np.asarray(revenue, np.float64), np.asarray(cost, np.float64))
        return Logged(self.treatment, self.revenue, self.cost, self.propensity, base)

    def without_baseline(self) -> Logged:
        """The same rows with plain HT estimates."""
        return Logged(self.treatment, self.revenue, self.cost, self.propensity)

    @property
    def estimator(self) -> str:
        """ "dr" with a baseline, else "ht" (what `revenue`/`cost` of every estimate are)."""
        return "ht" if self.baseline is None else "dr"

    def scores(self) -> tuple[FloatArray, FloatArray]:
        """Per-row, per-arm terms (N, K) for revenue and cost whose row mean under a policy is
        its per-capita estimate: AIPW scores with a baseline, HT terms without."""
        rows = np.arange(len(self.treatment))
        inv_p = 1.0 / self.propensity
        if self.baseline is None:
            k = int(self.treatment.max()) + 1
            mus: tuple[FloatArray, FloatArray] = (np.zeros((len(rows), k)),) * 2
        else:
            mus = (self.baseline.revenue, self.baseline.cost)
        out = []
        for y, mu in zip((self.revenue, self.cost), mus, strict=True):
            terms = mu.copy()  # AIPW: mu(x, t) + 1[T = t] / p * (y - mu(x, T))
            terms[rows, self.treatment] += inv_p * (y - mu[rows, self.treatment])
            out.append(terms)
        return out[0], out[1]

    def __len__(self) -> int:
        return len(self.treatment)


def _validated_baseline(base: Baseline, treatment: IntArray) -> Baseline:
    """Baseline arrays as float64 (N, K), finite, with a column for every logged arm."""
    rev = np.asarray(base.revenue, dtype=np.float64)
    cost = np.asarray(base.cost, dtype=np.float64)
    n = len(treatment)
    if rev.ndim != 2 or rev.shape != cost.shape or rev.shape[0] != n:
        raise ValueError(
            f"baseline revenue {rev.shape} and cost {cost.shape} must both be (N={n}, K)"
        )
    if treatment.max() >= rev.shape[1]:
        raise ValueError(f"treatment {treatment.max()} has no baseline column (K={rev.shape[1]})")
    if not (np.all(np.isfinite(rev)) and np.all(np.isfinite(cost))):
        raise ValueError("baseline predictions contain NaN or inf")
    return Baseline(rev, cost)


def explained_share(logged: Logged) -> tuple[float, float]:
    """Share of the factual revenue and cost variance the baseline explains on these rows:
    1 - Var(y - mu(x, T)) / Var(y). The doubly robust SE cut is about this large."""
    if logged.baseline is None:
        raise ValueError("explained_share needs a Logged with a baseline")
    rows = np.arange(len(logged))
    out = []
    for y, mu in ((logged.revenue, logged.baseline.revenue), (logged.cost, logged.baseline.cost)):
        var = float(np.var(y))
        out.append(1.0 - float(np.var(y - mu[rows, logged.treatment])) / var if var > 0 else 0.0)
    return out[0], out[1]


def _validated(
    treatment: object, revenue: object, cost: object, propensity: object
) -> tuple[IntArray, FloatArray, FloatArray, FloatArray]:
    """Four (N,) arrays, finite outcomes, integer treatment >= 0, propensity in (0, 1]."""
    t = np.asarray(treatment)
    r = np.asarray(revenue, dtype=np.float64)
    c = np.asarray(cost, dtype=np.float64)
    p = np.asarray(propensity, dtype=np.float64)
    n = t.shape[0] if t.ndim == 1 else -1
    for name, a in (("treatment", t), ("revenue", r), ("cost", c), ("propensity", p)):
        if a.ndim != 1 or a.shape[0] != n or n == 0:
            raise ValueError(f"{name} must be a non-empty (N,) array like treatment, got {a.shape}")
    if t.dtype.kind not in "iu" and not (t.dtype.kind == "f" and np.all(t == np.round(t))):
        raise ValueError(f"treatment must hold integers, got dtype {t.dtype}")
    if t.min() < 0:
        raise ValueError(f"treatment must be >= 0, got {t.min()}")
    for name, a in (("revenue", r), ("cost", c)):
        if not np.all(np.isfinite(a)):
            raise ValueError(
                f"{name} has a non-finite value at row {int(np.argmin(np.isfinite(a)))}"
            )
    bad = ~((p > 0) & (p <= 1))
    if bad.any():
        row = int(np.argmax(bad))
        raise ValueError(f"propensity must lie in (0, 1]; row {row} has {p[row]!r}")
    return t.astype(np.int64), r, c, p


def arm_propensity(treatment: object) -> FloatArray:
    """Empirical RCT propensity p_{t_i} = N_{t_i} / N, (N,) (methods §0)."""
    t = np.asarray(treatment, dtype=np.int64)
    return (np.bincount(t) / len(t))[t]


def _ht_and_se(y: FloatArray) -> tuple[float, float]:
    """Mean of per-customer HT terms and its standard error."""
    n = len(y)
    se = float(np.std(y, ddof=1) / np.sqrt(n)) if n > 1 else float("nan")
    return float(np.mean(y)), se


def _eom(logged: Logged, policy: IntArray) -> PolicyValue:
    r, c = logged.revenue, logged.cost
    w = (logged.treatment == policy) / logged.propensity  # (N,) HT weight, 0 off the matched set
    if logged.baseline is None:
        rev, rev_se = _ht_and_se(w * r)
        cst, cst_se = _ht_and_se(w * c)
    else:  # AIPW: the baseline of the chosen arm plus the weighted residual of the logged one
        rows = np.arange(len(policy))
        base = logged.baseline
        residual_r = r - base.revenue[rows, logged.treatment]
        residual_c = c - base.cost[rows, logged.treatment]
        rev, rev_se = _ht_and_se(base.revenue[rows, policy] + w * residual_r)
        cst, cst_se = _ht_and_se(base.cost[rows, policy] + w * residual_c)
    total_w = float(w.sum())
    rev_h = float((w * r).sum() / total_w) if total_w > 0 else float("nan")
    cst_h = float((w * c).sum() / total_w) if total_w > 0 else float("nan")
    return PolicyValue(rev, cst, rev_se, cst_se, rev_h, cst_h, int(np.count_nonzero(w)))


def eom(logged: Logged, policy: object) -> PolicyValue:
    """EOM of a deterministic policy (N,): the chosen treatment per logged row.

    HT: r_bar = (1/N) sum_i r_i 1[t_i = pi_i] / p_i, unbiased for the per-capita revenue of pi
    on randomized data; SE = std of the per-customer terms / sqrt(N).
    """
    pol = np.asarray(policy)
    if pol.shape != logged.treatment.shape or pol.dtype.kind not in "iu":
        raise ValueError(f"policy must be an integer (N,) array like treatment, got {pol.shape}")
    return _eom(logged, pol.astype(np.int64))


@dataclass(frozen=True)
class PairedGain:
    """Paired HT difference of policies over an anchor on the same logged rows, per capita."""

    revenue: float  # mean over the budgets of the HT revenue difference
    revenue_se: float  # its standard error over customers
    cost: float
    cost_se: float


def paired_gain(policies: object, anchor: object, logged: Logged) -> PairedGain:
    """Gain of policies over anchor, both (B, N) (or (N,): B = 1), averaged over the B budgets.

    The statistic that decides which model ships (model selection and champion/challenger).
    Per customer, the HT terms of both policies share the logged row, so the SE of the
    difference is that of one mean over customers: far tighter than two independent SEs, as
    most of the heavy-tailed revenue noise cancels.
    """
    t = logged.treatment
    pol, anc = np.asarray(policies), np.asarray(anchor)
    if pol.ndim not in (1, 2) or pol.shape[-1] != len(t) or anc.shape != pol.shape:
        raise ValueError(
            f"policies {pol.shape} and anchor {anc.shape} must both be (N,) or (B, N) with "
            f"N = {len(t)} rows like treatment"
        )
    if logged.baseline is not None:  # AIPW scores of both policies, row by row
        gamma_r, gamma_c = logged.scores()
        pol2, anc2 = np.atleast_2d(pol), np.atleast_2d(anc)
        rows = np.arange(len(t))[None, :]
        d_r = (gamma_r[rows, pol2] - gamma_r[rows, anc2]).mean(axis=0)
        d_c = (gamma_c[rows, pol2] - gamma_c[rows, anc2]).mean(axis=0)
        return PairedGain(*_ht_and_se(d_r), *_ht_and_se(d_c))
    matched = np.atleast_2d(pol == t).astype(np.float64) - np.atleast_2d(anc == t)  # (B, N)
    w = matched.mean(axis=0) / logged.propensity  # (N,) difference of HT weights, grid mean
    d_rev, d_rev_se = _ht_and_se(w * logged.revenue)
    d_cost, d_cost_se = _ht_and_se(w * logged.cost)
    return PairedGain(d_rev, d_rev_se, d_cost, d_cost_se)


def _predictions(revenue_pred: object, cost_pred: object, n: int) -> tuple[FloatArray, FloatArray]:
    rp = np.asarray(revenue_pred, dtype=np.float64)
    cp = np.asarray(cost_pred, dtype=np.float64)
    if rp.ndim != 2 or rp.shape != cp.shape or rp.shape[0] != n:
        raise ValueError(
            f"predicted revenue {rp.shape} and cost {cp.shape} must both be (N={n}, K)"
        )
    if not (np.all(np.isfinite(rp)) and np.all(np.isfinite(cp))):
        raise ValueError("predictions contain NaN or inf")
    return rp, cp


def lam_for_realized_budget(
    revenue_pred: object,
    cost_pred: object,
    logged: Logged,
    budget: float,
    *,
    tol: float = 1e-4,
    max_iter: int = 60,
    hi_start: float | None = None,
) -> float:
    """Mode-E multiplier: bisect lam until the EOM realized per-capita cost of pi_lam meets budget.

    The realized (EOM) cost need not be monotone in lam, so this finds a crossing from the
    feasible side, stopping once the spend is within tol (relative) below the budget.

    revenue_pred, cost_pred: (N, K) model outputs of the N logged (randomized) rows.
    Bisection keeps the feasible side (hi): if even the cheapest-predicted policy overspends,
    the returned lam is the one that reached it (the caller sees the overspend in the EOM cost).
    hi_start: optional known lam (e.g. of a smaller budget or a previous model) used as the
    upper bracket when it fits the budget; otherwise the usual max(r/c) bracket is used.
    """
    rp, cp = _predictions(revenue_pred, cost_pred, len(logged))
    spend = _RealizedCost(rp, cp, logged)
    return _lam_search(spend, float(budget), tol, max_iter, hi_start)


class _RealizedCost:
    """EOM per-capita cost of pi_lam as a function of lam (set up once per bisection)."""

    def __init__(self, rp: FloatArray, cp: FloatArray, logged: Logged):
        self.choose = dual_chooser(rp, cp)
        self.t, self.weight = logged.treatment, logged.cost / logged.propensity
        self.gamma = None if logged.baseline is None else logged.scores()[1]  # (N, K) AIPW cost
        self.rows = np.arange(len(logged))
        self.max_ratio = _max_ratio(rp, cp)
        self.cost_scale = float(np.mean(np.abs(logged.cost)))

    def __call__(self, lam: float) -> float:
        if self.gamma is not None:
            return float(np.mean(self.gamma[self.rows, self.choose(lam)]))
        return float(np.mean((self.t == self.choose(lam)) * self.weight))


def _max_ratio(rp: FloatArray, cp: FloatArray) -> float:
    """Largest predicted revenue/cost over positive costs: above it every policy is cheapest."""
    positive = cp > _COST_EPS
    return float((rp[positive] / cp[positive]).max()) if positive.any() else 0.0


def _lam_search(
    spend: _RealizedCost,
    budget: float,
    tol: float,
    max_iter: int,
    hi_start: float | None = None,
) -> float:
    """Bisection of mode E; hi_start is a known lam of a smaller budget (a warm upper bracket)."""
    if not np.isfinite(budget):
        raise ValueError(f"budget must be finite, got {budget!r}")
    if spend(0.0) <= budget:
        return 0.0
    if hi_start is not None and hi_start > 0 and spend(hi_start) <= budget:
        hi = hi_start
    else:
        hi = max(spend.max_ratio, 1e-9) * (1.0 + 1e-9)
        for _ in range(64):  # grow until the policy fits (negative or tiny costs need more)
            if spend(hi) <= budget:
                break
            hi *= 2.0
        else:
            return hi
    lo = 0.0
    scale = tol * max(abs(budget), spend.cost_scale, 1e-12)
    for _ in range(max_iter):
        mid = 0.5 * (lo + hi)
        spent = spend(mid)
        if spent > budget:
            lo = mid
        else:
            hi = mid
            if budget - spent <= scale:
                break
        if hi - lo <= 1e-12 * hi:
            break
    return hi


@dataclass(frozen=True)
class BudgetCurve:
    """EOM revenue and cost of a model's policy across a grid of per-capita budgets."""

    budget: FloatArray  # (B,) per-capita budgets
    revenue: FloatArray  # (B,) EOM (HT) per-capita revenue at lam(b)
    cost: FloatArray  # (B,) EOM (HT) per-capita cost at lam(b)
    revenue_se: FloatArray  # (B,)
    cost_se: FloatArray  # (B,)
    lam: FloatArray  # (B,) mode-E multiplier
    policy: IntArray  # (B, N) treatment per customer at lam(b) (the policy the row scores)
    low: PolicyValue  # constant policy with the lowest EOM cost (usually all-control)
    high: PolicyValue  # constant policy with the highest EOM cost (usually all-max-arm)

    @property
    def mean_revenue(self) -> float:
        """Mean EOM revenue over the grid (= area under the curve / grid width, uniform grid)."""
        return float(np.mean(self.revenue))

    @property
    def area(self) -> float:
        """Normalised area: mean over the grid of (R(b) - R_low) / (R_high - R_low).

        Random targeting (mixing the cheapest and the dearest arm) scores (B+1)/(2B) on the
        default grid (0.55 for B = 10); values are comparable across models on the same data
        and grid. If R_high <= R_low the gain is divided by |R_low| instead.
        """
        gain = self.high.revenue - self.low.revenue
        scale = max(abs(self.high.revenue), abs(self.low.revenue), 1e-12)
        denominator = gain if gain > 1e-12 * scale else max(abs(self.low.revenue), 1e-12)
        return float(np.mean((self.revenue - self.low.revenue) / denominator))


def constant_policies(logged: Logged, n_treatments: int) -> list[PolicyValue]:
    """EOM of 'everybody gets arm j' for j = 0..K-1."""
    return [_eom(logged, np.full(len(logged), j, np.int64)) for j in range(n_treatments)]


def budget_grid(low: float, high: float, n_budgets: int = 10) -> FloatArray:
    """Per-capita budgets low + (high - low) * i / n for i = 1..n (methods §8.7).

    The all-low point is left out: there every model spends nothing and scores alike.
    """
    if n_budgets < 1:
        raise ValueError(f"n_budgets must be >= 1, got {n_budgets}")
    return low + (high - low) * np.arange(1, n_budgets + 1) / n_budgets


def budget_curve(
    revenue_pred: object,
    cost_pred: object,
    logged: Logged,
    budgets: object | None = None,
    *,
    n_budgets: int = 10,
) -> BudgetCurve:
    """Mode-E budget curve of a model. Predictions (N, K) of the logged rows, budgets (B,).

    Default grid: n_budgets points between the EOM spend of the cheapest and of the dearest
    constant policy (all-control and all-max-arm in the usual case).
    """
    t = logged.treatment
    rp, cp = _predictions(revenue_pred, cost_pred, len(t))
    if t.max() >= rp.shape[1]:
        raise ValueError(f"treatment {t.max()} has no prediction column (K={rp.shape[1]})")
    arms = constant_policies(logged, rp.shape[1])
    order = np.argsort([a.cost for a in arms], kind="stable")
    low, high = arms[int(order[0])], arms[int(order[-1])]
    grid = (
        budget_grid(low.cost, high.cost, n_budgets)
        if budgets is None
        else np.atleast_1d(np.asarray(budgets, dtype=np.float64))
    )
    if grid.ndim != 1 or grid.size == 0 or not np.all(np.isfinite(grid)):
        raise ValueError("budgets must be a non-empty 1-D array of finite numbers")
    out = np.zeros((grid.size, 5))
    policy = np.zeros((grid.size, len(t)), np.int64)
    prev_lam: float | None = None
    spend = _RealizedCost(rp, cp, logged)
    for i in np.argsort(grid, kind="stable"):  # budgets ascending: lam of the last one brackets
        lam = _lam_search(spend, float(grid[i]), 1e-4, 60, prev_lam)
        policy[i] = spend.choose(lam)
        value = _eom(logged, policy[i])
        out[i] = (value.revenue, value.cost, value.revenue_se, value.cost_se, lam)
        prev_lam = lam
    rev, cst, rev_se, cst_se, lams = out.T
    return BudgetCurve(grid, rev, cst, rev_se, cst_se, lams, policy, low, high)


def roi_score(revenue_pred: object, cost_pred: object) -> FloatArray:
    """Binary-treatment ranking score (dr/dc), (N,); |dc| < 1e-6 becomes 1e-6 (reference code)."""
    rp = np.asarray(revenue_pred, dtype=np.float64)
    cp = np.asarray(cost_pred, dtype=np.float64)
    if rp.ndim != 2 or rp.shape != cp.shape or rp.shape[1] != 2:
        raise ValueError(f"roi_score needs (N, 2) predictions, got {rp.shape} and {cp.shape}")
    dr = rp[:, 1] - rp[:, 0]
    dc = cp[:, 1] - cp[:, 0]
    return dr / np.where(np.abs(dc) < 1e-6, 1e-6, dc)


def aucc(
    treatment: object, revenue: object, cost: object, score: object, n_bins: int = 200
) -> float:
    """Area under the cost curve for binary treatment (methods §3); random ranking ~ 0.5.

    Customers are ranked by score (descending); a point (incremental cost, incremental revenue)
    is recorded whenever the incremental cost passes the next of n_bins equal steps, plus the
    final point; AUCC = sum of recorded incremental revenues / (total uplift * (n_bins + 1)).
    """
    t_raw = np.asarray(treatment)
    r = np.asarray(revenue, dtype=np.float64)
    c = np.asarray(cost, dtype=np.float64)
    s = np.asarray(score, dtype=np.float64)
    n = len(t_raw)
    if not (t_raw.ndim == r.ndim == c.ndim == s.ndim == 1 and len(r) == len(c) == len(s) == n > 0):
        raise ValueError("treatment, revenue, cost and score must be (N,) arrays of equal length")
    if not np.isin(t_raw, (0, 1)).all():
        raise ValueError("aucc needs a binary treatment (0 = control, 1 = treated)")
    if not (np.isfinite(r).all() and np.isfinite(c).all() and np.isfinite(s).all()):
        raise ValueError("revenue, cost and score must be finite")
    order = np.argsort(-s, kind="stable")
    treated = t_raw[order] == 1
    r, c = r[order], c[order]
    n_t = max(int(treated.sum()), 1)
    n_c = int((~treated).sum())
    if n_c > 0:
        delta_r = r[treated].mean() - r[~treated].mean()
        delta_c = c[treated].mean() - c[~treated].mean()
    else:  # reference code: no control group -> control means 0
        n_c = 1
        delta_r, delta_c = r[treated].mean(), c[treated].mean()
    if delta_r == 0:
        raise ValueError("AUCC is undefined: treated and control mean revenue are equal")
    step = delta_c / n_bins
    inc_c = np.cumsum(np.where(treated, c, 0.0)) / n_t - np.cumsum(np.where(treated, 0.0, c)) / n_c
    inc_r = np.cumsum(np.where(treated, r, 0.0)) / n_t - np.cumsum(np.where(treated, 0.0, r)) / n_c
    picked = []
    prev = -1
    for j in range(1, n_bins):  # loop over cost quantiles: next row past the j-th step
        hits = inc_c[prev + 1 :] >= step * j
        if not hits.any():
            break
        idx = prev + 1 + int(np.argmax(hits))
        if idx >= n - 1:
            break
        picked.append(idx)
        prev = idx
    picked.append(n - 1)
    return float(inc_r[picked].sum() / (delta_r * (n_bins + 1)))
