"""Model selection that survives a small, noisy validation split (used by every method).

Validation EOM on a few thousand heavy-tailed RCT rows is far noisier than the differences
between epochs, so "keep the epoch with the best validation score" mostly keeps noise -- on the
simulator it often kept an early, poor epoch. Instead the model of a phase is the average of the
weights of its final epochs (stochastic weight averaging, which also lowers the run-to-run
variance), and a single checkpoint replaces that average only when its paired validation gain
over it clears `select_z` standard errors. Paired: both policies are scored on the same logged
rows, which cancels most of the revenue noise a comparison of two separate means would carry.
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

from training.nets import OutcomeNet
from training.splits import Split, grid_policies, paired_grid_gain, validation_curve


@dataclass(frozen=True)
class Scored:
    """Validation result of one model: a history row and its policies (B, N) on the grid."""

    row: dict[str, Any]
    policies: np.ndarray


def score(net: OutcomeNet, val: Split, budgets: np.ndarray) -> Scored:
    """Mode-E EOM budget curve of net on the validation split and its grid policies."""
    with torch.no_grad():
        rev_hat, cost_hat = (v.numpy() for v in net(val.x))
    curve = validation_curve(rev_hat, cost_hat, val, budgets)
    row = {"val_revenue": curve.mean_revenue, "val_area": curve.area}
    return Scored(row, grid_policies(rev_hat, cost_hat, curve.lam))


def averaged_epochs(epochs: int, fraction: float) -> int:
    """How many final epochs of a phase are averaged (at least one when fraction > 0)."""
    return min(epochs, math.ceil(fraction * epochs)) if fraction > 0 else 0


@dataclass
class Checkpoints:
    """Candidate weights of one network (with their history rows) and the running average."""

    candidates: list[tuple[dict[str, Any], np.ndarray, dict[str, Tensor]]] = field(
        default_factory=list
    )
    average: AveragedModel | None = None
    n_averaged: int = 0

    def add(self, net: OutcomeNet, scored: Scored, average: bool) -> None:
        """Keep net's current weights as a candidate; fold them into the average if asked."""
        self.candidates.append((scored.row, scored.policies, copy.deepcopy(net.state_dict())))
        if average:
            if self.average is None:
                self.average = AveragedModel(net)
            self.average.update_parameters(net)
            self.n_averaged += 1

    def select(
        self, net: OutcomeNet, val: Split, budgets: np.ndarray, z: float, phase: str
    ) -> tuple[dict[str, Any], dict[str, Any]]:
        """Load the chosen weights into net; return (history row of the default, selection info).

        The default is the weight average (or, with nothing averaged, the last candidate). Every
        candidate's row gets its paired gain over the default and that gain's standard error.
        """
        if not self.candidates:
            raise ValueError("no checkpoint was kept, nothing to select")
        if self.average is not None:
            net.load_state_dict(self.average.module.state_dict())
            default_state = copy.deepcopy(net.state_dict())
            default = score(net, val, budgets)
            default_row = {"phase": f"{phase}-average", **default.row}
        else:
            default_row, policies, default_state = self.candidates[-1]
            default = Scored(default_row, policies)
        best: tuple[float, dict[str, Any], dict[str, Tensor]] = (0.0, default_row, default_state)
        for row, policies, state in self.candidates:
            gain, se = paired_grid_gain(policies, default.policies, val)
            row |= {"val_gain": gain, "val_gain_se": se}
            if gain - z * se > best[0]:
                best = (gain - z * se, row, state)
        lcb, chosen, state = best
        net.load_state_dict(state)
        averaged = chosen is default_row and self.average is not None
        info = {
            "selected_by": "paired_gain_lcb",
            "selected": "average" if averaged else "checkpoint",
            "selected_phase": chosen["phase"],
            "selection_score": float(lcb),
            "eom_mean_revenue": float(chosen["val_revenue"]),
            "eom_area": float(chosen["val_area"]),
            "averaged_epochs": self.n_averaged,
        }
        return default_row, info
