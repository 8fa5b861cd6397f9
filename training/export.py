"""ONNX export of the target network + model.json, with an onnxruntime-vs-torch parity check.

The directory it writes is the model contract of `app/core/model_card.py` (input and output
names, shapes, the card's fields); nothing here restates it. `write_model_dir` exports any
torch module that maps features (B, F) to (revenue, cost) (B, K) each: training uses it through
`export`, and tests and benchmarks build their small ONNX models with it too.
"""

from __future__ import annotations

import dataclasses
import datetime as dt
import importlib.metadata
import io
import json
import uuid
import warnings
from pathlib import Path
from typing import Any

import numpy as np
import torch

from app.core.model_card import CARD_FILE, GRAPH_FILE, INPUT, OPSET, OUTPUTS, ModelCard
from training.nets import OutcomeNet

CHECKPOINT = "checkpoint.pt"
PARITY_RTOL = 1e-4
PARITY_ATOL = 1e-6


class ExportError(RuntimeError):
    """The exported graph does not reproduce the torch network (no model.json is written)."""


def package_version() -> str:
    """Installed dfcl version, recorded so a model can be traced to the code that made it."""
    try:
        return importlib.metadata.version("dfcl")
    except importlib.metadata.PackageNotFoundError:
        return "0.0.0"


def new_version(method: str, now: dt.datetime) -> str:
    """Unique, sortable model version id, e.g. 20261125-110000-bi-dfcl-1a2b3c."""
    return f"{now:%Y%m%d-%H%M%S}-{method}-{uuid.uuid4().hex[:6]}"


def onnx_bytes(net: torch.nn.Module, n_features: int) -> bytes:
    """Serialise features (B, F) -> (revenue, cost) to ONNX with a dynamic batch axis."""
    net = net.eval()
    example = torch.zeros(2, n_features)
    buf = io.BytesIO()
    with (
        warnings.catch_warnings()
    ):  # the TorchScript exporter is deprecated but needs no onnxscript
        warnings.simplefilter("ignore")
        torch.onnx.export(
            net,
            (example,),
            buf,  # type: ignore[arg-type]  # stubs say path; a file-like object works (docs)
            input_names=[INPUT],
            output_names=list(OUTPUTS),
            dynamic_axes={name: {0: "batch"} for name in (INPUT, *OUTPUTS)},
            opset_version=OPSET,
            dynamo=False,
        )
    return buf.getvalue()


def check_parity(net: torch.nn.Module, model: bytes, features: np.ndarray) -> float:
    """Run onnxruntime and torch on the batch (N, F) and its first row; raise ExportError on drift.

    Returns the max relative difference seen.
    """
    import onnxruntime as ort

    session = ort.InferenceSession(model, providers=["CPUExecutionProvider"])
    worst = 0.0
    for batch in (features[:1], features):
        x = np.ascontiguousarray(batch, dtype=np.float32)
        with torch.no_grad():
            want = [t.numpy() for t in net.eval()(torch.from_numpy(x))]
        got = session.run(list(OUTPUTS), {INPUT: x})
        for name, w, g in zip(OUTPUTS, want, got, strict=True):
            if g.shape != w.shape or g.dtype != np.float32:
                raise ExportError(
                    f"onnx output {name} has shape {g.shape} {g.dtype}, want {w.shape}"
                )
            excess = np.abs(g - w) - (PARITY_RTOL * np.abs(w) + PARITY_ATOL)
            worst = max(worst, float(np.max(np.abs(g - w) / np.maximum(np.abs(w), 1e-12))))
            if np.any(excess > 0):
                raise ExportError(
                    f"onnxruntime and torch disagree on {name}: max abs diff "
                    f"{float(np.max(np.abs(g - w))):.3g} over {len(x)} rows (rtol {PARITY_RTOL})"
                )
    return worst


