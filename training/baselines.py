"""Two-stage baselines a practitioner would try on confounded logs before anything bi-level.

- `tsm-ipw`: the pooled prediction model with every row weighted by a stabilised inverse
  propensity 1 / (K p(T | x)), so that, in expectation, the weighted OBS rows look randomized.
  The logged propensity is used where the table has one, an estimated one (multinomial logistic
  regression of the logged arm on the features) elsewhere. Weights are clipped at
  `WEIGHT_CLIP` and normalised to mean 1: the usual bias-for-variance trade of IPW.
- `tsm-dr`: a DR-learner (Kennedy 2023; the policy-learning form of Athey & Wager 2021). A
  pooled outcome model mu is cross-fitted on two folds; every row then gets an AIPW
  pseudo-outcome for every arm, mu(x, t) + 1[T = t] / p (y - mu(x, T)), for revenue and cost,
  and a second network regresses those on the features. Propensities are floored at
  `PROPENSITY_FLOOR` inside the pseudo-outcomes (trimming) so a few rare arms do not dominate.

Both return (net, default candidate) like the other recipes and are selected like every model.
"""

from __future__ import annotations

from typing import TYPE_CHECKING

import torch
from torch import Tensor

from app.core import metrics
from training.selection import Candidate, Checkpoints
from training.splits import Split

if TYPE_CHECKING:  # the Trainer imports this module
    from training.nets import OutcomeNet
    from training.train import Trainer

WEIGHT_CLIP = 10.0  # largest stabilised IPW weight before normalisation
PROPENSITY_FLOOR = 0.05  # smallest propensity inside DR pseudo-outcomes
_LOGIT_ITERATIONS = 100


def estimate_propensity(x: Tensor, treatment: Tensor, k: int, seed: int) -> Tensor:
    """P(T = t | x) (N, K) by multinomial logistic regression (full-batch L-BFGS, tiny L2)."""
    mean, std = x.mean(dim=0), x.std(dim=0).clamp_min(1e-8)
    z = (x - mean) / std
    with torch.random.fork_rng():
        torch.manual_seed(seed)
        model = torch.nn.Linear(x.shape[1], k)
    opt = torch.optim.LBFGS(
        model.parameters(), max_iter=_LOGIT_ITERATIONS, line_search_fn="strong_wolfe"
    )

    def closure() -> Tensor:
        opt.zero_grad()
        loss = torch.nn.functional.cross_entropy(model(z), treatment)
        loss = loss + 1e-4 * model.weight.pow(2).sum()
        loss.backward()
        return loss

    opt.step(closure)
    with torch.no_grad():
        return torch.softmax(model(z), dim=1)


def logged_propensity(data: Split, k: int, seed: int) -> Tensor:
    """Each row's probability of its logged arm (N,): the table's, else estimated."""
    p = data.propensity.clone()
    unknown = ~torch.isfinite(p)
    if bool(unknown.any()):
        probs = estimate_propensity(data.x, data.treatment, k, seed)
        p[unknown] = probs[unknown, data.treatment[unknown]]
    return p.clamp(1e-6, 1.0)


def ipw_weights(data: Split, k: int, seed: int) -> Tensor:
    """Stabilised inverse-propensity weights (N,): 1 / (K p), clipped, mean 1."""
    w = (1.0 / (k * logged_propensity(data, k, seed))).clamp_max(WEIGHT_CLIP)
    return w / w.mean()


def train_ipw(
    run: Trainer, pooled: Split, checkpoints: Checkpoints
) -> tuple[OutcomeNet, Candidate]:
    """The pooled two-stage recipe with inverse-propensity row weights."""
    net = run.outcome_net(pooled, 0)
    weight = ipw_weights(pooled, run.k, run.cfg.seed)
    default = run.two_stage(net, pooled, weight, "tsm-ipw", checkpoints)
    return net, default


def _fold_model(run: Trainer, fold: Split, seed_offset: int, phase: str) -> OutcomeNet:
    """A pooled outcome model on one fold: one pass per epoch, its weight average, no selection
    (a nuisance model; the selection that matters is the final model's)."""
    net = run.outcome_net(fold, seed_offset)
    kept = Checkpoints()
    run.prediction_epochs(net, fold, run.cfg.prediction_epochs, False, phase, kept, steps=0)
    average = run.close_phase(net, kept, phase)
    net.load_state_dict(average.state)
    return net


def aipw_scores(
    rows: Split, mu_revenue: Tensor, mu_cost: Tensor, propensity: Tensor
) -> tuple[Tensor, Tensor]:
    """AIPW pseudo-outcomes (N, K) of `rows` for revenue and cost, given an outcome model's
    (N, K) predictions that were not fit on these rows.

    The formula lives once, in the core (`app.core.metrics.Logged.scores`, which validation
    and champion/challenger read); training calls it rather than restating it in torch.
    """
    logged = metrics.Logged.of(
        rows.treatment.numpy(), rows.revenue.numpy(), rows.cost.numpy(), propensity.numpy()
    ).with_baseline(mu_revenue.detach().numpy(), mu_cost.detach().numpy())
    gamma_r, gamma_c = logged.scores()
    return torch.from_numpy(gamma_r).float(), torch.from_numpy(gamma_c).float()


def pseudo_outcomes(run: Trainer, pooled: Split) -> tuple[Tensor, Tensor]:
    """Cross-fitted AIPW pseudo-outcomes (N, K) for revenue and cost (two folds)."""
    n = len(pooled)
    order = torch.randperm(n, generator=torch.Generator().manual_seed(run.cfg.seed + 5))
    folds = (order[: n // 2].sort().values, order[n // 2 :].sort().values)
    p = logged_propensity(pooled, run.k, run.cfg.seed).clamp_min(PROPENSITY_FLOOR)
    mu_r = torch.empty(n, run.k)
    mu_c = torch.empty(n, run.k)
    for i, (fit_rows, score_rows) in enumerate((folds, folds[::-1])):
        mu = _fold_model(run, pooled.subset(fit_rows), 10 + i, f"dr-nuisance-{i}")
        with torch.no_grad():
            mu_r[score_rows], mu_c[score_rows] = mu(pooled.x[score_rows])
    return aipw_scores(pooled, mu_r, mu_c, p)


def train_dr_learner(
    run: Trainer, pooled: Split, checkpoints: Checkpoints
) -> tuple[OutcomeNet, Candidate]:
    """DR-learner: regress cross-fitted AIPW pseudo-outcomes of every arm on the features."""
    targets = pseudo_outcomes(run, pooled)
    net = run.outcome_net(pooled, 0)
    epochs = run.cfg.prediction_epochs
    run.prediction_epochs(net, pooled, epochs, False, "tsm-dr", checkpoints, targets=targets)
    default = run.close_phase(net, checkpoints, "tsm-dr")
    return net, default
