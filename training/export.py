"""ONNX export of the target network + model.json, with an onnxruntime-vs-torch parity check.

The model directory contract (brief): model.onnx with input `features` float32 [batch, F] and
outputs `revenue`, `cost` float32 [batch, K], opset 17; model.json describing it.
"""

from __future__ import annotations

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

from training.nets import OutcomeNet

OPSET = 17
FORMAT_VERSION = 1
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


class _Exported(torch.nn.Module):
    """Wrapper fixing the output order (revenue, cost) of the graph."""

    def __init__(self, net: OutcomeNet) -> None:
        super().__init__()
        self.net = net

    def forward(self, features: torch.Tensor) -> tuple[torch.Tensor, torch.Tensor]:
        return self.net(features)


def onnx_bytes(net: OutcomeNet) -> bytes:
    """Serialise the network to ONNX with a dynamic batch axis."""
    net = net.eval()
    example = torch.zeros(2, net.n_features)
    buf = io.BytesIO()
    with (
        warnings.catch_warnings()
    ):  # the TorchScript exporter is deprecated but needs no onnxscript
        warnings.simplefilter("ignore")
        torch.onnx.export(
            _Exported(net),
            (example,),
            buf,  # type: ignore[arg-type]  # stubs say path; a file-like object works (docs)
            input_names=["features"],
            output_names=["revenue", "cost"],
            dynamic_axes={"features": {0: "batch"}, "revenue": {0: "batch"}, "cost": {0: "batch"}},
            opset_version=OPSET,
            dynamo=False,
        )
    return buf.getvalue()


def check_parity(net: OutcomeNet, model: bytes, features: np.ndarray) -> float:
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
        got = session.run(["revenue", "cost"], {"features": x})
        for name, w, g in zip(("revenue", "cost"), want, got, strict=True):
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
    out_dir: Path, net: OutcomeNet, meta: dict[str, Any], val_features: np.ndarray
) -> Path:
    """Everything `dfcl export` needs to rebuild the network and its model.json."""
    path = Path(out_dir) / CHECKPOINT
    torch.save(
        {
            "state_dict": net.state_dict(),
            "n_features": net.n_features,
            "n_treatments": net.n_treatments,
            "hidden": list(meta["config"]["hidden"]),
            "meta": meta,
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
    return net, data["meta"], data["val_features"].numpy()


def export(
    net: OutcomeNet, out_dir: Path, meta: dict[str, Any], val_features: np.ndarray
) -> dict[str, Any]:
    """Write model.onnx, check parity on a validation batch, then write model.json (returned).

    meta holds method, treatments, feature_spec, training_data, validation and config.
    """
    out_dir = Path(out_dir)
    out_dir.mkdir(parents=True, exist_ok=True)
    if val_features.ndim != 2 or val_features.shape[1] != net.n_features or len(val_features) == 0:
        raise ValueError(
            f"validation batch must be (N>0, {net.n_features}), got {val_features.shape}"
        )
    (out_dir / "model.json").unlink(missing_ok=True)  # never leave a stale description behind
    model = onnx_bytes(net)
    (out_dir / "model.onnx").write_bytes(model)
    max_rel = check_parity(net, model, val_features)
    now = dt.datetime.now(dt.UTC).replace(microsecond=0)
    k = net.n_treatments
    description = {
        "format_version": FORMAT_VERSION,
        "version": new_version(meta["method"], now),
        "method": meta["method"],
        "treatments": list(meta["treatments"]),
        "n_features": net.n_features,
        "feature_spec": meta["feature_spec"],
        "outputs": {"revenue": ["batch", k], "cost": ["batch", k]},
        "training_data": meta["training_data"],
        "validation": {**meta["validation"], "onnx_parity_max_rel_diff": max_rel},
        "created_at": now.isoformat().replace("+00:00", "Z"),
        "package_version": package_version(),
        "config": meta["config"],
    }
    (out_dir / "model.json").write_text(json.dumps(description, indent=2) + "\n")
    return description


def export_checkpoint(out_dir: Path) -> dict[str, Any]:
    """Re-export a saved checkpoint directory in place (`dfcl export DIR`)."""
    net, meta, val_features = load_checkpoint(out_dir)
    return export(net, out_dir, meta, val_features)
