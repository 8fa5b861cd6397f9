"""Decision losses: IFD/PIFD against brute-force finite differences, losses rank policies."""

from __future__ import annotations

import pytest
import torch

from training import losses
from training.splits import Split


def _batch(t, r, c, p) -> Split:
    """The logged record the decision losses read (features are not needed here)."""
    return Split(torch.empty(len(t), 0), t, r, c, p)


def _hajek_q(rev_hat, cost_hat, t, r, c, p, lam):
    chosen = (rev_hat - lam * cost_hat).argmax(dim=1)
    return float(losses.hajek_dual_value(chosen == t, _batch(t, r, c, p), lam))


def _tiny(n: int, k: int, seed: int):
    g = torch.Generator().manual_seed(seed)
    t = torch.randint(0, k, (n,), generator=g)
    r = torch.rand(n, generator=g, dtype=torch.float64) * 5
    c = torch.rand(n, generator=g, dtype=torch.float64) * (t > 0)
    p = torch.full((n,), 1.0 / k, dtype=torch.float64)
    rev_hat = torch.rand(n, k, generator=g, dtype=torch.float64) * 3
    cost_hat = torch.rand(n, k, generator=g, dtype=torch.float64)
    return t, r, c, p, rev_hat, cost_hat


def test_ifd_matches_brute_force_resolve():
    """Each row's IFD entry equals (Q after re-solving with that row's flip - Q) / step."""
    t, r, c, p, rev_hat, cost_hat = _tiny(12, 3, seed=1)
    lam = 0.7
    g_r, g_c = losses.ifd_gradients(rev_hat, cost_hat, _batch(t, r, c, p), lam, h=None)
    q1 = _hajek_q(rev_hat, cost_hat, t, r, c, p, lam)
    score = rev_hat - lam * cost_hat
    checked = 0
    for i in range(len(t)):
        nz = torch.nonzero(g_r[i]).flatten().tolist()
        top = score[i].argmax().item()
        other = score[i].topk(2).indices[1].item() if top == t[i] else top
        assert sorted(nz) == sorted({int(t[i]), other}) or g_r[i].abs().sum() == 0
        delta = abs(float(score[i, other] - score[i, t[i]])) + losses.EPS
        up = 1.0 if top != t[i] else -1.0
        bumped = rev_hat.clone()
        bumped[i, t[i]] += up * delta
        bumped[i, other] -= up * delta
        q2 = _hajek_q(bumped, cost_hat, t, r, c, p, lam)  # brute force: re-solve everybody
        torch.testing.assert_close(
            float(g_r[i, t[i]]), (q2 - q1) / (up * delta), rtol=1e-6, atol=1e-9
        )
        torch.testing.assert_close(
            float(g_r[i, other]), (q2 - q1) / (-up * delta), rtol=1e-6, atol=1e-9
        )
        # the cost perturbation flips the same row; its gradient carries the same dQ
        bumped_c = cost_hat.clone()
        step_c = delta / lam + losses.EPS
        bumped_c[i, t[i]] -= up * step_c
        bumped_c[i, other] += up * step_c
        q2c = _hajek_q(rev_hat, bumped_c, t, r, c, p, lam)
        torch.testing.assert_close(
            float(g_c[i, t[i]]), (q2c - q1) / (-up * step_c), rtol=1e-6, atol=1e-9
        )
        checked += 1
    assert checked == len(t)


def test_ifd_fix_clip_only_keeps_rows_near_the_boundary():
    t, r, c, p, rev_hat, cost_hat = _tiny(40, 3, seed=2)
    lam = 0.5
    score = rev_hat - lam * cost_hat
    g_raw, _ = losses.ifd_gradients(rev_hat, cost_hat, _batch(t, r, c, p), lam, h=None)
    g_fix, _ = losses.ifd_gradients(rev_hat, cost_hat, _batch(t, r, c, p), lam, h=0.2)
    top2 = score.topk(2, dim=1)
    other = torch.where(top2.indices[:, 0] == t, top2.indices[:, 1], top2.indices[:, 0])
    gap = (score[torch.arange(40), other] - score[torch.arange(40), t]).abs()
    near = gap + losses.EPS < 0.2
    assert near.any() and (~near).any()
    assert torch.all(g_fix[~near] == 0)
    # near rows: same dQ divided by the fixed step h instead of the exact gap
    ratio = g_fix[near].abs().max(dim=1).values
    expected = g_raw[near].abs().max(dim=1).values * (gap[near] + losses.EPS) / 0.2
    torch.testing.assert_close(ratio, expected)


def _pifd_value(score, t, gain, p):
    return float(((score.argmax(dim=1) == t) * gain / (len(t) * p)).sum())


def test_pifd_matches_finite_difference_in_score_space():
    """With K=2, D_ij equals the finite difference of the HT value for a step h toward a flip."""
    t, r, _, p, rev_hat, _ = _tiny(30, 2, seed=3)
    score = rev_hat
    h = 0.5
    d = losses.pifd_gradients(score, t, r, p, h_min=h)
    v0 = _pifd_value(score, t, r, p)
    for i in range(len(t)):
        top = int(score[i].argmax())
        for j in range(2):
            step = -h if j == top else h  # only moving toward a flip can change the policy
            bumped = score.clone()
            bumped[i, j] += step
            fd = (_pifd_value(bumped, t, r, p) - v0) / step
            torch.testing.assert_close(float(d[i, j]), fd, rtol=1e-9, atol=1e-12)
    assert d.abs().sum() > 0


