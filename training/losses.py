"""Prediction and decision losses (methods §2, §4, §5.1): pure tensor functions.

Shapes: predictions rev_hat, cost_hat (B, K); decision losses read the batch's logged record
(a Split: treatment (B,) int64, factual revenue, cost, propensity (B,)), so the four logged
tensors travel together and cannot be passed in the wrong order. Temperatures and clip widths
are given in units of the batch std of the dual score a = r_hat - lam * c_hat (detached), so
defaults do not depend on the currency (methods §8.14).

Outcome errors come in two kinds (`kind`): "mse", the papers' choice, and "poisson", the
deviance, whose gradient (mu - y) / mu weights each customer by the inverse of the variance of
spend-like labels (variance grows with the mean), so on heavy-tailed revenue the few big
spenders no longer dominate the fit.
"""

from __future__ import annotations

from collections.abc import Sequence

import torch
from torch import Tensor
from torch.nn import functional as F

from training.splits import Split

EPS = 1e-6
_MEAN_FLOOR = 1e-6  # Poisson deviance needs a positive mean; in units of the label scale


def _factual(values: Tensor, treatment: Tensor) -> Tensor:
    """Pick each row's logged-arm entry: (B, K), (B,) -> (B,)."""
    return values.gather(1, treatment[:, None]).squeeze(1)


def _score_scale(score: Tensor) -> Tensor:
    """Detached spread of the dual scores, the unit for temperatures and clip widths."""
    return score.detach().std().clamp_min(1e-8)


def frequency_weights(treatment: Tensor, n_treatments: int) -> Tensor:
    """Per-sample weight 1/(K p_t) with empirical arm frequencies: makes every arm count equally."""
    counts = torch.bincount(treatment, minlength=n_treatments).to(torch.float32)
    freq = counts / treatment.numel()
    return 1.0 / (n_treatments * freq[treatment])


def outcome_error(
    pred: Tensor, label: Tensor, scale: float | Tensor = 1.0, kind: str = "mse"
) -> Tensor:
    """Elementwise error of predictions against labels (same shape), both divided by `scale`.

    "mse": squared error. "poisson": deviance y log(y / mu) - (y - mu), zero at mu = y, for
    labels >= 0 (the mean is floored at a tiny positive value).
    """
    mu, y = pred / scale, label / scale
    if kind == "mse":
        return (y - mu) ** 2
    if kind == "poisson":
        mu = mu.clamp_min(_MEAN_FLOOR)
        return torch.special.xlogy(y, y) - torch.special.xlogy(y, mu) - y + mu
    raise ValueError(f"outcome loss must be 'mse' or 'poisson', got {kind!r}")


def prediction_loss(
    rev_hat: Tensor,
    cost_hat: Tensor,
    treatment: Tensor,
    revenue: Tensor,
    cost: Tensor,
    weight: Tensor | None = None,
    revenue_scale: float | Tensor = 1.0,
    cost_scale: float | Tensor = 1.0,
    kind: str = "mse",
) -> Tensor:
    """Factual outcome error (methods §2); weight=frequency_weights gives the RCT-unbiased L_PL.

    Errors are divided by the label scales so revenue and cost count alike whatever their units.
    """
    err = outcome_error(_factual(rev_hat, treatment), revenue, revenue_scale, kind)
    err = err + outcome_error(_factual(cost_hat, treatment), cost, cost_scale, kind)
    return (err if weight is None else weight * err).mean()


def all_arms_loss(
    rev_hat: Tensor, cost_hat: Tensor, rev_target: Tensor, cost_target: Tensor,
    revenue_scale: float | Tensor = 1.0, cost_scale: float | Tensor = 1.0,
) -> Tensor:  # fmt: skip
    """Squared error against labels for every arm (B, K): the DR-learner's second stage.

    Its pseudo-outcomes can be negative, so the Poisson deviance does not apply.
    """
    err = outcome_error(rev_hat, rev_target, revenue_scale, "mse")
    err = err + outcome_error(cost_hat, cost_target, cost_scale, "mse")
    return err.sum(dim=1).mean()


def aipw_ppl_loss(
    rev_hat: Tensor, cost_hat: Tensor, gamma_rev: Tensor, gamma_cost: Tensor, lam: float,
    tau: float, reward: str = "revenue",
) -> Tensor:  # fmt: skip
    """PPL with AIPW pseudo-outcomes (B, K) of every arm instead of the logged arm's IPW term.

    -mean_i sum_t softmax(a_i / tau)_t * Gamma_it: the softened policy's doubly robust value.
    Every arm of every row carries signal, not only the logged one (Athey & Wager 2021).
    """
    score = rev_hat - lam * cost_hat
    z = torch.softmax(score / (tau * _score_scale(score)), dim=1)
    gain = gamma_rev if reward == "revenue" else gamma_rev - lam * gamma_cost
    return -(z * gain).sum(dim=1).mean()


