"""Practitioner baselines (IPW-weighted pooled, DR-learner), AIPW upper level, DR selection."""

from __future__ import annotations

import numpy as np
import pytest
import torch

from training import baselines, bidfcl
from training.bidfcl import teacher_aipw_scores
from training.config import TrainConfig
from training.nets import OutcomeNet
from training.selection import Checkpoints
from training.train import Trainer, prepare, train


def _pooled(tiny_tables, tiny_config, method="tsm-ipw", **changes):  # type: ignore[no-untyped-def]
    rct, obs = tiny_tables
    cfg = tiny_config(method, outcome_loss="poisson", **changes)
    _, tr, val, obs_split = prepare(cfg, rct, obs)
    return Trainer(cfg, tr, val, obs_split, progress=False), tr, obs_split


def test_ipw_weights_use_logged_propensities_clip_and_average_one(tiny_tables, tiny_config):
    run, tr, obs = _pooled(tiny_tables, tiny_config)
    pooled = tr.concat(obs)
    w = baselines.ipw_weights(pooled, run.k, 0)
    assert w.shape == (len(pooled),) and torch.isclose(w.mean(), torch.tensor(1.0))
    raw = (1.0 / (run.k * pooled.propensity)).clamp_max(baselines.WEIGHT_CLIP)
    torch.testing.assert_close(w, raw / raw.mean())  # all propensities logged: used as they are
    rct_w = w[: len(tr)]
    assert torch.allclose(rct_w, rct_w[0].expand_as(rct_w), rtol=0.35)  # ~1/K each: ~equal


def test_unknown_propensities_are_estimated_from_the_features(tiny_tables, tiny_config):
    """A logistic fit of the logged arm recovers the simulator's logging propensity closely."""
    run, _, obs = _pooled(tiny_tables, tiny_config)
    truth = obs.propensity.clone()
    hidden = type(obs)(obs.x, obs.treatment, obs.revenue, obs.cost, torch.full_like(truth, np.nan))
    estimated = baselines.logged_propensity(hidden, run.k, 0)
    assert torch.isfinite(estimated).all() and ((estimated > 0) & (estimated <= 1)).all()
    corr = np.corrcoef(estimated.numpy(), truth.numpy())[0, 1]
    assert corr > 0.6, corr  # the wallet part of the logging is hidden from any estimate


def test_dr_pseudo_outcomes_are_cross_fitted_aipw_scores(tiny_tables, tiny_config):
    run, tr, obs = _pooled(tiny_tables, tiny_config, "tsm-dr")
    pooled = tr.concat(obs)
    gamma_r, gamma_c = baselines.pseudo_outcomes(run, pooled)
    assert gamma_r.shape == (len(pooled), run.k) and torch.isfinite(gamma_r).all()
    # mean of the logged arm's score = mean of mu + residual / p: finite and near the label mean
    rows = torch.arange(len(pooled))
    assert abs(float(gamma_r[rows, pooled.treatment].mean() / pooled.revenue.mean()) - 1) < 1.0
    assert torch.isfinite(gamma_c).all()


@pytest.mark.parametrize("method", ["tsm-ipw", "tsm-dr"])
def test_baselines_train_and_are_selected_like_every_model(tiny_tables, tiny_config, method):
    rct, obs = tiny_tables
    result = train(tiny_config(method), rct, obs, progress=False)
    assert result.card["method"] == method
    assert result.card["validation"]["estimator"] == "dr"
    assert result.card["validation"]["selected_phase"].startswith(method)
    phases = {r["phase"] for r in result.history}
    if method == "tsm-dr":  # two cross-fitted nuisance models, then the second stage
        assert {"dr-nuisance-0-average", "dr-nuisance-1-average"} <= phases


def test_baselines_need_obs(tiny_tables, tiny_config):
    rct, _ = tiny_tables
    with pytest.raises(ValueError, match="needs an OBS table"):
        train(tiny_config("tsm-dr"), rct, None, progress=False)


def test_aipw_scores_add_the_weighted_residual_on_the_logged_arm_only(tiny_tables, tiny_config):
    run, tr, _ = _pooled(tiny_tables, tiny_config, "bi-dfcl")
    teacher = run.outcome_net(tr, 1)
    gamma_r, gamma_c = teacher_aipw_scores(teacher, tr)
    with torch.no_grad():
        mu_r, mu_c = teacher(tr.x)
    rows, t = torch.arange(len(tr)), tr.treatment
    other = (t + 1) % run.k
    torch.testing.assert_close(gamma_r[rows, other], mu_r[rows, other])
    torch.testing.assert_close(
        gamma_r[rows, t], mu_r[rows, t] + (tr.revenue - mu_r[rows, t]) / tr.propensity
    )
    torch.testing.assert_close(
        gamma_c[rows, t], mu_c[rows, t] + (tr.cost - mu_c[rows, t]) / tr.propensity
    )


def test_bidfcl_with_the_aipw_upper_target_trains(tiny_tables, tiny_config):
    rct, obs = tiny_tables
    result = train(tiny_config("bi-dfcl", upper_target="aipw"), rct, obs, progress=False,
                   also_raw=True)  # fmt: skip
    assert result.raw is not None
    assert any(r["phase"] == "bi-dfcl" and np.isfinite(r["upper_loss"]) for r in result.history)
    assert result.raw.card["validation"]["default_phase"] == "bi-dfcl-average"
    assert result.card["validation"]["default_phase"] == "warm-start-average"


