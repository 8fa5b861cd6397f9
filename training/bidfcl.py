"""Bi-DFCL training phase (methods §5.4): bridge pseudo-labels, assumed steps, meta-gradient.

Lower level (every OBS batch): Adam on the target with factual labels + gated pseudo-labels.
Upper level (every k-th batch): k assumed SGD steps give theta'; the decision loss (PPL by
default) on a large RCT batch at the training budget gives g; the bridge moves along
-X^T H^-1 g (implicit, CG) or the gradient through the unrolled steps.

The phase runs on the narrow `training.phases.PhaseRun` interface (the Trainer implements it);
this module does not import training/train.py.
"""

from __future__ import annotations

from collections.abc import Sequence
from dataclasses import dataclass

import numpy as np
import torch
from torch import Tensor
from torch.func import functional_call
from tqdm import tqdm

from training import baselines, bilevel, losses
from training.config import TrainConfig
from training.nets import BridgeNet, OutcomeNet
from training.phases import WEIGHTED_WARM_START, PhaseRun
from training.selection import Candidate, Checkpoints
from training.splits import Split, lam_at_budget


@dataclass(frozen=True)
class UpperInfo:
    """What one bridge update did (for the progress bar and history)."""

    upper_loss: float
    cg_residual: float
    applied: bool
    # cosine between this step's meta-gradient of the bridge and the previous step's (their RCT
    # batches differ): near 0 means the upper-level signal is mostly batch noise
    grad_cosine: float = float("nan")


