"""Model registration: only under DFCL_MODEL_ROOTS, refusals that do not tell which paths exist,
crafted model.json refused with 422, and a refused activation honoured by every process."""

from __future__ import annotations

import json
import shutil
from pathlib import Path
from typing import Any

import pytest
from fastapi.testclient import TestClient

from app.config import Settings
from app.main import create_app
from app.services.models import registration_roots


@pytest.fixture
def rooted(settings: Settings, auth_headers: dict[str, str], tmp_path: Path) -> Any:
    """An app whose registration root is tmp_path/root, and that root."""
    root = tmp_path / "root"
    root.mkdir()
    rooted = settings.model_copy(update={"model_roots": [root]})
    with TestClient(create_app(rooted), headers=auth_headers) as client:
        yield client, root


def test_default_root_is_the_models_dirs_parent(tmp_path: Path) -> None:
    settings = Settings(models_dir=tmp_path / "reg" / "models", model_roots=[])
    assert registration_roots(settings) == [(tmp_path / "reg").resolve()]


def test_registration_only_under_roots_and_refusals_read_alike(
    rooted: Any, model_sources: dict[str, Path], tmp_path: Path
) -> None:
    client, root = rooted
    outside = tmp_path / "outside"
    shutil.copytree(model_sources["v1"], outside)
    (root / "a-file").write_text("x")
    (root / "empty").mkdir()
    (root / "only-card").mkdir()
    shutil.copy(model_sources["v1"] / "model.json", root / "only-card" / "model.json")
    (root / "only-graph").mkdir()
    shutil.copy(model_sources["v1"] / "model.onnx", root / "only-graph" / "model.onnx")
    cases = {
        "outside the roots (a real model)": outside,
        "escaping with ..": root / ".." / "outside",
        "missing": root / "nowhere",
        "a file": root / "a-file",
        "an empty directory": root / "empty",
        "no model.onnx": root / "only-card",
        "no model.json": root / "only-graph",
        "outside, missing": Path("/nonexistent/dir"),
    }
    details = set()
    for why, path in cases.items():
        r = client.post("/v1/models", json={"path": str(path)})
        assert r.status_code == 422, (why, r.text)
        detail = r.json()["detail"]
        assert "is not a model directory" in detail and str(root.resolve()) in detail, why
        assert "DFCL_MODEL_ROOTS" in detail
        details.add(detail.replace(str(path), "<path>"))
    assert len(details) == 1, details  # one answer, whatever is or is not there
    assert client.get("/v1/models").json() == []

    inside = root / "v1"
    shutil.copytree(model_sources["v1"], inside)
    r = client.post("/v1/models", json={"path": str(inside)})
    assert r.status_code == 201, r.text


def _crafted(root: Path, source: Path, name: str, **card: Any) -> Path:
    out = root / name
    shutil.copytree(source, out)
    data = json.loads((out / "model.json").read_text())
    data.update(card)
    (out / "model.json").write_text(json.dumps(data))
    return out


@pytest.mark.parametrize(
    "card",
    [
        {"treatments": 3},
        {"treatments": "abc"},
        {"outputs": 7},
        {"outputs": "revenue"},
        {"version": None},
        {"version": "../escape"},
    ],
    ids=["treatments-int", "treatments-str", "outputs-num", "outputs-str", "version-null", "dots"],
)
def test_crafted_model_card_is_refused(
    rooted: Any, model_sources: dict[str, Path], card: dict[str, Any]
) -> None:
    client, root = rooted
    path = _crafted(root, model_sources["v1"], "crafted", **card)
    r = client.post("/v1/models", json={"path": str(path)})
    assert r.status_code == 422, r.text
    assert r.json()["error"] and "model.json" in r.json()["detail"]
    assert client.get("/v1/models").json() == []


def test_version_naming_a_file_in_the_models_dir_is_refused(
    rooted: Any, model_sources: dict[str, Path]
) -> None:
    client, root = rooted
    models_dir: Path = client.app.state.settings.models_dir
    models_dir.mkdir(parents=True, exist_ok=True)
    readme = models_dir / "README.md"
    readme.write_text("the registry\n")
    path = _crafted(root, model_sources["v1"], "readme", version="README.md")
    r = client.post("/v1/models", json={"path": str(path)})
    assert r.status_code == 422, r.text
    assert "names a file in the models directory" in r.json()["detail"]
    assert readme.read_text() == "the registry\n"  # untouched
    assert client.get("/v1/models").json() == []


def test_refused_activation_is_honoured_by_every_process(
    client: TestClient, settings: Settings, model_sources: dict[str, Path], customers: Any
) -> None:
    """Two app instances (workers) on one database and one models dir: once tiny-v2's files
    break and its activation is refused, neither serves it from memory any more."""
    body = {"budget": 10.0, "customers": customers(3), "model_version": "tiny-v2"}
    assert client.post("/v1/models", json={"path": str(model_sources["v2"])}).status_code == 201
    with TestClient(create_app(settings), headers=client.headers) as other:
        for app in (client, other):  # both load and cache tiny-v2
            r = app.post("/v1/allocations", json=body)
            assert r.status_code == 201 and r.json()["model_version"] == "tiny-v2", r.text
        graph = settings.models_dir / "tiny-v2" / "model.onnx"
        graph.write_bytes(b"not an onnx graph any more")
        r = client.post("/v1/models/tiny-v2/activate")
        assert r.status_code == 422 and "does not load" in r.json()["detail"]
        answers = [app.post("/v1/allocations", json=body) for app in (client, other, client)]
        assert [a.status_code for a in answers] == [422, 422, 422], [a.text for a in answers]
        assert len({a.json()["detail"] for a in answers}) == 1
        # The active version is untouched and still serves.
        plain = {"budget": 10.0, "customers": customers(3)}
        for app in (client, other):
            assert app.post("/v1/allocations", json=plain).json()["model_version"] == "tiny-v1"