def save_checkpoint(
    out_dir: Path, net: OutcomeNet, fields: dict[str, Any], val_features: np.ndarray
) -> Path:
    """Everything `dfcl export` needs to rebuild the network and its model.json."""
    path = Path(out_dir) / CHECKPOINT
    torch.save(
        {
            "state_dict": net.state_dict(),
            "n_features": net.n_features,
            "n_treatments": net.n_treatments,
            "hidden": list(fields["config"]["hidden"]),
            "card_fields": fields,
            "val_features": torch.from_numpy(np.asarray(val_features[:512], dtype=np.float32)),
        },
        path,
    )
    return path


def load_checkpoint(out_dir: Path) -> tuple[OutcomeNet, dict[str, Any], np.ndarray]:
    """Inverse of save_checkpoint; ValueError naming the file when it is missing or broken."""
    path = Path(out_dir) / CHECKPOINT
    if not path.is_file():
        raise ValueError(f"{path}: no checkpoint (train a model with `dfcl train` first)")
    try:
        data = torch.load(path, map_location="cpu", weights_only=True)
        net = OutcomeNet(data["n_features"], data["n_treatments"], tuple(data["hidden"]))
        net.load_state_dict(data["state_dict"])
    except Exception as exc:  # torch raises many types for a corrupt file
        raise ValueError(f"{path}: cannot load checkpoint: {exc}") from exc
    fields = data["card_fields"] if "card_fields" in data else data["meta"]  # older checkpoints
    return net, fields, data["val_features"].numpy()


def write_model_dir(
    net: torch.nn.Module, out_dir: Path, card: ModelCard, probe: np.ndarray
) -> ModelCard:
    """Write model.onnx, check parity on the probe batch (N, F), then write model.json.

    The card must describe the graph (F inputs, K outputs per row); the returned card records
    the parity check in `validation`. No model.json is left behind if any step fails.
    """
    out_dir = Path(out_dir)
    out_dir.mkdir(parents=True, exist_ok=True)
    if probe.ndim != 2 or probe.shape[1] != card.n_features or len(probe) == 0:
        raise ValueError(f"probe batch must be (N>0, {card.n_features}), got {probe.shape}")
    (out_dir / CARD_FILE).unlink(missing_ok=True)  # never leave a stale description behind
    with torch.no_grad():
        widths = {t.shape[1] for t in net.eval()(torch.zeros(1, card.n_features))}
    if widths != {card.n_treatments}:
        raise ExportError(
            f"the network returns {sorted(widths)} columns per output, the card lists "
            f"{card.n_treatments} treatments"
        )
    model = onnx_bytes(net, card.n_features)
    (out_dir / GRAPH_FILE).write_bytes(model)
    max_rel = check_parity(net, model, probe)
    card = dataclasses.replace(
        card, validation={**card.validation, "onnx_parity_max_rel_diff": max_rel}
    )
    (out_dir / CARD_FILE).write_text(json.dumps(card.to_json(), indent=2) + "\n")
    return card


def export(
    net: OutcomeNet, out_dir: Path, fields: dict[str, Any], val_features: np.ndarray
) -> ModelCard:
    """Export a trained target network with a new version id; returns its card.

    fields: the card fields training knows (method, treatments, feature_spec, training_data,
    validation, config, and optionally training_seconds, kept in validation).
    """
    now = dt.datetime.now(dt.UTC).replace(microsecond=0)
    validation = dict(fields["validation"])
    if "training_seconds" in fields:
        validation["training_seconds"] = fields["training_seconds"]
    card = ModelCard(
        version=new_version(fields["method"], now),
        method=fields["method"],
        treatments=tuple(str(t) for t in fields["treatments"]),
        n_features=net.n_features,
        feature_spec=fields["feature_spec"],
        outputs=ModelCard.declared_outputs(net.n_treatments),
        training_data=fields["training_data"],
        validation=validation,
        config=fields["config"],
        created_at=now.isoformat().replace("+00:00", "Z"),
        package_version=package_version(),
    )
    return write_model_dir(net, out_dir, card, val_features)


def export_checkpoint(out_dir: Path) -> ModelCard:
    """Re-export a saved checkpoint directory in place (`dfcl export DIR`)."""
    net, fields, val_features = load_checkpoint(out_dir)
    return export(net, out_dir, fields, val_features)