class BiLevel:
    """Target, bridge and frozen teacher outputs on OBS, with the two levels' losses."""

    def __init__(
        self, cfg: TrainConfig, net: OutcomeNet, bridge: BridgeNet, teacher: OutcomeNet,
        obs: Split, dual_lambdas: Sequence[float] = (),
    ) -> None:  # fmt: skip
        self.cfg, self.net, self.bridge, self.obs = cfg, net, bridge, obs
        self.row_weight: Tensor | None = None  # (N_obs,) IPW weights with obs_weighting "ipw"
        with torch.no_grad():
            self.teacher_rev, self.teacher_cost = teacher(obs.x)  # (N_obs, K), fixed
        self.theta_names = [n for n, _ in net.named_parameters()]
        self.phi_names = [n for n, _ in bridge.named_parameters()]
        self.dual_lambdas = list(dual_lambdas)
        self.bridge_opt = torch.optim.Adam(bridge.parameters(), lr=cfg.bridge_lr)
        self.last_lam: dict[float, float] = {}  # budget -> lambda* of the previous upper step
        self.gate_sums, self.gate_count = torch.zeros(2), 0  # diagnostics: mean gates
        self.last_grad: Tensor | None = None  # previous meta-gradient, flattened

    def predict(self, theta: Sequence[Tensor], x: Tensor) -> tuple[Tensor, Tensor]:
        """Target outputs with the given parameters (B, K) each."""
        return functional_call(self.net, dict(zip(self.theta_names, theta, strict=True)), (x,))

    def lower(self, idx: Tensor) -> bilevel.LowerLoss:
        """L_low(theta, phi) on OBS rows idx; the target's share of labels is a snapshot (§8.2)."""
        x = self.obs.x[idx]
        with torch.no_grad():
            snap_rev, snap_cost = self.net(x)

        def loss(theta: Sequence[Tensor], phi: Sequence[Tensor]) -> Tensor:
            params = dict(zip(self.phi_names, phi, strict=True))
            gates = functional_call(self.bridge, params, (x,))
            return self._loss(idx, self.predict(theta, x), (snap_rev, snap_cost), gates)

        return loss

    def lower_step_loss(self, idx: Tensor) -> Tensor:
        """L_low at the current target and bridge, differentiable in the target only.

        The same value as lower(idx)(theta, phi.detach()) with one forward instead of two: at
        the current theta the snapshot is the prediction itself, detached.
        """
        x = self.obs.x[idx]
        rev_hat, cost_hat = self.net(x)
        with torch.no_grad():
            gates = self.bridge(x)
            self.gate_sums += torch.stack([gates[0].mean(), gates[1].mean()])
            self.gate_count += 1
        snapshot = (rev_hat.detach(), cost_hat.detach())
        return self._loss(idx, (rev_hat, cost_hat), snapshot, gates)

    def gate_means(self) -> tuple[float, float]:
        """Mean teacher share (revenue, cost) of the pseudo-labels since the last call."""
        means = (self.gate_sums / max(self.gate_count, 1)).tolist()
        self.gate_sums, self.gate_count = torch.zeros(2), 0
        return float(means[0]), float(means[1])

    def _loss(self, idx: Tensor, pred: tuple[Tensor, Tensor], snapshot: tuple[Tensor, Tensor],
              gates: tuple[Tensor, Tensor]) -> Tensor:  # fmt: skip
        """Pseudo-labels = gate * teacher + (1 - gate) * snapshot, scored against pred."""
        obs, cfg = self.obs, self.cfg
        t, r, c = obs.treatment[idx], obs.revenue[idx], obs.cost[idx]
        snap_rev, snap_cost = snapshot
        if cfg.bridge_factual:  # the gate may also pull the logged arm toward the teacher
            logged = torch.nn.functional.one_hot(t, snap_rev.shape[1]).bool()
            snap_rev = torch.where(logged, r[:, None], snap_rev)
            snap_cost = torch.where(logged, c[:, None], snap_cost)
        w_rev, w_cost = gates
        rev_cf = w_rev * self.teacher_rev[idx] + (1 - w_rev) * snap_rev
        cost_cf = w_cost * self.teacher_cost[idx] + (1 - w_cost) * snap_cost
        logged_arm = None if cfg.bridge_factual else t  # None: every label is the mix
        weight = None if self.row_weight is None else self.row_weight[idx]
        return losses.lower_level_loss(
            *pred, logged_arm, r, c, rev_cf, cost_cf,
            self.net.revenue_scale, self.net.cost_scale, cfg.outcome_loss, weight,
        )  # fmt: skip

    def upper(
        self, theta: Sequence[Tensor], batch: Split, lams: Sequence[float],
        gamma: tuple[Tensor, Tensor] | None = None,
    ) -> Tensor:  # fmt: skip
        """Decision loss on an RCT batch, mean over budgets' lambda*, in revenue-scale units.

        gamma: the batch's AIPW pseudo-outcomes (B, K) for revenue and cost (upper_target
        "aipw"); the PPL loss then scores every arm instead of the logged one.
        """
        cfg = self.cfg
        rev_hat, cost_hat = self.predict(theta, batch.x)
        args = (rev_hat, cost_hat, batch)
        loss = rev_hat.new_zeros(())
        if gamma is not None:
            for lam in lams:
                loss = loss + losses.aipw_ppl_loss(
                    rev_hat, cost_hat, *gamma, lam, cfg.ppl_tau, cfg.ppl_reward
                )
            loss = loss / len(lams)
        elif cfg.upper_loss in ("ppl", "pifd"):
            for lam in lams:
                if cfg.upper_loss == "ppl":
                    loss = loss + losses.ppl_loss(*args, lam, cfg.ppl_tau, cfg.ppl_reward)
                else:
                    loss = loss + losses.pifd_loss(
                        *args, lam, cfg.ppl_tau, cfg.pifd_h, cfg.ppl_reward
                    )
            loss = loss / len(lams)
        elif cfg.upper_loss == "dpl":
            loss = losses.mer_loss(*args, self.dual_lambdas, cfg.pl_tau)
        else:  # difd: PIFD with the dual reward at each fixed multiplier
            for m in self.dual_lambdas:
                loss = loss + losses.pifd_loss(*args, m, cfg.ppl_tau, cfg.pifd_h, "dual")
        return loss / self.net.revenue_scale

    def lam_star(
        self, theta: Sequence[Tensor], batch: Split, budgets: Sequence[float]
    ) -> list[float]:
        """Mode-E lambda* per budget of predictions at theta on the RCT batch (methods §1, §8.6).

        Warm bracket: lambda* moves little between upper steps, so 2x the previous step's value
        (or the next smaller budget's lambda*) bounds it; 12 halvings of that bracket are as
        precise as 20 of the wide max(r/c) one.
        """
        with torch.no_grad():
            rev_hat, cost_hat = (t.numpy() for t in self.predict(theta, batch.x))
        out: dict[float, float] = {}
        smaller: float | None = None
        for b in sorted(budgets):
            prev = self.last_lam.get(b)
            starts = [v for v in (None if prev is None else 2.0 * prev, smaller) if v]
            hi = min(starts) if starts else None
            lam = lam_at_budget(rev_hat, cost_hat, batch, b, 12 if hi else 20, hi)
            out[b], smaller = lam, lam
        self.last_lam = out
        return [out[b] for b in budgets]

    def upper_step(
        self, idx: Tensor, batch: Split, budgets: Sequence[float],
        gamma: tuple[Tensor, Tensor] | None = None,
    ) -> UpperInfo:  # fmt: skip
        """One bridge update from OBS rows idx and an RCT batch (Alg 1 upper level); gamma:
        the batch's AIPW pseudo-outcomes when the upper target is "aipw"."""
        cfg = self.cfg
        lower = self.lower(idx)
        theta = [p.detach() for p in self.net.parameters()]
        phi = list(self.bridge.parameters())
        theta_k = bilevel.assumed_steps(lower, theta, phi, cfg.assumed_steps, cfg.assumed_lr)
        lam = self.lam_star(theta_k, batch, budgets)
        residual = 0.0
        if cfg.meta_grad == "implicit":
            up = self.upper(theta_k, batch, lam, gamma)
            g = torch.autograd.grad(up, theta_k)
            grads, cg = bilevel.implicit_meta_grad(
                lower, g, theta_k, phi, cfg.n_cg, cfg.cg_damping, cfg.cg_tol
            )
            residual, applied = cg.relative_residual, cg.iterations > 0
        else:
            up = self.upper(theta_k, batch, lam, gamma).detach()
            grads = bilevel.unrolled_meta_grad(
                lower, lambda th: self.upper(th, batch, lam, gamma), theta, phi,
                cfg.assumed_steps, cfg.assumed_lr,
            )  # fmt: skip
            applied = True
        # skip when CG met negative curvature at once (indefinite H) or values are not finite
        applied = applied and all(bool(torch.isfinite(g_).all()) for g_ in grads)
        cosine = float("nan")
        if applied:
            flat = torch.cat([g_.detach().flatten() for g_ in grads])
            if self.last_grad is not None:
                cosine = float(torch.nn.functional.cosine_similarity(flat, self.last_grad, dim=0))
            self.last_grad = flat
            self.bridge_opt.zero_grad()
            for p, g_ in zip(phi, grads, strict=True):
                p.grad = g_.detach()
            self.bridge_opt.step()
        return UpperInfo(up.item(), residual, applied, cosine)