def test_ht_and_dr_selection_are_both_available(tiny_tables, tiny_config):
    rct, obs = tiny_tables
    for estimator in ("ht", "dr"):
        result = train(tiny_config("tsm-pooled", val_estimator=estimator), rct, obs,
                       progress=False)  # fmt: skip
        assert result.card["validation"]["estimator"] == estimator


@pytest.mark.parametrize(
    ("changes", "message"),
    [
        ({"val_estimator": "ipw"}, "val_estimator must be one of"),
        ({"upper_target": "dr"}, "upper_target must be one of"),
        ({"upper_target": "aipw", "upper_loss": "pifd"}, "needs upper_loss 'ppl'"),
        ({"upper_target": "aipw", "upper_fold": 0.0}, "upper_fold > 0"),
    ],
)
def test_bad_estimator_settings_are_refused(changes, message):
    with pytest.raises(ValueError, match=message):
        TrainConfig(**changes)


def test_outcome_net_outputs_stay_nonnegative_under_the_all_arms_loss(tiny_tables, tiny_config):
    """The DR-learner regresses pseudo-outcomes that can be negative; predictions stay >= 0."""
    run, tr, _ = _pooled(tiny_tables, tiny_config, "tsm-dr")
    net: OutcomeNet = run.outcome_net(tr, 0)
    targets = (torch.full((len(tr), run.k), -5.0), torch.full((len(tr), run.k), -1.0))
    run.prediction_epochs(net, tr, 2, False, "neg", targets=targets)
    with torch.no_grad():
        rev, cost = net(tr.x)
    assert (rev >= 0).all() and (cost >= 0).all()


def test_ipw_weighted_bidfcl_starts_from_exactly_the_tsm_ipw_model(tiny_tables, tiny_config):
    """obs_weighting="ipw": the warm start is tsm-ipw's recipe on the same rows, so with an
    unreachable bar Bi-DFCL ships the tsm-ipw model bit for bit."""
    rct, obs = tiny_tables
    decision = train(tiny_config("bi-dfcl", obs_weighting="ipw", select_z=1e9), rct, obs,
                     progress=False)  # fmt: skip
    baseline = train(tiny_config("tsm-ipw"), rct, obs, progress=False)
    assert decision.card["validation"]["selected_phase"] == "warm-start-average"
    x = torch.from_numpy(decision.val_features)
    with torch.no_grad():
        for got, want in zip(decision.net(x), baseline.net(x), strict=True):
            torch.testing.assert_close(got, want, rtol=0, atol=0)
    with pytest.raises(ValueError, match="obs_weighting must be one of"):
        TrainConfig(obs_weighting="dr")  # type: ignore[arg-type]


def _weights_seen_by_the_lower_level(monkeypatch):  # type: ignore[no-untyped-def]
    """Record BiLevel instances so a test can read the lower level's OBS row weights."""
    made = []

    class Recording(bidfcl.BiLevel):
        def __init__(self, *args, **kwargs):  # type: ignore[no-untyped-def]
            super().__init__(*args, **kwargs)
            made.append(self)

    monkeypatch.setattr(bidfcl, "BiLevel", Recording)
    return made


def test_auto_obs_weighting_keeps_the_unweighted_warm_start_without_evidence(
    tiny_tables, tiny_config, monkeypatch
):
    """obs_weighting="auto": the IPW recipe trains and is scored, but with an unreachable bar
    the unweighted warm start (tsm-pooled bit for bit) ships and the lower level is unweighted."""
    rct, obs = tiny_tables
    made = _weights_seen_by_the_lower_level(monkeypatch)
    decision = train(tiny_config("bi-dfcl", obs_weighting="auto", select_z=1e9), rct, obs,
                     progress=False)  # fmt: skip
    baseline = train(tiny_config("tsm-pooled"), rct, obs, progress=False)
    phases = [row["phase"] for row in decision.history]
    assert "warm-start-ipw-average" in phases and "warm-start-average" in phases
    assert decision.card["validation"]["selected_phase"] == "warm-start-average"
    assert made and made[0].row_weight is None
    x = torch.from_numpy(decision.val_features)
    with torch.no_grad():
        for got, want in zip(decision.net(x), baseline.net(x), strict=True):
            torch.testing.assert_close(got, want, rtol=0, atol=0)


def test_auto_obs_weighting_switches_the_lower_level_when_ipw_is_chosen(
    tiny_tables, tiny_config, monkeypatch
):
    """When selection prefers the IPW warm start, Bi-DFCL continues from it and weights the
    lower level's OBS rows like tsm-ipw (the choice is forced here; the rule is selection's)."""
    rct, obs = tiny_tables
    made = _weights_seen_by_the_lower_level(monkeypatch)
    choose = Checkpoints.choose

    def prefer_ipw(self, val, z, default, *args, **kwargs):  # type: ignore[no-untyped-def]
        ipw = [c for c in self.candidates if c.scored.row["phase"] == "warm-start-ipw-average"]
        return (ipw[0], 0.0) if ipw else choose(self, val, z, default, *args, **kwargs)

    monkeypatch.setattr(Checkpoints, "choose", prefer_ipw)
    decision = train(tiny_config("bi-dfcl", obs_weighting="auto", select_z=1e9), rct, obs,
                     progress=False)  # fmt: skip
    assert decision.card["validation"]["selected_phase"] == "warm-start-ipw-average"
    assert made and made[0].row_weight is not None
    lower = made[0].obs
    want = baselines.ipw_weights(lower, made[0].net.n_treatments, 0)
    torch.testing.assert_close(made[0].row_weight, want)