def _ranking_case():
    """Responders earn 10 under arm 1 (cost 1); the others earn 1 under either arm."""
    n = 200
    responder = torch.arange(n) % 4 < 2
    t = (torch.arange(n) % 2).long()
    r = torch.where(responder & (t == 1), 10.0, 1.0).double()
    c = (t == 1).double()
    p = torch.full((n,), 0.5, dtype=torch.float64)
    good_r = torch.stack([torch.ones(n), torch.where(responder, 10.0, 1.0)], 1).double()
    bad_r = torch.stack([torch.ones(n), torch.where(responder, 1.0, 10.0)], 1).double()
    cost_hat = torch.stack([torch.zeros(n), torch.ones(n)], 1).double()
    return t, r, c, p, good_r, bad_r, cost_hat


def test_pl_mer_ppl_rank_the_better_policy_lower():
    t, r, c, p, good, bad, cost_hat = _ranking_case()
    b = _batch(t, r, c, p)
    for name, fn in {
        "pl": lambda rh: losses.mer_loss(rh, cost_hat, b, [0.5, 2.0], tau=1.0),
        "mer": lambda rh: losses.mer_loss(rh, cost_hat, b, [0.5, 2.0], tau=0.1),
        "ppl": lambda rh: losses.ppl_loss(rh, cost_hat, b, 2.0, tau=0.3),
        "ppl-dual": lambda rh: losses.ppl_loss(rh, cost_hat, b, 2.0, 0.3, reward="dual"),
    }.items():
        assert float(fn(good)) < float(fn(bad)), name


def test_prediction_loss_is_zero_for_perfect_factual_predictions_and_weights_balance_arms():
    t, r, c, p, good, _, cost_hat = _ranking_case()
    true_r = torch.where(t[:, None] == torch.arange(2), r[:, None], good)
    true_c = torch.where(t[:, None] == torch.arange(2), c[:, None], cost_hat)
    assert float(losses.prediction_loss(true_r, true_c, t, r, c)) == 0.0
    unbalanced = torch.cat([torch.zeros(30), torch.ones(90)]).long()
    w = losses.frequency_weights(unbalanced, 2)
    # each arm carries half of the total weight whatever its sample count
    assert abs(float(w[unbalanced == 0].sum()) - 60.0) < 1e-4
    assert abs(float(w[unbalanced == 1].sum()) - 60.0) < 1e-4


def test_decision_losses_have_gradients_that_improve_a_bad_policy():
    """One gradient step from the bad predictions lowers each differentiable loss."""
    t, r, c, p, _, bad, cost_hat = _ranking_case()
    b = _batch(t, r, c, p)
    for fn in (
        lambda rh: losses.ppl_loss(rh, cost_hat, b, 2.0, tau=1.0),
        lambda rh: losses.pifd_loss(rh, cost_hat, b, 2.0, tau=1.0, h=2.0),
        lambda rh: losses.mer_loss(rh, cost_hat, b, [2.0], tau=0.5),
    ):
        rh = bad.clone().requires_grad_(True)
        value = fn(rh)
        (grad,) = torch.autograd.grad(value, rh)
        assert grad.abs().sum() > 0
        assert fn((rh - 0.5 * grad / grad.abs().max()).detach()).item() <= value.item()


def test_poisson_deviance_is_zero_only_at_the_label_and_minimised_by_the_mean():
    t, r, c, p, good, _, cost_hat = _ranking_case()
    true_r = torch.where(t[:, None] == torch.arange(2), r[:, None], good)
    true_c = torch.where(t[:, None] == torch.arange(2), c[:, None], cost_hat)
    # zero up to the mean floor that zero labels predicted as zero pay (log mu stays finite)
    perfect = float(losses.prediction_loss(true_r, true_c, t, r, c, kind="poisson"))
    assert 0.0 <= perfect <= losses._MEAN_FLOOR
    assert float(losses.prediction_loss(true_r + 0.5, true_c, t, r, c, kind="poisson")) > 0.0
    # among constant predictions of heavy-tailed labels (zeros included) the mean minimises it
    g = torch.Generator().manual_seed(0)
    labels = torch.where(torch.rand(500, generator=g) < 0.7, 0.0, 1.0) * torch.exp(
        torch.randn(500, generator=g, dtype=torch.float64)
    )
    mu = torch.tensor(float(labels.mean()), dtype=torch.float64, requires_grad=True)
    dev = losses.outcome_error(mu.expand(500), labels, kind="poisson").mean()
    (grad,) = torch.autograd.grad(dev, mu)
    assert abs(float(grad)) < 1e-9
    with torch.no_grad():
        for off in (0.8, 1.25):
            worse = losses.outcome_error((mu * off).expand(500), labels, kind="poisson").mean()
            assert float(worse) > float(dev)


def test_outcome_error_rejects_an_unknown_kind():
    with pytest.raises(ValueError, match="'mse' or 'poisson'"):
        losses.outcome_error(torch.ones(3), torch.ones(3), kind="huber")  # type: ignore[arg-type]


def test_smoothed_ifd_surrogate_is_bounded_however_large_the_predictions():
    """softmax(a / tau) lies in [0, 1], so |L| <= sum |g| whatever r_hat is; the notebook's
    linear surrogate has no such bound (with the Poisson deviance beside it, training diverged:
    arm-0 revenue 4e5, every other output 0)."""
    t, r, c, p, rev_hat, cost_hat = _tiny(200, 3, seed=4)
    for blow_up in (1.0, 1e3, 1e6):
        big = rev_hat * blow_up
        width = 0.3 * float((big - 0.5 * cost_hat).std())
        g_r, _ = losses.ifd_gradients(big, cost_hat, _batch(t, r, c, p), 0.5, h=width)
        assert g_r.abs().sum() > 0
        smooth = losses.ifd_loss(big, cost_hat, _batch(t, r, c, p), [0.5], h=0.3, tau=1.0)
        assert abs(float(smooth)) <= float(g_r.abs().sum()) + 1e-12
