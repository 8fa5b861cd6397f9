"""Bi-DFCL (training/bidfcl.py): the two levels, the bridge update, folds and the teacher."""

from __future__ import annotations

import numpy as np
import pytest
import torch

from app.core.solver import dual_choice
from training import bilevel
from training.bidfcl import BiLevel, _folds, _teacher
from training.nets import BridgeNet
from training.train import Trainer, prepare


def _bilevel(tiny_tables, tiny_config, **changes):
    rct, obs = tiny_tables
    cfg = tiny_config("bi-dfcl", **{"outcome_loss": "poisson", **changes})
    _, tr, val, obs_split = prepare(cfg, rct, obs)
    run = Trainer(cfg, tr, val, obs_split, progress=False)
    teacher = run.outcome_net(tr, 1)
    run.prediction_epochs(teacher, tr, 3, True, "teacher")
    net = run.outcome_net(obs_split, 0)
    run.prediction_epochs(net, tr.concat(obs_split), 3, False, "warm-start")
    bridge = BridgeNet(tr.x.shape[1], 3, cfg.hidden)
    bridge.fit_scales(obs_split.x)
    return BiLevel(cfg, net, bridge, teacher, obs_split), run


def test_lower_level_steps_reduce_the_lower_loss(tiny_tables, tiny_config):
    bi, _ = _bilevel(tiny_tables, tiny_config)
    lower = bi.lower(torch.arange(512))
    phi = [p.detach() for p in bi.bridge.parameters()]
    opt = torch.optim.Adam(bi.net.parameters(), lr=3e-3)
    before = lower(list(bi.net.parameters()), phi).item()
    for _ in range(20):
        loss = lower(list(bi.net.parameters()), phi)
        opt.zero_grad()
        loss.backward()
        opt.step()
    assert lower(list(bi.net.parameters()), phi).item() < before


@pytest.mark.parametrize("bridge_factual", [True, False])
def test_lower_step_loss_is_the_lower_level_loss_at_the_current_parameters(
    tiny_tables, tiny_config, bridge_factual
):
    """The training loop's one-forward lower step has the value and theta-gradient of L_low."""
    bi, _ = _bilevel(tiny_tables, tiny_config, bridge_factual=bridge_factual)
    bi.bridge.set_gate(0.3)
    idx = torch.arange(7, 300)
    theta = list(bi.net.parameters())
    reference = bi.lower(idx)(theta, [p.detach() for p in bi.bridge.parameters()])
    ref_grad = torch.autograd.grad(reference, theta)
    fast = bi.lower_step_loss(idx)
    fast_grad = torch.autograd.grad(fast, theta)
    torch.testing.assert_close(fast, reference, rtol=1e-6, atol=0)
    for a, b in zip(fast_grad, ref_grad, strict=True):
        torch.testing.assert_close(a, b, rtol=1e-5, atol=1e-7)


def test_bridge_update_lowers_the_upper_objective_at_the_assumed_optimum(tiny_tables, tiny_config):
    """L_up(theta'(phi)) falls after implicit meta-gradient steps on phi (theta fixed)."""
    bi, run = _bilevel(tiny_tables, tiny_config, assumed_lr=0.005, n_cg=20, bridge_lr=0.05)
    idx = torch.arange(256)
    batch = run.train

    def objective() -> float:
        theta = [p.detach() for p in bi.net.parameters()]
        lower = bi.lower(idx)
        moved = bilevel.assumed_steps(
            lower, theta, list(bi.bridge.parameters()), bi.cfg.assumed_steps, bi.cfg.assumed_lr
        )
        return bi.upper(moved, batch, lam).item()

    lam = bi.lam_star([p.detach() for p in bi.net.parameters()], batch, run.budgets)
    before = objective()
    for _ in range(5):
        info = bi.upper_step(idx, batch, run.budgets)
        assert np.isfinite(info.upper_loss)
    assert objective() < before