def lower_level_loss(
    rev_hat: Tensor,
    cost_hat: Tensor,
    treatment: Tensor | None,
    revenue: Tensor,
    cost: Tensor,
    rev_cf: Tensor,
    cost_cf: Tensor,
    revenue_scale: float | Tensor = 1.0,
    cost_scale: float | Tensor = 1.0,
    kind: str = "mse",
    weight: Tensor | None = None,
) -> Tensor:
    """Bi-DFCL L_low (§5.2): factual labels on the logged arm, pseudo-labels (B, K) elsewhere.

    treatment=None: every arm's label is the pseudo-label (the bridge also gates the logged arm).
    weight (B,): per-row weights (inverse propensity weighting of OBS rows), None = equal.
    """
    if treatment is None:
        rev_target, cost_target = rev_cf, cost_cf
    else:
        logged = F.one_hot(treatment, rev_hat.shape[1]).bool()
        rev_target = torch.where(logged, revenue[:, None], rev_cf)
        cost_target = torch.where(logged, cost[:, None], cost_cf)
    err = outcome_error(rev_hat, rev_target, revenue_scale, kind)
    err = err + outcome_error(cost_hat, cost_target, cost_scale, kind)
    per_row = err.sum(dim=1)
    return (per_row if weight is None else weight * per_row).mean()


def mer_loss(
    rev_hat: Tensor, cost_hat: Tensor, batch: Split, lambdas: Sequence[float], tau: float
) -> Tensor:
    """DFCL max-entropy dual loss (methods §4.3); tau=1 is the PL loss. Lower is a better policy."""
    total = rev_hat.new_zeros(())
    for lam in lambdas:
        score = rev_hat - lam * cost_hat
        q = torch.softmax(score / (tau * _score_scale(score)), dim=1)
        reward = (batch.revenue - lam * batch.cost) / batch.propensity
        total = total - (reward * _factual(q, batch.treatment)).mean()
    return total


def hajek_dual_value(matched: Tensor, batch: Split, lam: float) -> Tensor:
    """Hajek EOM dual value Q = r_bar - lam c_bar of a policy given its matched mask (B,)."""
    inv_p = matched.to(batch.revenue.dtype) / batch.propensity
    s = inv_p.sum().clamp_min(EPS)
    return ((inv_p * batch.revenue).sum() - lam * (inv_p * batch.cost).sum()) / s


def ifd_gradients(
    rev_hat: Tensor, cost_hat: Tensor, batch: Split, lam: float, h: float | None
) -> tuple[Tensor, Tensor]:
    """DFCL improved finite difference dQ/dr_hat, dQ/dc_hat (B, K) each (methods §4.4, Hajek form).

    Every row gets the smallest perturbation that flips it into / out of the matched set; the
    resulting change of Q is an O(1) update of the batch sums. h: 'fix' clip width (in score
    units, already scaled); None keeps the raw perturbations (used by the brute-force test).
    """
    treatment = batch.treatment
    with torch.no_grad():
        n, k = rev_hat.shape
        rows = torch.arange(n)
        score = rev_hat - lam * cost_hat
        top2 = score.topk(2, dim=1)
        chosen = top2.indices[:, 0]
        matched = chosen == treatment
        inv_p = 1.0 / batch.propensity
        y_r, y_c = batch.revenue * inv_p, batch.cost * inv_p
        s = (inv_p * matched).sum()
        r1 = (y_r * matched).sum() / s.clamp_min(EPS)
        c1 = (y_c * matched).sum() / s.clamp_min(EPS)
        q1 = r1 - lam * c1
        sign = torch.where(matched, -1.0, 1.0)  # matched rows leave, others join
        s2 = s + sign * inv_p
        safe = s2.abs() > EPS
        r2 = torch.where(safe, (r1 * s + sign * y_r) / s2.clamp_min(EPS), r1)
        c2 = torch.where(safe, (c1 * s + sign * y_c) / s2.clamp_min(EPS), c1)
        dq = torch.where(safe, (r2 - lam * c2) - q1, torch.zeros_like(r2))
        # the other touched arm: runner-up for matched rows, the chosen arm for mismatched rows
        other = torch.where(matched, top2.indices[:, 1], chosen)
        logged_score = _factual(score, treatment)
        delta = (score[rows, other] - logged_score).abs() + EPS  # size of the flip, > 0
        step_r = delta.clone()
        step_c = delta / lam + EPS if lam > 0 else torch.full_like(delta, float("inf"))
        keep_r = torch.ones_like(delta, dtype=torch.bool)
        keep_c = torch.ones_like(delta, dtype=torch.bool) if lam > 0 else ~keep_r
        if h is not None:  # 'fix': a real finite difference with step h (far rows do not flip)
            keep_r = step_r < h
            keep_c = keep_c & (step_c < h / max(lam, EPS))
            step_r = torch.full_like(step_r, h)
            step_c = torch.full_like(step_c, h / max(lam, EPS))
        # logged arm moves up in score (r up, c down) for mismatched rows, down for matched rows
        up = sign  # +1 mismatched (logged arm gains), -1 matched (logged arm loses)
        g_r = torch.zeros(n, k, dtype=rev_hat.dtype)
        g_c = torch.zeros(n, k, dtype=rev_hat.dtype)
        gr_row = torch.where(keep_r, dq / step_r, torch.zeros_like(dq))
        gc_row = torch.where(keep_c, dq / step_c, torch.zeros_like(dq))
        g_r[rows, treatment] = up * gr_row
        g_r[rows, other] = -up * gr_row
        g_c[rows, treatment] = -up * gc_row
        g_c[rows, other] = up * gc_row
    return g_r, g_c


