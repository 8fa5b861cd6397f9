"""ONNX export: contract of model.onnx/model.json, parity check, refusal on drift."""

from __future__ import annotations

import json

import numpy as np
import onnx
import onnxruntime as ort
import pytest
import torch

from app.core.model_card import OPSET, ModelCard
from training import export
from training.config import TrainConfig
from training.nets import OutcomeNet


def _net(seed: int, n_features: int = 6, k: int = 3) -> OutcomeNet:
    torch.manual_seed(seed)
    net = OutcomeNet(n_features, k, (16, 8))
    x = torch.randn(64, n_features) * 3 + 1
    net.fit_scales(x, torch.rand(64) * 10, torch.rand(64))
    return net


def _fields() -> dict:
    return {
        "method": "tsm-rct",
        "treatments": ["control", "a", "b"],
        "feature_spec": {"numeric": ["x0", "x1", "x2", "x3", "x4", "x5"], "categorical": {}},
        "training_data": {"rct": {"path": "rct.csv", "rows": 64, "sha256": "0" * 64}},
        "validation": {"eom_area": 0.5},
        "config": TrainConfig(method="tsm-rct", hidden=(16, 8)).to_json(),
    }


def test_export_writes_the_contract_and_runs_any_batch_size(tmp_path):
    net = _net(0)
    val = np.random.default_rng(0).normal(size=(100, 6)).astype(np.float32)
    card = export.export(net, tmp_path, _fields(), val)
    model = onnx.load(str(tmp_path / "model.onnx"))
    assert model.opset_import[0].version == OPSET
    assert [i.name for i in model.graph.input] == ["features"]
    assert [o.name for o in model.graph.output] == ["revenue", "cost"]
    on_disk = json.loads((tmp_path / "model.json").read_text())
    assert on_disk == card.to_json() and ModelCard.from_json(on_disk) == card
    assert on_disk["format_version"] == 1 and on_disk["n_features"] == 6
    assert on_disk["outputs"] == {"revenue": ["batch", 3], "cost": ["batch", 3]}
    assert "-tsm-rct-" in on_disk["version"]
    assert on_disk["created_at"].endswith("Z") and on_disk["config"]["hidden"] == [16, 8]
    session = ort.InferenceSession(str(tmp_path / "model.onnx"))
    for n in (1, 257):
        x = np.random.default_rng(n).normal(size=(n, 6)).astype(np.float32) * 5
        rev, cost = session.run(["revenue", "cost"], {"features": x})
        with torch.no_grad():
            want_rev, want_cost = net(torch.from_numpy(x))
        np.testing.assert_allclose(rev, want_rev.numpy(), rtol=1e-4, atol=1e-6)
        np.testing.assert_allclose(cost, want_cost.numpy(), rtol=1e-4, atol=1e-6)
        assert rev.shape == (n, 3) and (rev >= 0).all() and (cost >= 0).all()


def test_parity_failure_is_loud_and_leaves_no_model_json(tmp_path, monkeypatch):
    net = _net(0)
    other = _net(1)  # a different network: its graph cannot match `net`
    val = np.random.default_rng(0).normal(size=(50, 6)).astype(np.float32)
    original = export.onnx_bytes
    monkeypatch.setattr(export, "onnx_bytes", lambda _net, n: original(other, n))
    with pytest.raises(export.ExportError, match="disagree"):
        export.export(net, tmp_path, _fields(), val)
    assert not (tmp_path / "model.json").exists()


def test_checkpoint_round_trip_reexports(tmp_path):
    net = _net(2)
    val = np.random.default_rng(3).normal(size=(40, 6)).astype(np.float32)
    export.save_checkpoint(tmp_path, net, _fields(), val)
    card = export.export_checkpoint(tmp_path)
    assert card.method == "tsm-rct" and (tmp_path / "model.onnx").is_file()
    with pytest.raises(ValueError, match="no checkpoint"):
        export.export_checkpoint(tmp_path / "missing")


def test_a_card_that_does_not_describe_the_graph_is_refused(tmp_path):
    net = _net(0)  # 3 outputs per row
    card = export.export(net, tmp_path / "good", _fields(), np.zeros((4, 6), np.float32))
    four = ModelCard.from_json({**card.to_json(), "treatments": ["a", "b", "c", "d"]})
    with pytest.raises(export.ExportError, match="4 treatments"):
        export.write_model_dir(net, tmp_path / "bad", four, np.zeros((4, 6), np.float32))
    assert not (tmp_path / "bad" / "model.json").exists()
