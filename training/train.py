"""One training loop for every method: config -> seed -> data -> nets -> loop -> select -> save.

Two-stage (tsm-*): prediction loss only. DFCL (dfcl-*): warm start on the RCT prediction loss,
then dual decision loss + alpha * prediction loss on RCT. Bi-DFCL: teacher on RCT, warm start on
pooled factual data, then OBS lower level with bridge pseudo-labels and an RCT upper level every
k-th batch (methods §5.4). Every method's model is the weight average of its final epochs;
a checkpoint replaces it only on clear paired validation evidence (mode-E EOM over the budget
grid on a held-out RCT split; training/selection.py says why).
"""

from __future__ import annotations

import copy
import hashlib
import time
from collections.abc import Callable, Iterator, Sequence
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import numpy as np
import torch
from torch import Tensor
from tqdm import tqdm

from app.core.features import FeatureSpec
from training import baselines, losses
from training.bidfcl import train_bidfcl
from training.config import DFCL, TWO_STAGE, TrainConfig
from training.data import Table, encode_table
from training.nets import OutcomeNet
from training.phases import WEIGHTED_WARM_START
from training.selection import Candidate, Checkpoints, Scored, averaged_epochs, score
from training.splits import Split, budget_grid, budget_range, lam_at_budget


@dataclass
class TrainResult:
    """The selected target network and everything model.json needs."""

    net: OutcomeNet
    spec: FeatureSpec
    card: dict[str, Any]  # model card: method, feature_spec, training_data, validation, config
    val_features: np.ndarray
    config: TrainConfig  # as trained: outcome_loss resolved
    history: list[dict[str, Any]] = field(default_factory=list)
    seconds: float = 0.0
    raw: TrainResult | None = None  # train(also_raw=True): the keep_warm_start=False selection


def _split(table: Table, x: np.ndarray, rows: np.ndarray | None = None) -> Split:
    """Tensors of one table (optionally a subset of rows)."""
    idx = np.arange(table.n_rows) if rows is None else rows
    return Split(
        x=torch.from_numpy(np.ascontiguousarray(x[idx], dtype=np.float32)),
        treatment=torch.from_numpy(table.treatment[idx]),
        revenue=torch.from_numpy(table.revenue[idx].astype(np.float32)),
        cost=torch.from_numpy(table.cost[idx].astype(np.float32)),
        propensity=torch.from_numpy(table.propensity[idx].astype(np.float32)),
    )


def _fingerprint(table: Table) -> dict[str, Any]:
    """Path, row count and SHA-256 of a training file (model.json provenance)."""
    digest = hashlib.sha256(Path(table.path).read_bytes()).hexdigest()
    return {"path": str(table.path), "rows": table.n_rows, "sha256": digest}