def ifd_loss(
    rev_hat: Tensor,
    cost_hat: Tensor,
    batch: Split,
    lambdas: Sequence[float],
    h: float,
    use_cost: bool = False,
    tau: float | None = 1.0,
) -> Tensor:
    """Surrogate whose gradient follows the frozen IFD estimate g = dQ/dr_hat (methods §4.4).

    tau=None: the reference notebook's linear surrogate -sum sg(g) * r_hat (use_cost adds the
    cost term). It is unbounded in r_hat, so only short fine-tuning at a tiny learning rate keeps
    it sane; with a prediction term whose pull saturates (the Poisson deviance) it diverges.
    tau > 0 (default): the paper's smoothed variant -sum sg(g) * softmax(a / tau), bounded like
    PL/MER/PIFD; tau is in units of the batch std of a. use_cost has no effect there (methods §4.4:
    the smoothed variant perturbs r_hat only).
    """
    total = rev_hat.new_zeros(())
    for lam in lambdas:
        score = rev_hat - lam * cost_hat
        scale = _score_scale(score)
        g_r, g_c = ifd_gradients(rev_hat, cost_hat, batch, lam, h * float(scale))
        if tau is not None:
            total = total - (torch.softmax(score / (tau * scale), dim=1) * g_r).sum()
            continue
        total = total - (rev_hat * g_r).sum()
        if use_cost:
            total = total - (cost_hat * g_c).sum()
    return total


def ppl_loss(
    rev_hat: Tensor, cost_hat: Tensor, batch: Split, lam: float, tau: float, reward: str = "revenue"
) -> Tensor:
    """Bi-DFCL primal policy-learning loss at the budget's lambda* (methods §5.1, Eq 15-16).

    reward="revenue" is the paper (cost only through lambda*); "dual" uses r - lam c (methods §8.3).
    """
    score = rev_hat - lam * cost_hat
    z = torch.softmax(score / (tau * _score_scale(score)), dim=1)
    gain = batch.revenue if reward == "revenue" else batch.revenue - lam * batch.cost
    return -(_factual(z, batch.treatment) * gain / batch.propensity).mean()


def pifd_gradients(
    score: Tensor, treatment: Tensor, gain: Tensor, propensity: Tensor, h_min: float
) -> Tensor:
    """PIFD estimate D (B, K) of dV/da for V = HT per-capita gain of argmax policy (methods §5.1).

    h_min > 0: a finite difference of step h_min (rows farther than h_min from flipping get 0);
    h_min = 0: the raw closed-form 1/h estimate.
    """
    with torch.no_grad():
        n, k = score.shape
        rows = torch.arange(n)
        w = gain / (n * propensity)  # (B,)
        logged = F.one_hot(treatment, k).bool()
        chosen = score.argmax(dim=1)
        matched = chosen == treatment
        s_t = _factual(score, treatment)
        best_other = score.masked_fill(logged, float("-inf")).max(dim=1).values
        # matched rows: logged arm (h <= 0 to lose) and every other arm (h_ij >= 0 to win)
        gap_other = (s_t[:, None] - score).clamp_min(0.0)  # (B, K)
        gap_logged = (s_t - best_other).clamp_min(0.0)  # (B,)
        # mismatched rows: logged arm must rise by gap, chosen arm must fall by gap
        gap_mis = (_factual(score, chosen) - s_t).clamp_min(0.0)

        def inv(gap: Tensor) -> Tensor:
            if h_min > 0:
                return torch.where(gap < h_min, torch.full_like(gap, 1.0 / h_min), 0.0 * gap)
            return 1.0 / gap.clamp_min(1e-12)

        d = torch.zeros(n, k, dtype=score.dtype)
        d_matched = -w[:, None] * inv(gap_other)
        d = torch.where(matched[:, None] & ~logged, d_matched, d)
        d[rows, treatment] = torch.where(matched, w * inv(gap_logged), w * inv(gap_mis))
        d_chosen = torch.where(matched, d[rows, chosen], -w * inv(gap_mis))
        d[rows, chosen] = torch.where(matched, d[rows, chosen], d_chosen)
    return d


def pifd_loss(
    rev_hat: Tensor,
    cost_hat: Tensor,
    batch: Split,
    lam: float,
    tau: float,
    h: float,
    reward: str = "revenue",
) -> Tensor:
    """Surrogate -sum sg(D) * softmax(a / tau) with the PIFD estimate D (methods §5.1, §8.4)."""
    score = rev_hat - lam * cost_hat
    scale = _score_scale(score)
    gain = batch.revenue if reward == "revenue" else batch.revenue - lam * batch.cost
    d = pifd_gradients(score, batch.treatment, gain, batch.propensity, h * float(scale))
    z = torch.softmax(score / (tau * scale), dim=1)
    return -(d * z).sum()