def _folds(rct: Split, cfg: TrainConfig) -> tuple[Split, Split]:
    """(teacher fold, upper fold) of the RCT training split; both are all rows without
    cross-fitting (upper_fold = 0)."""
    share = cfg.upper_fold
    if share == 0:
        return rct, rct
    order = torch.randperm(len(rct), generator=torch.Generator().manual_seed(cfg.seed + 3))
    n_upper = int(round(share * len(rct)))
    if n_upper < 2 or len(rct) - n_upper < 2:
        raise ValueError(f"upper_fold {share}: {len(rct)} RCT training rows are too few to split")
    return rct.subset(order[n_upper:].sort().values), rct.subset(order[:n_upper].sort().values)


def _teacher(run: PhaseRun, warm: OutcomeNet, teacher_rows: Split) -> OutcomeNet:
    """The frozen RCT teacher (methods §5.2), selected like every model (training/selection.py).

    teacher_init="pooled" fine-tunes a copy of the warm-started target on the teacher's RCT rows
    (the paper allows "any uplift model"), and that starting point is the default teacher, so
    fine-tuning on noisy RCT labels is kept only if validation clearly favours it (on the
    simulator it cost 10-15 % of validation revenue when it was the default); "scratch" trains
    the teacher on those rows alone and its weight average is the default.
    """
    cfg = run.cfg
    start = warm if cfg.teacher_init == "pooled" else None
    teacher = run.fine_tuned(start, teacher_rows, cfg.teacher_epochs, "teacher", 1)
    teacher.requires_grad_(False)
    return teacher


def teacher_aipw_scores(teacher: OutcomeNet, rows: Split) -> tuple[Tensor, Tensor]:
    """AIPW pseudo-outcomes (N, K) of the upper fold's rows for revenue and cost, with the
    teacher (which never saw these rows) as the outcome model (methods §5.6)."""
    with torch.no_grad():
        mu_r, mu_c = teacher(rows.x)
    return baselines.aipw_scores(rows, mu_r, mu_c, rows.propensity)