def _batches(n: int, size: int, steps: int, gen: torch.Generator) -> Iterator[Tensor]:
    """Shuffled index batches of one epoch: one pass (steps=0) or `steps` batches over passes.

    A fixed number of steps gives small-RCT methods as many updates as OBS methods get.
    """
    size = min(size, n)
    total = steps if steps > 0 else -(-n // size)
    done = 0
    while done < total:
        order = torch.randperm(n, generator=gen)
        for start in range(0, n - 1, size):
            idx = order[start : start + size]
            if len(idx) < 2:
                continue
            yield idx
            done += 1
            if done == total:
                return


def _new_net(cls: Callable[..., Any], cfg: TrainConfig, n_features: int, k: int, seed: int) -> Any:
    """Build a network with its own seeded initialisation (global RNG left untouched)."""
    with torch.random.fork_rng():
        torch.manual_seed(seed)
        return cls(n_features, k, tuple(cfg.hidden))


class Trainer:
    """State shared by the phases of one training run (implements training.phases.PhaseRun)."""

    def __init__(
        self, cfg: TrainConfig, train: Split, val: Split, obs: Split | None,
        *, progress: bool = True,
    ) -> None:  # fmt: skip
        self.cfg, self.train, self.val, self.obs = cfg, train, val, obs
        self.progress = progress
        self.k = int(max(train.treatment.max(), val.treatment.max())) + 1
        self.gen = torch.Generator().manual_seed(cfg.seed)
        lo, hi = budget_range(train, self.k)
        self.budgets = (
            [cfg.train_budget]
            if cfg.train_budget is not None
            else [lo + q * (hi - lo) for q in cfg.train_budget_quantiles]
        )
        self.val_budgets = budget_grid(val, self.k, cfg.n_budgets)
        self.history: list[dict[str, Any]] = []
        if cfg.outcome_loss not in ("mse", "poisson"):
            raise ValueError(f"outcome_loss {cfg.outcome_loss!r}: resolve it (train() does)")

    def batches(self, n: int, steps: int | None = None) -> Iterator[Tensor]:
        """Batches of one epoch: cfg.steps_per_epoch of them unless `steps` says (0: a pass)."""
        steps = self.cfg.steps_per_epoch if steps is None else steps
        return _batches(n, self.cfg.batch_size, steps, self.gen)

    def outcome_net(self, data: Split, seed_offset: int) -> OutcomeNet:
        net = _new_net(OutcomeNet, self.cfg, data.x.shape[1], self.k, self.cfg.seed + seed_offset)
        net.fit_scales(data.x, data.revenue, data.cost)
        return net

    def optimizer(self, net: torch.nn.Module, lr: float) -> torch.optim.Optimizer:
        return torch.optim.Adam(net.parameters(), lr=lr, weight_decay=self.cfg.weight_decay)

    def evaluate(self, net: OutcomeNet, phase: str, logs: dict[str, float]) -> Scored:
        """Validation EOM curve of net (mode E, revenue units), recorded as a history row."""
        scored = score(net, self.val, self.val_budgets)
        scored.row.update({"phase": phase, **logs})
        self.history.append(scored.row)
        return scored

    def epoch_end(
        self, net: OutcomeNet, phase: str, logs: dict[str, float],
        checkpoints: Checkpoints | None, epoch: int, epochs: int,
    ) -> float:  # fmt: skip
        """Evaluate after an epoch; keep it as a candidate and fold the phase's final epochs
        into its average; returns the validation mean revenue for the progress bar."""
        scored = self.evaluate(net, phase, logs)
        if checkpoints is not None:
            first_averaged = epochs - averaged_epochs(epochs, self.cfg.average_fraction)
            checkpoints.add(net, scored, keep=True, average=epoch >= first_averaged)
        return float(scored.row["val_revenue"])

    def close_phase(self, net: OutcomeNet, checkpoints: Checkpoints, phase: str) -> Candidate:
        """The phase's model as a candidate: its weight average, or net as it is when nothing
        was averaged (average_fraction = 0). Its validation row goes into the history."""
        candidate = checkpoints.close_average(self.val, self.val_budgets, phase)
        if candidate is None:
            scored = self.evaluate(net, f"{phase}-end", {})
            candidate = Candidate(scored, copy.deepcopy(net.state_dict()))
            checkpoints.candidates.append(candidate)
        else:
            self.history.append(candidate.scored.row)
        return candidate

    def two_stage(
        self, net: OutcomeNet, data: Split, weighted: bool | Tensor, phase: str,
        checkpoints: Checkpoints,
    ) -> Candidate:  # fmt: skip
        """The two-stage recipe: prediction_epochs of prediction loss, every epoch a candidate;
        returns the weight average, which is the default of the selection that follows."""
        epochs = self.cfg.prediction_epochs
        self.prediction_epochs(net, data, epochs, weighted, phase, checkpoints)
        return self.close_phase(net, checkpoints, phase)

    def warm_start(
        self, net: OutcomeNet, data: Split, weighted: bool | Tensor, checkpoints: Checkpoints,
        alternative: Tensor | None = None,
    ) -> Candidate:  # fmt: skip
        """Warm start (§4.5, §8.11) = the two-stage model on the same data, selection included;
        net continues from it and it joins `checkpoints` as the one warm-start candidate.

        So a decision-focused method competes with exactly the model its two-stage counterpart
        ships (tsm-rct for DFCL, tsm-pooled for Bi-DFCL), not with that recipe's every epoch.
        alternative (N,): row weights of a second recipe from the same initial weights (phase
        `WEIGHTED_WARM_START`); its epochs join the selection, whose default stays the first
        recipe's average, so it replaces that only on paired validation evidence.
        """
        recipe = Checkpoints()
        # the second recipe's net is copied before training: the same initial weights
        second = None if alternative is None else (copy.deepcopy(net), alternative)
        average = self.two_stage(net, data, weighted, "warm-start", recipe)
        if second is not None:
            self.two_stage(second[0], data, second[1], WEIGHTED_WARM_START, recipe)
        warm, _ = recipe.choose(
            self.val, self.cfg.select_z, average, self.cfg.val_estimator, self.val_budgets
        )
        net.load_state_dict(warm.state)
        checkpoints.candidates.append(warm)
        return warm

    def fine_tuned(
        self, start: OutcomeNet | None, data: Split, epochs: int, phase: str, seed_offset: int
    ) -> OutcomeNet:
        """An arm-balanced prediction model on data, selected like every model.

        From a copy of `start` (start itself is untouched), which is then the default model
        (row '<phase>-start'): fine-tuning replaces it only on clear validation evidence.
        Without a start, a fresh network (seed_offset) whose weight average is the default.
        """
        candidates = Checkpoints()
        default: Candidate | None = None
        if start is not None:
            net = copy.deepcopy(start)
            scored = self.evaluate(net, f"{phase}-start", {})
            default = Candidate(scored, copy.deepcopy(start.state_dict()))
            candidates.candidates.append(default)
        else:
            net = self.outcome_net(data, seed_offset)
        self.prediction_epochs(net, data, epochs, True, phase, candidates)
        average = self.close_phase(net, candidates, phase)
        self.select(net, candidates, default if default is not None else average)
        return net

    def select(
        self, net: OutcomeNet, checkpoints: Checkpoints, default: Candidate
    ) -> dict[str, Any]:
        """Load the selected weights (training/selection.py) into net; returns what was chosen."""
        return checkpoints.select(
            net, self.val, self.cfg.select_z, default, self.cfg.val_estimator, self.val_budgets
        )

    def prediction_epochs(
        self, net: OutcomeNet, data: Split, epochs: int, weighted: bool | Tensor, phase: str,
        checkpoints: Checkpoints | None = None, *, targets: tuple[Tensor, Tensor] | None = None,
        steps: int | None = None,
    ) -> None:  # fmt: skip
        """Factual prediction loss; weighted=True is the arm-balanced RCT loss (methods §2), a
        tensor (N,) gives every row its own weight (inverse propensity weighting).

        targets: (N, K) revenue and cost labels for EVERY arm (DR-learner pseudo-outcomes),
        fit by squared error instead of the factual loss. steps: batches per epoch (see
        `batches`). With checkpoints, every epoch is a candidate and the final ones are averaged.
        """
        opt = self.optimizer(net, self.cfg.lr)
        if isinstance(weighted, Tensor):
            weight: Tensor | None = weighted
        else:
            weight = losses.frequency_weights(data.treatment, self.k) if weighted else None
        bar = tqdm(range(epochs), desc=phase, disable=not self.progress)
        for epoch in bar:
            total, count = 0.0, 0
            for idx in self.batches(len(data), steps):
                rev_hat, cost_hat = net(data.x[idx])
                if targets is not None:
                    loss = losses.all_arms_loss(
                        rev_hat, cost_hat, targets[0][idx], targets[1][idx],
                        net.revenue_scale, net.cost_scale,
                    )  # fmt: skip
                else:
                    loss = losses.prediction_loss(
                        rev_hat, cost_hat, data.treatment[idx], data.revenue[idx],
                        data.cost[idx], None if weight is None else weight[idx],
                        net.revenue_scale, net.cost_scale, self.cfg.outcome_loss,
                    )  # fmt: skip
                opt.zero_grad()
                loss.backward()
                opt.step()
                total, count = total + loss.item(), count + 1
            logs = {"pred_loss": total / count}
            val = self.epoch_end(net, phase, logs, checkpoints, epoch, epochs)
            bar.set_postfix(pred=f"{total / count:.4f}", val_rev=f"{val:.4f}")

    def decision_loss(
        self, net: OutcomeNet, rev_hat: Tensor, cost_hat: Tensor, batch: Split,
        lambdas: Sequence[float],
    ) -> Tensor:  # fmt: skip
        """DFCL dual decision loss of the configured method on a batch, in revenue-scale units."""
        cfg = self.cfg
        if cfg.method == "dfcl-ifd":
            tau = cfg.pl_tau if cfg.ifd_surrogate == "softmax" else None
            dl = losses.ifd_loss(
                rev_hat, cost_hat, batch, lambdas, cfg.ifd_h, cfg.ifd_cost_grad, tau
            )
        else:
            tau = cfg.pl_tau if cfg.method == "dfcl-pl" else cfg.mer_tau
            dl = losses.mer_loss(rev_hat, cost_hat, batch, lambdas, tau)
        return dl / net.revenue_scale

    def dual_lambdas(self, net: OutcomeNet) -> list[float]:
        """Configured multipliers, else lambda* at 25/50/75% of the budget range (methods §4.2)."""
        if self.cfg.dual_lambdas is not None:
            return list(self.cfg.dual_lambdas)
        lo, hi = budget_range(self.train, self.k)
        with torch.no_grad():
            rev_hat, cost_hat = net(self.train.x)
        return [
            lam_at_budget(rev_hat.numpy(), cost_hat.numpy(), self.train, lo + q * (hi - lo))
            for q in (0.25, 0.5, 0.75)
        ]

    def dfcl_epochs(self, net: OutcomeNet, checkpoints: Checkpoints) -> None:
        """L_DL + alpha * L_PL on the RCT training split (methods §4.1)."""
        cfg, data = self.cfg, self.train
        lambdas = self.dual_lambdas(net)
        opt = self.optimizer(net, cfg.lr)
        weight = losses.frequency_weights(data.treatment, self.k)
        bar = tqdm(range(cfg.epochs), desc=cfg.method, disable=not self.progress)
        for epoch in bar:
            sums, count = np.zeros(2), 0
            for idx in self.batches(len(data)):
                batch = data.subset(idx)
                rev_hat, cost_hat = net(batch.x)
                dl = self.decision_loss(net, rev_hat, cost_hat, batch, lambdas)
                pl = losses.prediction_loss(
                    rev_hat, cost_hat, batch.treatment, batch.revenue, batch.cost,
                    weight[idx], net.revenue_scale, net.cost_scale, cfg.outcome_loss,
                )  # fmt: skip
                opt.zero_grad()
                (dl + cfg.alpha * pl).backward()
                opt.step()
                sums += (dl.item(), pl.item())
                count += 1
            logs = {"decision_loss": sums[0] / count, "pred_loss": sums[1] / count}
            val = self.epoch_end(net, cfg.method, logs, checkpoints, epoch, cfg.epochs)
            bar.set_postfix(dl=f"{logs['decision_loss']:.4f}", val_rev=f"{val:.4f}")


def prepare(
    cfg: TrainConfig, rct: Table, obs: Table | None
) -> tuple[FeatureSpec, Split, Split, Split | None]:
    """Fit the feature spec on the training tables; split RCT into train/validation."""
    if cfg.method not in ("tsm-rct", *DFCL) and obs is None:
        raise ValueError(f"method {cfg.method} needs an OBS table")
    if obs is not None and obs.n_treatments != rct.n_treatments:
        raise ValueError(
            f"{obs.path}: {obs.n_treatments} treatments but RCT has {rct.n_treatments}"
        )
    frames = [rct.features] + ([obs.features] if obs is not None else [])
    columns = {c: np.concatenate([f[c].to_numpy() for f in frames]) for c in rct.features.columns}
    spec = FeatureSpec.fit(columns)
    x_rct = encode_table(rct, spec)
    order = np.random.default_rng(cfg.seed).permutation(rct.n_rows)
    n_val = int(round(cfg.val_fraction * rct.n_rows))
    if n_val < 2 or rct.n_rows - n_val < 2:
        raise ValueError(f"{rct.path}: {rct.n_rows} RCT rows are too few to split for validation")
    val = _split(rct, x_rct, np.sort(order[:n_val]))
    train = _split(rct, x_rct, np.sort(order[n_val:]))
    obs_split = _split(obs, encode_table(obs, spec)) if obs is not None else None
    return spec, train, val, obs_split


def resolve_outcome_loss(cfg: TrainConfig, tables: Sequence[Table]) -> TrainConfig:
    """Turn outcome_loss "auto" into "poisson" (all labels >= 0) or "mse"; check "poisson".

    The Poisson deviance is only defined for non-negative labels; a negative one (a refund,
    say) is named with its file, column and row.
    """
    if cfg.outcome_loss == "mse":
        return cfg
    for table in tables:
        for column in ("revenue", "cost"):
            values = getattr(table, column)
            if values.min() < 0:
                if cfg.outcome_loss == "poisson":
                    row = int(np.argmin(values))
                    raise ValueError(
                        f"{table.path}: column {column!r} has {values[row]} at row {row}; the "
                        "poisson outcome loss needs labels >= 0 (use outcome_loss 'mse')"
                    )
                return cfg.replace(outcome_loss="mse")
    return cfg.replace(outcome_loss="poisson")


def train(
    cfg: TrainConfig, rct: Table, obs: Table | None, *, progress: bool = True,
    also_raw: bool = False,
) -> TrainResult:  # fmt: skip
    """Train `cfg.method` and return the validation-selected target network.

    progress: show tqdm bars (off for jobs and tests, whose logs they would flood).
    also_raw: DFCL / Bi-DFCL also select with the decision-focused phase as the default
    (keep_warm_start off) from the same run, returned as `result.raw` (benchmarks' "-raw" rows).
    """
    started = time.perf_counter()
    cfg = resolve_outcome_loss(cfg, [rct] + ([obs] if obs is not None else []))
    spec, tr, val, obs_split = prepare(cfg, rct, obs)
    run = Trainer(cfg, tr, val, obs_split, progress=progress)
    method = cfg.method
    checkpoints = Checkpoints()
    raw_default: Candidate | None = None
    if method in ("tsm-ipw", "tsm-dr"):
        assert obs_split is not None  # prepare() refuses them without OBS
        pooled = tr.concat(obs_split)
        fit = baselines.train_ipw if method == "tsm-ipw" else baselines.train_dr_learner
        net, default = fit(run, pooled, checkpoints)
    elif method in TWO_STAGE:
        data = {"tsm-rct": tr, "tsm-obs": obs_split, "tsm-pooled": None}[method]
        data = data if data is not None else tr.concat(obs_split)  # type: ignore[arg-type]
        net = run.outcome_net(data, 0)
        default = run.two_stage(net, data, method == "tsm-rct", method, checkpoints)
    else:
        if method in DFCL:
            net = run.outcome_net(tr, 0)
            warm = run.warm_start(net, tr, True, checkpoints)
            run.dfcl_epochs(net, checkpoints)
        else:
            assert obs_split is not None  # prepare() refuses bi-dfcl without OBS
            net, warm = train_bidfcl(run, tr, obs_split, run.budgets, checkpoints)
        final = run.close_phase(net, checkpoints, method)
        default = warm if cfg.keep_warm_start else final
        raw_default = final
    raw_net = None
    if also_raw and raw_default is not None:  # the decision-focused phase judged on its own
        raw_net = copy.deepcopy(net)
        raw_selection = run.select(raw_net, checkpoints, raw_default)
    selection = run.select(net, checkpoints, default)
    card = {
        "method": method,
        "feature_spec": spec.to_json(),
        "training_data": {"rct": _fingerprint(rct)}
        | ({"obs": _fingerprint(obs)} if obs is not None else {}),
        "validation": {
            **selection,
            "rows": len(val),
            "budgets": [float(b) for b in run.val_budgets],
            "train_budgets": [float(b) for b in run.budgets],
        },
        "config": cfg.to_json(),
    }
    seconds = time.perf_counter() - started
    raw = None
    if raw_net is not None:
        raw_card = dict(card)
        raw_card["validation"] = {**card["validation"], **raw_selection}  # type: ignore[dict-item]
        raw = TrainResult(raw_net, spec, raw_card, val.x.numpy(), cfg, run.history, seconds)
    return TrainResult(net, spec, card, val.x.numpy(), cfg, run.history, seconds, raw)
