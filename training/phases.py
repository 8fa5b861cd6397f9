"""The narrow interface a training phase kept outside training/train.py (Bi-DFCL) runs on.

training/train.py's Trainer implements `PhaseRun`; training/bidfcl.py depends only on this
protocol, so the two modules do not import each other and Bi-DFCL cannot reach into the rest
of the run's state.
"""

from __future__ import annotations

from collections.abc import Iterator
from typing import Protocol

import torch
from torch import Tensor

from training.config import TrainConfig
from training.nets import OutcomeNet
from training.selection import Candidate, Checkpoints
from training.splits import Split

# phase label of the IPW-weighted warm-start recipe (`warm_start(..., alternative=weights)`)
WEIGHTED_WARM_START = "warm-start-ipw"


class PhaseRun(Protocol):
    """Configuration, shared randomness and the phase helpers of one training run."""

    @property
    def cfg(self) -> TrainConfig: ...

    @property
    def gen(self) -> torch.Generator:
        """The run's shuffling generator: batch order and row draws continue one stream."""
        ...

    @property
    def progress(self) -> bool:
        """Whether phases show tqdm progress bars."""
        ...

    def batches(self, n: int) -> Iterator[Tensor]:
        """Shuffled index batches (R,) of one epoch over n rows."""
        ...

    def outcome_net(self, data: Split, seed_offset: int) -> OutcomeNet:
        """A fresh, seeded network with scales fitted on data."""
        ...

    def optimizer(self, net: torch.nn.Module, lr: float) -> torch.optim.Optimizer: ...

    def warm_start(
        self, net: OutcomeNet, data: Split, weighted: bool | Tensor, checkpoints: Checkpoints,
        alternative: Tensor | None = None,
    ) -> Candidate:  # fmt: skip
        """Train net as the two-stage model on data (selected); it joins checkpoints. With
        `alternative` row weights a second, weighted recipe competes (default: the first)."""
        ...

    def fine_tuned(
        self, start: OutcomeNet | None, data: Split, epochs: int, phase: str, seed_offset: int
    ) -> OutcomeNet:
        """An arm-balanced prediction model on data, from a copy of start (or from scratch),
        selected on validation like every model."""
        ...

    def dual_lambdas(self, net: OutcomeNet) -> list[float]:
        """The DFCL dual multipliers for net's predictions."""
        ...

    def epoch_end(
        self, net: OutcomeNet, phase: str, logs: dict[str, float],
        checkpoints: Checkpoints | None, epoch: int, epochs: int,
    ) -> float:  # fmt: skip
        """Validate and checkpoint after an epoch; returns the validation mean revenue."""
        ...
