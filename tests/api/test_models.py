"""/v1/models: registration, listing, activation and its refusals; the swap keeps old users."""

from __future__ import annotations

import shutil
from pathlib import Path
from typing import Any

import numpy as np
from fastapi.testclient import TestClient

from app.config import Settings
from app.main import create_app


def test_register_list_and_active(bare_client: TestClient, model_sources: dict[str, Path]) -> None:
    assert bare_client.get("/v1/models").json() == []
    r = bare_client.get("/v1/models/active")
    assert r.status_code == 404 and "no model version is active" in r.json()["detail"]

    r = bare_client.post("/v1/models", json={"path": str(model_sources["v1"])})
    assert r.status_code == 201
    out = r.json()
    assert out["version"] == "tiny-v1" and out["is_active"] is False
    assert out["treatments"] == ["control", "email", "discount"] and out["n_features"] == 5
    assert len(out["onnx_sha256"]) == 64 and out["card"]["method"] == "tiny-test"
    models_dir: Path = bare_client.app.state.settings.models_dir  # type: ignore[attr-defined]
    assert sorted(p.name for p in (models_dir / "tiny-v1").iterdir()) == [
        "model.json",
        "model.onnx",
    ]

    r = bare_client.post("/v1/models/tiny-v1/activate")
    assert r.status_code == 200 and r.json()["is_active"] is True and r.json()["activated_at"]
    assert bare_client.get("/v1/models/active").json()["version"] == "tiny-v1"
    listed = bare_client.get("/v1/models").json()
    assert [m["version"] for m in listed] == ["tiny-v1"]


def test_register_refusals(
    bare_client: TestClient, model_sources: dict[str, Path], tmp_path: Path
) -> None:
    assert (
        bare_client.post("/v1/models", json={"path": str(model_sources["v1"])}).status_code == 201
    )
    r = bare_client.post("/v1/models", json={"path": str(model_sources["v1"])})
    assert r.status_code == 409 and "already registered" in r.json()["detail"]

    r = bare_client.post("/v1/models", json={"path": str(tmp_path / "nowhere")})
    assert r.status_code == 422 and "is not a model directory" in r.json()["detail"]

    r = bare_client.post("/v1/models", json={"path": str(model_sources["bad_shape"])})
    assert r.status_code == 422 and "shape" in r.json()["detail"]

    no_onnx = tmp_path / "no-onnx"
    no_onnx.mkdir()
    shutil.copy(model_sources["v2"] / "model.json", no_onnx / "model.json")
    r = bare_client.post("/v1/models", json={"path": str(no_onnx)})
    assert r.status_code == 422 and "is not a model directory" in r.json()["detail"]

    garbage = tmp_path / "garbage"
    shutil.copytree(model_sources["v2"], garbage)
    (garbage / "model.onnx").write_bytes(b"not an onnx graph")
    r = bare_client.post("/v1/models", json={"path": str(garbage)})
    assert r.status_code == 422 and "does not load" in r.json()["detail"]

    # Nothing refused was recorded or copied.
    assert [m["version"] for m in bare_client.get("/v1/models").json()] == ["tiny-v1"]
    models_dir: Path = bare_client.app.state.settings.models_dir  # type: ignore[attr-defined]
    assert sorted(p.name for p in models_dir.iterdir()) == ["tiny-v1"]


def test_activate_switches_and_refuses_broken(
    client: TestClient, model_sources: dict[str, Path], customers: Any
) -> None:
    body = {"budget": 10.0, "customers": customers(5)}
    assert client.post("/v1/models/tiny-v9/activate").status_code == 404
    assert client.post("/v1/models/..%2Fetc/activate").status_code == 404

    assert client.post("/v1/models", json={"path": str(model_sources["v2"])}).status_code == 201
    r = client.post("/v1/models/tiny-v2/activate")
    assert r.status_code == 200
    assert client.post("/v1/allocations", json=body).json()["model_version"] == "tiny-v2"
    versions = {m["version"]: m["is_active"] for m in client.get("/v1/models").json()}
    assert versions == {"tiny-v1": False, "tiny-v2": True}

    # Files of v1 vanish after registration: activation is refused, v2 keeps serving.
    models_dir: Path = client.app.state.settings.models_dir  # type: ignore[attr-defined]
    (models_dir / "tiny-v1" / "model.onnx").unlink()
    r = client.post("/v1/models/tiny-v1/activate")
    assert r.status_code == 422 and "model.onnx is missing" in r.json()["detail"]
    assert client.get("/v1/models/active").json()["version"] == "tiny-v2"
    assert client.post("/v1/allocations", json=body).json()["model_version"] == "tiny-v2"


