"""Selection: the weight average is the default model; a checkpoint needs paired evidence."""

from __future__ import annotations

import math
from pathlib import Path

import numpy as np
import pandas as pd
import pytest
import torch

from app.core import metrics
from training.data import load_table
from training.nets import OutcomeNet
from training.selection import Candidate, Checkpoints, Scored, averaged_epochs, score
from training.splits import Split
from training.train import Trainer, prepare, resolve_outcome_loss


def _net(fill: float) -> OutcomeNet:
    net = OutcomeNet(2, 2, (3,))
    with torch.no_grad():
        for p in net.parameters():
            p.fill_(fill)
    return net


def _val(n: int = 400) -> Split:
    """Randomized 2-arm rows: arm 1 earns 10 on odd rows, everything else earns 0."""
    t = torch.arange(n) % 2
    odd = (torch.arange(n) // 2) % 2 == 1
    revenue = torch.where((t == 1) & odd, 10.0, 0.0)
    return Split(torch.zeros(n, 2), t, revenue, torch.zeros(n), torch.full((n,), 0.5))


def test_averaged_epochs_is_the_ceiling_share_and_zero_when_off():
    assert [averaged_epochs(40, 0.25), averaged_epochs(3, 0.25), averaged_epochs(4, 0.0)] == [
        10,
        1,
        0,
    ]
    assert averaged_epochs(5, 1.0) == 5


def _scored(phase: str, policies: np.ndarray) -> Scored:
    return Scored({"phase": phase, "val_revenue": 0.0, "val_area": 0.0}, policies)


def test_the_phase_average_is_the_mean_of_the_averaged_weights_only():
    ck = Checkpoints()
    policies = np.zeros((1, 400), np.int64)
    for fill, averaged in ((9.0, False), (1.0, True), (2.0, True), (6.0, True)):
        ck.add(_net(fill), _scored("p", policies), keep=not averaged, average=averaged)
    assert ck.n_averaged == 3 and len(ck.candidates) == 1
    average = ck.close_average(_val(), np.array([1.0]), "p")
    assert average is not None and ck.candidates[-1] is average
    assert average.scored.row["phase"] == "p-average"
    assert average.scored.row["averaged_epochs"] == 3
    for name, value in average.state.items():
        if name.startswith("body.mlp"):  # parameters; buffers are copied, not averaged
            torch.testing.assert_close(value, torch.full_like(value, 3.0))
    assert ck.average is None and ck.close_average(_val(), np.array([1.0]), "q") is None


@pytest.mark.parametrize("z", [0.0, 1.0, 50.0])
def test_a_candidate_replaces_the_default_only_when_its_paired_gain_clears_z(z):
    """The default treats nobody; the other candidate treats the odd rows that earn 10, a
    large and sure gain, so it wins unless z is absurd."""
    val = _val()
    n = len(val)
    odd = ((np.arange(n) // 2) % 2 == 1).astype(np.int64)
    good = Candidate(_scored("good", odd[None, :]), _net(1.0).state_dict())
    default = Candidate(_scored("default", np.zeros((1, n), np.int64)), _net(2.0).state_dict())
    ck = Checkpoints(candidates=[good, default])
    net = _net(0.0)
    info = ck.select(net, val, z, default)
    row = good.scored.row
    assert row["val_gain"] == pytest.approx(5.0)  # HT: a quarter of the rows earn 10 / p = 20
    assert default.scored.row["val_gain"] == 0.0 and default.scored.row["val_gain_se"] == 0.0
    lcb = row["val_gain"] - z * row["val_gain_se"]
    assert info["default_phase"] == "default"
    if lcb > 0:
        assert info["selected_phase"] == "good" and info["selection_score"] == pytest.approx(lcb)
        expected = 1.0
    else:
        assert info["selected_phase"] == "default" and info["selection_score"] == 0.0
        expected = 2.0
    assert all(float(p.detach().flatten()[0]) == expected for p in net.parameters())
    assert (z == 50.0) == (lcb <= 0)


def _table(tmp_path: Path, name: str, revenue: list[float]):
    frame = pd.DataFrame({"x": np.arange(len(revenue), dtype=float), "treatment": [0, 1] * 2,
                          "revenue": revenue, "cost": [0.0, 1.0] * 2})  # fmt: skip
    frame.to_csv(tmp_path / name, index=False)
    return load_table(tmp_path / name, "rct")


def test_outcome_loss_auto_resolves_by_the_sign_of_the_labels(tmp_path, tiny_config):
    spend = _table(tmp_path, "spend.csv", [0.0, 3.0, 0.0, 7.5])
    refunds = _table(tmp_path, "refunds.csv", [0.0, 3.0, -2.5, 7.5])
    cfg = tiny_config("tsm-rct")
    assert resolve_outcome_loss(cfg, [spend]).outcome_loss == "poisson"
    assert resolve_outcome_loss(cfg, [spend, refunds]).outcome_loss == "mse"
    assert resolve_outcome_loss(cfg.replace(outcome_loss="mse"), [spend]).outcome_loss == "mse"
    with pytest.raises(ValueError, match=r"refunds\.csv: column 'revenue' has -2\.5 at row 2"):
        resolve_outcome_loss(cfg.replace(outcome_loss="poisson"), [refunds])
    assert math.isfinite(refunds.revenue.sum())


def test_selection_gain_is_the_metrics_paired_gain_over_the_grid(tiny_tables, tiny_config):
    """The gain selection records is app.core.metrics.paired_gain of the grid policies: the
    mean over the budgets of the per-budget paired HT differences, with its SE."""
    rct, obs = tiny_tables
    cfg = tiny_config("tsm-rct", outcome_loss="poisson")
    _, tr, val, obs_split = prepare(cfg, rct, obs)
    run = Trainer(cfg, tr, val, obs_split, progress=False)
    net = run.outcome_net(tr, 0)
    run.prediction_epochs(net, tr, 2, True, "fit")
    scored = score(net, val, run.val_budgets)
    anchor = np.roll(scored.policies, 1, axis=1)  # some other policies on the same rows
    candidate = Candidate(scored, {})
    default = Candidate(_scored("default", anchor), {})
    Checkpoints(candidates=[candidate, default]).choose(val, 2.0, default)
    logged = val.logged()
    by_budget = [
        metrics.paired_gain(a, b, logged).revenue
        for a, b in zip(scored.policies, anchor, strict=True)
    ]
    paired = metrics.paired_gain(scored.policies, anchor, logged)
    assert scored.row["val_gain"] == paired.revenue == pytest.approx(np.mean(by_budget))
    assert scored.row["val_gain_se"] == paired.revenue_se > 0
    assert (default.scored.row["val_gain"], default.scored.row["val_gain_se"]) == (0.0, 0.0)
