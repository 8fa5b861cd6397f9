"""Model selection that survives a small, noisy validation split (used by every method).

Validation EOM on a few thousand heavy-tailed RCT rows is far noisier than the differences
between epochs, so "keep the epoch with the best validation score" mostly keeps noise -- on the
simulator it often kept an early, poor epoch. Instead the model of a phase is the average of the
weights of its final epochs (stochastic weight averaging, which also lowers the run-to-run
variance). Selection starts from a default model (the caller names it: a phase average) and
another candidate replaces it only when its paired validation gain over the default clears
`select_z` standard errors. Paired: both policies are scored on the same logged rows, which
cancels most of the revenue noise a comparison of two separate means would carry.
"""

from __future__ import annotations

import copy
import math
from dataclasses import dataclass, field
from typing import Any

import numpy as np
import torch
from torch import Tensor
from torch.optim.swa_utils import AveragedModel

from app.core import metrics
from app.core.metrics import paired_gain
from training.nets import OutcomeNet
from training.splits import Split, validation_curve


@dataclass(frozen=True)
class Scored:
    """Validation result of one model: a history row, its policies (B, N) on the grid and its
    predictions (N, K) of the validation rows (revenue, cost), which doubly robust selection
    re-scores with."""

    row: dict[str, Any]
    policies: np.ndarray
    predictions: tuple[np.ndarray, np.ndarray] | None = None


@dataclass(frozen=True)
class Candidate:
    """A model selection may pick: its validation result and its weights."""

    scored: Scored
    state: dict[str, Tensor]


def score(net: OutcomeNet, val: Split, budgets: np.ndarray) -> Scored:
    """Mode-E EOM budget curve of net on the validation split and its grid policies."""
    with torch.no_grad():
        rev_hat, cost_hat = (v.numpy() for v in net(val.x))
    curve = validation_curve(rev_hat, cost_hat, val, budgets)
    row = {"val_revenue": curve.mean_revenue, "val_area": curve.area}
    return Scored(row, curve.policy, (rev_hat, cost_hat))


def _dr_policies(candidate: Scored, logged: metrics.Logged, budgets: np.ndarray) -> np.ndarray:
    """A candidate's grid policies (B, N) with mode E on the doubly robust cost."""
    if candidate.predictions is None:
        raise ValueError("doubly robust selection needs every candidate's predictions")
    rev_hat, cost_hat = candidate.predictions
    return metrics.budget_curve(rev_hat, cost_hat, logged, budgets).policy


def averaged_epochs(epochs: int, fraction: float) -> int:
    """How many final epochs of a phase are averaged (at least one when fraction > 0)."""
    return min(epochs, math.ceil(fraction * epochs)) if fraction > 0 else 0


@dataclass
class Checkpoints:
    """Candidates of one network and the running weight average of the current phase."""

    candidates: list[Candidate] = field(default_factory=list)
    average: AveragedModel | None = None
    n_averaged: int = 0

    def add(self, net: OutcomeNet, scored: Scored, keep: bool, average: bool) -> None:
        """Keep net's current weights as a candidate and/or fold them into the average."""
        if keep:
            self.candidates.append(Candidate(scored, copy.deepcopy(net.state_dict())))
        if average:
            if self.average is None:
                self.average = AveragedModel(net)
            self.average.update_parameters(net)
            self.n_averaged += 1

    def close_average(self, val: Split, budgets: np.ndarray, phase: str) -> Candidate | None:
        """Turn the phase's weight average into a candidate (row phase '<phase>-average')."""
        if self.average is None:
            return None
        net: OutcomeNet = self.average.module  # type: ignore[assignment]  # the averaged copy
        scored = score(net, val, budgets)
        scored.row.update({"phase": f"{phase}-average", "averaged_epochs": self.n_averaged})
        candidate = Candidate(scored, copy.deepcopy(net.state_dict()))
        self.candidates.append(candidate)
        self.average, self.n_averaged = None, 0
        return candidate

    def choose(
        self, val: Split, z: float, default: Candidate, estimator: str = "ht",
        budgets: np.ndarray | None = None,
    ) -> tuple[Candidate, float]:  # fmt: skip
        """The candidate to ship and its lower confidence bound on the gain over the default.

        Every candidate's row gets its paired gain over the default and that gain's SE; the
        default stays unless some candidate's gain - z * SE is positive (the largest wins).
        estimator "dr": the gains are doubly robust, with the default model's predictions as
        the outcome baseline (it never saw the validation rows) and every policy re-derived by
        mode E on the doubly robust cost over `budgets`; "ht": Horvitz-Thompson.
        """
        best: tuple[float, Candidate] = (0.0, default)
        logged = val.logged()

        def policies(scored: Scored) -> np.ndarray:
            return scored.policies

        if estimator == "dr":
            if budgets is None or default.scored.predictions is None:
                raise ValueError("doubly robust selection needs the budgets and predictions")
            logged = logged.with_baseline(*default.scored.predictions)
            grid = budgets

            def policies(scored: Scored) -> np.ndarray:
                return _dr_policies(scored, logged, grid)

        elif estimator != "ht":
            raise ValueError(f"estimator must be 'ht' or 'dr', got {estimator!r}")
        anchor = policies(default.scored)
        for candidate in self.candidates:
            mine = anchor if candidate is default else policies(candidate.scored)
            paired = paired_gain(mine, anchor, logged)
            gain, se = paired.revenue, paired.revenue_se
            candidate.scored.row.update({"val_gain": gain, "val_gain_se": se})
            if gain - z * se > best[0]:
                best = (gain - z * se, candidate)
        return best[1], best[0]

    def select(
        self, net: OutcomeNet, val: Split, z: float, default: Candidate, estimator: str = "ht",
        budgets: np.ndarray | None = None,
    ) -> dict[str, Any]:  # fmt: skip
        """Load the chosen weights (`choose`) into net and say what was chosen."""
        chosen, lcb = self.choose(val, z, default, estimator, budgets)
        net.load_state_dict(chosen.state)
        row = chosen.scored.row
        return {
            "selected_by": "paired_gain_lcb",
            "estimator": estimator,
            "default_phase": default.scored.row["phase"],
            "selected_phase": row["phase"],
            "selection_score": float(lcb),
            "eom_mean_revenue": float(row["val_revenue"]),
            "eom_area": float(row["val_area"]),
        }