def test_swap_keeps_in_flight_model(client: TestClient, model_sources: dict[str, Path]) -> None:
    """A request holding the old model finishes on it after another version is activated."""
    registry = client.app.state.registry  # type: ignore[attr-defined]
    held = registry.active
    assert held.version == "tiny-v1"
    client.post("/v1/models", json={"path": str(model_sources["v2"])})
    client.post("/v1/models/tiny-v2/activate")
    assert registry.active.version == "tiny-v2"
    x = np.zeros((4, held.spec.n_features), dtype=np.float32)
    revenue, cost = held.predict(x)
    assert revenue.shape == (4, 3) and cost.shape == (4, 3)


def test_activation_elsewhere_is_followed(
    client: TestClient, settings: Settings, model_sources: dict[str, Path], customers: Any
) -> None:
    """Another worker (here: a second app on the same database) activates v2; this one follows."""
    with TestClient(create_app(settings), headers=client.headers) as other:
        other.post("/v1/models", json={"path": str(model_sources["v2"])})
        assert other.post("/v1/models/tiny-v2/activate").status_code == 200
    r = client.post("/v1/allocations", json={"budget": 10.0, "customers": customers(3)})
    assert r.json()["model_version"] == "tiny-v2"
    assert client.get("/readyz").json()["model_version"] == "tiny-v2"


def test_openapi_lists_v1_endpoints_with_examples(bare_client: TestClient) -> None:
    spec = bare_client.get("/openapi.json").json()
    assert {
        "/v1/allocations",
        "/v1/allocations/{allocation_id}",
        "/v1/models",
        "/v1/models/active",
        "/v1/models/{version}/activate",
        "/healthz",
        "/readyz",
    } <= set(spec["paths"])
    create = spec["components"]["schemas"]["AllocationCreate"]
    assert create["examples"][0]["customers"][0]["features"]
    assert {"413", "422", "503"} <= set(spec["paths"]["/v1/allocations"]["post"]["responses"])


def test_concurrent_allocations_during_activation(
    client: TestClient, model_sources: dict[str, Path], customers: Any
) -> None:
    """Allocations from several threads while the active model changes: none fails or is lost."""
    from concurrent.futures import ThreadPoolExecutor

    client.post("/v1/models", json={"path": str(model_sources["v2"])})

    def allocate(i: int) -> tuple[int, str, int]:
        body = {"budget": 20.0, "campaign": "load", "customers": customers(30, seed=i)}
        r = client.post("/v1/allocations", json=body)
        out = r.json()
        return r.status_code, out.get("model_version", ""), len(out.get("decisions", []))

    with ThreadPoolExecutor(max_workers=6) as pool:
        first = [pool.submit(allocate, i) for i in range(12)]
        assert client.post("/v1/models/tiny-v2/activate").status_code == 200
        second = [pool.submit(allocate, i) for i in range(12, 24)]
        results = [f.result() for f in first + second]
    assert all(status == 201 and n == 30 for status, _, n in results)
    assert {version for _, version, _ in results} <= {"tiny-v1", "tiny-v2"}
    assert all(version == "tiny-v2" for _, version, _ in results[12:])  # sent after the swap
    stored = client.get("/v1/allocations", params={"campaign": "load", "limit": 100}).json()
    assert len(stored["items"]) == 24
    assert all(item["n_customers"] == 30 for item in stored["items"])


def test_register_a_directory_already_in_the_registry(
    bare_client: TestClient, model_sources: dict[str, Path]
) -> None:
    """Training may export straight into models/<version>/: registering it copies nothing."""
    models_dir: Path = bare_client.app.state.settings.models_dir  # type: ignore[attr-defined]
    target = models_dir / "tiny-v2"
    shutil.copytree(model_sources["v2"], target)
    r = bare_client.post("/v1/models", json={"path": str(target)})
    assert r.status_code == 201 and r.json()["version"] == "tiny-v2"
    assert sorted(p.name for p in models_dir.iterdir()) == ["tiny-v2"]  # no staging leftovers
    assert (target / "model.onnx").read_bytes() == (model_sources["v2"] / "model.onnx").read_bytes()