def train_bidfcl(
    run: PhaseRun, train: Split, obs: Split, budgets: Sequence[float], checkpoints: Checkpoints
) -> tuple[OutcomeNet, Candidate]:
    """Warm start, teacher, then the bi-level phase; returns the target and its warm start.

    train: the RCT training split; obs: the OBS rows; budgets: the upper level's per-capita
    training budgets. The warm start is the pooled prediction model (factual OBS + RCT rows,
    methods §8.11), averaged like every phase; the bi-level phase continues from it and its
    epochs are the candidates.
    """
    cfg = run.cfg
    teacher_rows, rct = _folds(train, cfg)  # rct: the upper level's rows
    aipw = cfg.upper_target == "aipw"  # then nothing before the upper level sees its rows
    pooled = (teacher_rows if aipw else train).concat(obs)
    net = run.outcome_net(pooled, 0)
    k = net.n_treatments
    weights = baselines.ipw_weights(pooled, k, cfg.seed) if cfg.obs_weighting != "none" else None
    if cfg.obs_weighting == "auto":  # the weighted recipe competes; selection decides
        warm = run.warm_start(net, pooled, False, checkpoints, alternative=weights)
        ipw = warm.scored.row["phase"].startswith(WEIGHTED_WARM_START)
    else:
        ipw = weights is not None  # obs_weighting "ipw"
        warm = run.warm_start(net, pooled, weights if weights is not None else False, checkpoints)
    teacher = _teacher(run, net, teacher_rows)
    gamma = teacher_aipw_scores(teacher, rct) if aipw else None
    # lower level: OBS as in the paper, or OBS plus the teacher fold's factual rows (§8.10)
    lower = obs if cfg.lower_data == "obs" else teacher_rows.concat(obs)
    with torch.random.fork_rng():
        torch.manual_seed(cfg.seed + 2)
        bridge = BridgeNet(lower.x.shape[1], net.n_treatments, tuple(cfg.hidden))
    bridge.fit_scales(lower.x)
    bridge.set_gate(cfg.gate_init)  # initial teacher share of every pseudo-label
    dual = run.dual_lambdas(net) if cfg.upper_loss in ("dpl", "difd") else []
    bi = BiLevel(cfg, net, bridge, teacher, lower, dual)
    if ipw:
        bi.row_weight = baselines.ipw_weights(lower, k, cfg.seed)
    opt = run.optimizer(net, cfg.lr)
    bar = tqdm(range(cfg.epochs), desc="bi-dfcl", disable=not run.progress)
    step = 0
    for epoch in bar:
        lows: list[float] = []
        infos: list[UpperInfo] = []
        for idx in run.batches(len(lower)):
            if step % cfg.upper_every == 0:
                rows = torch.randperm(len(rct), generator=run.gen)[: cfg.rct_upper_batch]
                batch_gamma = None if gamma is None else (gamma[0][rows], gamma[1][rows])
                infos.append(bi.upper_step(idx, rct.subset(rows), budgets, batch_gamma))
            loss = bi.lower_step_loss(idx)
            opt.zero_grad()
            loss.backward()
            opt.step()
            lows.append(loss.item())
            step += 1
        logs = {
            "lower_loss": float(np.mean(lows)),
            "upper_loss": float(np.mean([i.upper_loss for i in infos])) if infos else np.nan,
            "cg_residual": float(np.mean([i.cg_residual for i in infos])) if infos else np.nan,
            "upper_skipped": float(sum(not i.applied for i in infos)),
            "grad_cosine": float(np.nanmean([i.grad_cosine for i in infos]))
            if any(np.isfinite(i.grad_cosine) for i in infos)
            else np.nan,
        }
        logs["gate_revenue"], logs["gate_cost"] = bi.gate_means()
        val = run.epoch_end(net, "bi-dfcl", logs, checkpoints, epoch, cfg.epochs)
        bar.set_postfix(low=f"{logs['lower_loss']:.3f}", up=f"{logs['upper_loss']:.4f}",
                        val_rev=f"{val:.4f}")  # fmt: skip
    return net, warm
