"""Small exported models for service tests and benchmarks, built through the real exporter.

The networks are not trained: they map features to plausible positive revenue and cost, which
is all the service needs. They go through `training.export.write_model_dir`, so the model
directory they leave is exactly what `dfcl train` leaves (same contract, same parity check).
"""

from __future__ import annotations

import json
from pathlib import Path
from typing import TYPE_CHECKING

import numpy as np

from app.core.features import FeatureSpec
from app.core.model_card import ModelCard

if TYPE_CHECKING:
    import torch

TREATMENTS = ("control", "email", "discount")
SPEC = FeatureSpec(numeric=("recency", "history"), categorical={"channel": ("Phone", "Web")})
# Per-treatment cost scale: every treatment costs something, so small budgets are infeasible.
COST_BASE = (0.1, 1.0, 2.0)


def _net(n_features: int, k: int, hidden: int, scale: list[float], seed: int) -> torch.nn.Module:
    """features (B, F) -> revenue (B, K) >= 0 and cost (B, K) > 0, rising with the arm."""
    import torch  # dev install only; the service never imports it

    torch.manual_seed(seed)

    class Synthetic(torch.nn.Module):
        def __init__(self) -> None:
            super().__init__()
            self.body = torch.nn.Sequential(
                torch.nn.Linear(n_features, hidden), torch.nn.Tanh(), torch.nn.Linear(hidden, 2 * k)
            )
            self.register_buffer("scale", torch.tensor(scale))
            self.register_buffer("cost_base", torch.linspace(COST_BASE[0], COST_BASE[-1], k))

        def forward(self, features: torch.Tensor) -> tuple[torch.Tensor, torch.Tensor]:
            h = self.body(features * self.scale)  # (B, 2K)
            revenue = torch.nn.functional.softplus(h[:, :k]) * (1.0 + self.cost_base)  # (B, K)
            cost = self.cost_base * (1.0 + torch.sigmoid(h[:, k:]))  # (B, K), > 0
            return revenue, cost

    return Synthetic().eval()


def export_synthetic_model(
    out: Path,
    version: str,
    *,
    spec: FeatureSpec = SPEC,
    n_treatments: int = 3,
    hidden: int = 8,
    seed: int = 0,
    method: str = "synthetic",
) -> Path:
    """Export an untrained synthetic net for `spec` into `out` (model.onnx + model.json)."""
    from training.export import write_model_dir

    names = (list(TREATMENTS) + [f"t{j}" for j in range(3, n_treatments)])[:n_treatments]
    n_numeric = len(spec.numeric)  # encoded numeric columns come first, then one-hot slots
    scale = [0.01 if name == "history" else 1.0 for name in spec.numeric]
    scale += [1.0] * (spec.n_features - n_numeric)
    net = _net(spec.n_features, n_treatments, hidden, scale, seed)
    card = ModelCard(
        version=version,
        method=method,
        treatments=tuple(names),
        n_features=spec.n_features,
        feature_spec=spec.to_json(),
        outputs=ModelCard.declared_outputs(n_treatments),
        created_at="2026-11-25T11:00:00Z",
        package_version="0.1.0",
    )
    probe = np.random.default_rng(seed).normal(size=(64, spec.n_features)).astype(np.float32)
    write_model_dir(net, out, card, probe)
    return out


def declare_treatments(model_dir: Path, n_treatments: int) -> Path:
    """Rewrite model.json to list a different number of treatments than its graph returns
    (a corrupted or hand-edited card the service must refuse)."""
    path = model_dir / "model.json"
    card = json.loads(path.read_text())
    names = [f"t{j}" for j in range(n_treatments)]
    path.write_text(json.dumps({**card, "treatments": names,
                                "outputs": ModelCard.declared_outputs(n_treatments)}))  # fmt: skip
    return model_dir