def test_warm_started_lambda_meets_the_budget_like_a_cold_bisection(tiny_tables, tiny_config):
    """The upper level's warm bracket (previous step's lambda*) keeps mode-E spend on budget."""
    bi, run = _bilevel(tiny_tables, tiny_config)
    theta = [p.detach() for p in bi.net.parameters()]
    cold = bi.lam_star(theta, run.train, run.budgets)
    assert bi.last_lam  # the next call starts from these
    warm = bi.lam_star(theta, run.train, run.budgets)
    logged = run.train.logged()
    t, c, p = logged.treatment, logged.cost, logged.propensity
    with torch.no_grad():
        rev, cost = (v.numpy().astype(np.float64) for v in bi.net(run.train.x))
    for b, lam_c, lam_w in zip(run.budgets, cold, warm, strict=True):
        spend = [np.mean((t == dual_choice(rev, cost, lam)) * c / p) for lam in (lam_c, lam_w)]
        assert spend[1] <= b + 1e-9
        assert spend[1] == pytest.approx(spend[0], rel=0.02, abs=1e-3)


def test_implicit_and_unrolled_bridge_gradients_point_the_same_way(tiny_tables, tiny_config):
    bi, run = _bilevel(tiny_tables, tiny_config, n_cg=30, cg_damping=0.1)
    idx = torch.arange(256)
    lower = bi.lower(idx)
    theta = [p.detach() for p in bi.net.parameters()]
    phi = list(bi.bridge.parameters())
    lam = bi.lam_star(theta, run.train, run.budgets)
    steps = bilevel.assumed_steps(lower, theta, phi, 5, 0.005)
    g = torch.autograd.grad(bi.upper(steps, run.train, lam), steps)
    implicit, _ = bilevel.implicit_meta_grad(lower, g, steps, phi, 30, 0.1)
    unrolled = bilevel.unrolled_meta_grad(lower, lambda th: bi.upper(th, run.train, lam),
                                          theta, phi, 5, 0.005)  # fmt: skip
    a, b = bilevel.flatten(implicit), bilevel.flatten(unrolled)
    assert float(a @ b / (a.norm() * b.norm())) > 0.5


def test_cross_fitting_keeps_the_upper_fold_away_from_the_teacher(tiny_tables, tiny_config):
    """upper_fold splits the RCT training rows into disjoint teacher and upper-level folds."""
    rct, obs = tiny_tables
    cfg = tiny_config("bi-dfcl", upper_fold=0.4, outcome_loss="poisson")
    _, tr, _, _ = prepare(cfg, rct, obs)
    teacher_rows, upper_rows = _folds(tr, cfg)
    assert len(upper_rows) == round(0.4 * len(tr)) and len(teacher_rows) + len(upper_rows) == len(
        tr
    )
    rows = {
        tuple(r) for r in torch.cat([teacher_rows.x, teacher_rows.revenue[:, None]], 1).tolist()
    }
    overlap = [r for r in torch.cat([upper_rows.x, upper_rows.revenue[:, None]], 1).tolist()
               if tuple(r) in rows]  # fmt: skip
    assert not overlap
    same = _folds(tr, cfg.replace(upper_fold=0.0))
    assert same[0] is tr and same[1] is tr  # the papers' setting: every level sees every row


@pytest.mark.parametrize("select_z", [1e9, 0.0])
def test_the_pooled_teacher_is_the_warm_start_unless_fine_tuning_proves_itself(
    tiny_tables, tiny_config, select_z
):
    """teacher_init="pooled": the warm model is the default teacher; the RCT fine-tune replaces
    it only past the select_z bar (and with no bar, whichever the validation favours)."""
    rct, obs = tiny_tables
    cfg = tiny_config("bi-dfcl", outcome_loss="poisson", select_z=select_z)
    _, tr, val, obs_split = prepare(cfg, rct, obs)
    run = Trainer(cfg, tr, val, obs_split, progress=False)
    warm = run.outcome_net(tr.concat(obs_split), 0)
    run.prediction_epochs(warm, tr.concat(obs_split), 2, False, "warm-start")
    before = [p.detach().clone() for p in warm.parameters()]
    teacher = _teacher(run, warm, tr)
    assert all(torch.equal(a, b) for a, b in zip(before, warm.parameters(), strict=True))
    same = all(
        torch.equal(a, b) for a, b in zip(warm.parameters(), teacher.parameters(), strict=True)
    )
    start = next(r for r in run.history if r["phase"] == "teacher-start")
    tuned = [r for r in run.history if r["phase"].startswith("teacher") and r is not start]
    assert all(not p.requires_grad for p in teacher.parameters())
    if select_z == 1e9:
        assert same
    else:  # no bar: a fine-tuned candidate is the teacher exactly when validation favours it
        assert same == (max(r["val_gain"] for r in tuned) <= 0)
