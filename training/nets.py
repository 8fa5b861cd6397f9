"""Target / teacher / bridge networks: (B, F) encoded features -> per-treatment outputs.

Normalisation lives inside the network (buffers fitted on training features) so the exported
ONNX graph takes the encoded, unnormalised features the service produces.
"""

from __future__ import annotations

import math

import torch
from torch import Tensor, nn


class _Body(nn.Module):
    """Normalise then MLP: (B, F) -> (B, 2K) raw head values."""

    feature_mean: Tensor  # buffers, annotated so type checkers do not see nn.Module attributes
    feature_std: Tensor

    def __init__(self, n_features: int, n_outputs: int, hidden: tuple[int, ...]) -> None:
        super().__init__()
        self.register_buffer("feature_mean", torch.zeros(n_features))
        self.register_buffer("feature_std", torch.ones(n_features))
        layers: list[nn.Module] = []
        width = n_features
        for h in hidden:
            layers += [nn.Linear(width, h), nn.ReLU()]
            width = h
        layers.append(nn.Linear(width, n_outputs))
        self.mlp = nn.Sequential(*layers)

    def fit_normalisation(self, features: Tensor) -> None:
        """Store mean/std of the training features (B, F); constant columns get std 1."""
        std = features.std(dim=0)
        self.feature_mean.copy_(features.mean(dim=0))
        self.feature_std.copy_(torch.where(std > 1e-8, std, torch.ones_like(std)))

    def forward(self, features: Tensor) -> Tensor:
        return self.mlp((features - self.feature_mean) / self.feature_std)


class OutcomeNet(nn.Module):
    """Predicts revenue and cost for every treatment; used for target and teacher (methods §5.2).

    Outputs are softplus (non-negative, §8.18) times a per-output scale fitted on the labels,
    so the last layer works on unit-scale numbers whatever the currency.
    """

    revenue_scale: Tensor  # buffers
    cost_scale: Tensor

    def __init__(self, n_features: int, n_treatments: int, hidden: tuple[int, ...]) -> None:
        super().__init__()
        self.n_features = n_features
        self.n_treatments = n_treatments
        self.body = _Body(n_features, 2 * n_treatments, hidden)
        self.register_buffer("revenue_scale", torch.ones(()))
        self.register_buffer("cost_scale", torch.ones(()))

    def fit_scales(self, features: Tensor, revenue: Tensor, cost: Tensor) -> None:
        """Fit feature normalisation (B, F) and output scales from factual labels (B,)."""
        self.body.fit_normalisation(features)
        self.revenue_scale.copy_(revenue.abs().mean().clamp_min(1e-6))
        self.cost_scale.copy_(cost.abs().mean().clamp_min(1e-6))

    def forward(self, features: Tensor) -> tuple[Tensor, Tensor]:
        """(B, F) -> revenue (B, K), cost (B, K), both >= 0."""
        out = nn.functional.softplus(self.body(features))
        k = self.n_treatments
        return out[:, :k] * self.revenue_scale, out[:, k:] * self.cost_scale


class BridgeNet(nn.Module):
    """Gate w in (0, 1) per (treatment, revenue/cost) mixing teacher and target pseudo-labels."""

    def __init__(self, n_features: int, n_treatments: int, hidden: tuple[int, ...]) -> None:
        super().__init__()
        self.n_treatments = n_treatments
        self.body = _Body(n_features, 2 * n_treatments, hidden)

    def fit_scales(self, features: Tensor) -> None:
        """Fit feature normalisation on training features (B, F)."""
        self.body.fit_normalisation(features)

    def set_gate(self, gate: float) -> None:
        """Start every gate near `gate` in (0, 1) (the output bias is its logit)."""
        last = self.body.mlp[-1]
        assert isinstance(last, nn.Linear)
        with torch.no_grad():
            last.bias.fill_(math.log(gate / (1.0 - gate)))

    def forward(self, features: Tensor) -> tuple[Tensor, Tensor]:
        """(B, F) -> revenue gate (B, K), cost gate (B, K)."""
        out = torch.sigmoid(self.body(features))
        k = self.n_treatments
        return out[:, :k], out[:, k:]
