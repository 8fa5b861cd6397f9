"""API fixtures: a tiny exported ONNX model, fresh SQLite/PostgreSQL databases, app clients.

Each database backend gets one fresh database per test session (PostgreSQL: created here and
dropped at the end), its schema from `alembic upgrade head`; every test starts from empty tables.
"""

from __future__ import annotations

import json
import os
import uuid
import warnings
from collections.abc import Iterator
from pathlib import Path
from typing import Any

import numpy as np
import pytest
import sqlalchemy as sa
from alembic import command
from fastapi.testclient import TestClient

from app.config import Settings
from app.core.features import FeatureSpec
from app.db import alembic_config, database_url, find_migrations, make_engine, make_sessionmaker
from app.main import create_app
from app.services import keys

PG_ADMIN_URL = os.environ.get(
    "DFCL_TEST_PG_URL", "postgresql+psycopg://postgres@127.0.0.1:5432/test"
)
TREATMENTS = ["control", "email", "discount"]
SPEC = FeatureSpec(numeric=("recency", "history"), categorical={"channel": ("Phone", "Web")})
# Per-treatment cost scale: every treatment costs something, so small budgets are infeasible.
COST_BASE = (0.1, 1.0, 2.0)


def make_customers(n: int, seed: int = 0, prefix: str = "c") -> list[dict[str, Any]]:
    """n request customers with valid raw features."""
    rng = np.random.default_rng(seed)
    channels = np.array(["Phone", "Web", "Multichannel"])[rng.integers(0, 3, n)]
    return [
        {
            "id": f"{prefix}{i}",
            "features": {
                "recency": int(r),
                "history": float(h),
                "channel": str(ch),
            },
        }
        for i, (r, h, ch) in enumerate(
            zip(rng.integers(1, 13, n), rng.gamma(2.0, 100.0, n).round(2), channels, strict=True)
        )
    ]


def export_tiny_model(
    out: Path, version: str, *, seed: int = 0, n_treatments: int = 3, declared: int | None = None
) -> Path:
    """Export a small torch net to `out` in the model-directory contract (brief).

    `declared` lets a test write a model.json whose treatment count disagrees with the graph.
    """
    import torch  # dev install only; the service never imports it

    torch.manual_seed(seed)

    class Tiny(torch.nn.Module):
        def __init__(self) -> None:
            super().__init__()
            self.body = torch.nn.Sequential(
                torch.nn.Linear(SPEC.n_features, 8),
                torch.nn.Tanh(),
                torch.nn.Linear(8, 2 * n_treatments),
            )
            self.register_buffer("scale", torch.tensor([1.0, 0.01, 1.0, 1.0, 1.0]))
            base = torch.linspace(COST_BASE[0], COST_BASE[-1], n_treatments)
            self.register_buffer("cost_base", base)

        def forward(self, features: torch.Tensor) -> tuple[torch.Tensor, torch.Tensor]:
            h = self.body(features * self.scale)  # (B, 2K)
            k = self.cost_base.shape[0]
            revenue = torch.nn.functional.softplus(h[:, :k]) * (1.0 + self.cost_base)  # (B, K)
            cost = self.cost_base * (1.0 + torch.sigmoid(h[:, k:]))  # (B, K), > 0
            return revenue, cost

    net = Tiny().eval()
    out.mkdir(parents=True, exist_ok=True)
    with torch.no_grad(), warnings.catch_warnings():
        warnings.simplefilter("ignore", DeprecationWarning)  # legacy exporter: no onnxscript here
        torch.onnx.export(
            net,
            (torch.zeros(2, SPEC.n_features),),
            str(out / "model.onnx"),
            input_names=["features"],
            output_names=["revenue", "cost"],
            dynamic_axes={"features": {0: "batch"}, "revenue": {0: "batch"}, "cost": {0: "batch"}},
            opset_version=17,
            dynamo=False,
        )
    k = declared if declared is not None else n_treatments
    names = (TREATMENTS + [f"t{j}" for j in range(3, k)])[:k]
    card = {
        "format_version": 1,
        "version": version,
        "method": "tiny-test",
        "treatments": names,
        "n_features": SPEC.n_features,
        "feature_spec": SPEC.to_json(),
        "outputs": {"revenue": ["batch", k], "cost": ["batch", k]},
        "training_data": {},
        "validation": {"eom_area": 0.0},
        "created_at": "2026-11-25T11:00:00Z",
        "package_version": "0.1.0",
        "config": {},
    }
    (out / "model.json").write_text(json.dumps(card, indent=2))
    return out


@pytest.fixture(scope="session")
def customers() -> Any:
    """make_customers(n, seed=0, prefix="c"): valid request customers c0..c{n-1}."""
    return make_customers


@pytest.fixture(scope="session")
def model_sources(tmp_path_factory: pytest.TempPathFactory) -> dict[str, Path]:
    """Model directories as `dfcl train` would leave them: two good versions and a bad one."""
    root = tmp_path_factory.mktemp("exported")
    return {
        "v1": export_tiny_model(root / "v1", "tiny-v1", seed=0),
        "v2": export_tiny_model(root / "v2", "tiny-v2", seed=1),
        "bad_shape": export_tiny_model(root / "bad", "tiny-bad-shape", seed=2, declared=4),
    }


def _upgrade(url: str) -> None:
    """Schema from the migrations, as in production (never create_all)."""
    config = alembic_config(find_migrations(Settings()), sa.make_url(url))
    command.upgrade(config, "head")


@pytest.fixture(scope="session")
def sqlite_url(tmp_path_factory: pytest.TempPathFactory) -> str:
    url = f"sqlite:///{tmp_path_factory.mktemp('sqlite') / 'dfcl.db'}"
    _upgrade(url)
    return url


@pytest.fixture(scope="session")
def postgres_url() -> Iterator[str]:
    """A fresh PostgreSQL database for this session, dropped afterwards."""
    name = f"dfcl_test_{uuid.uuid4().hex[:10]}"
    admin = sa.create_engine(PG_ADMIN_URL, isolation_level="AUTOCOMMIT")
    try:
        with admin.connect() as conn:
            conn.execute(sa.text(f'CREATE DATABASE "{name}"'))
    except sa.exc.OperationalError as exc:
        pytest.fail(f"PostgreSQL at {PG_ADMIN_URL} is needed for the API tests: {exc}")
    url = sa.make_url(PG_ADMIN_URL).set(database=name).render_as_string(hide_password=False)
    try:
        _upgrade(url)
        yield url
    finally:
        with admin.connect() as conn:
            conn.execute(sa.text(f'DROP DATABASE IF EXISTS "{name}" WITH (FORCE)'))
        admin.dispose()


@pytest.fixture(params=["sqlite", "postgres"])
def db_kind_fresh_url(request: pytest.FixtureRequest, tmp_path: Path) -> Iterator[str]:
    """An empty database (no schema) on each backend, for startup tests."""
    if request.param == "sqlite":
        yield f"sqlite:///{tmp_path / 'fresh.db'}"
        return
    name = f"dfcl_fresh_{uuid.uuid4().hex[:10]}"
    admin = sa.create_engine(PG_ADMIN_URL, isolation_level="AUTOCOMMIT")
    with admin.connect() as conn:
        conn.execute(sa.text(f'CREATE DATABASE "{name}"'))
    try:
        yield sa.make_url(PG_ADMIN_URL).set(database=name).render_as_string(hide_password=False)
    finally:
        with admin.connect() as conn:
            conn.execute(sa.text(f'DROP DATABASE IF EXISTS "{name}" WITH (FORCE)'))
        admin.dispose()


@pytest.fixture(params=["sqlite", "postgres"])
def db_url(request: pytest.FixtureRequest) -> str:
    """Each API test runs on both backends, starting from empty tables."""
    url: str = request.getfixturevalue(f"{request.param}_url")
    engine = sa.create_engine(database_url(Settings(database_url=url)))
    with engine.begin() as conn:
        for table in (
            "outcomes",
            "retrain_jobs",
            "decisions",
            "allocations",
            "model_versions",
            "idempotency_records",
            "api_keys",
        ):
            conn.execute(sa.text(f"DELETE FROM {table}"))
    engine.dispose()
    return url


@pytest.fixture
def settings(db_url: str, tmp_path: Path) -> Settings:
    return Settings(database_url=db_url, models_dir=tmp_path / "models", max_customers=2_000)


def make_key(url: str, *scopes: str) -> str:
    """A new API key with `scopes` in the database at `url` (auth is on, as in production)."""
    engine = make_engine(Settings(database_url=url))
    try:
        with make_sessionmaker(engine)() as session, session.begin():
            return keys.create(session, scopes, name="tests")[1]
    finally:
        engine.dispose()


@pytest.fixture(scope="session")
def new_key() -> Any:
    """make_key(url, *scopes): a fresh API key in that database."""
    return make_key


@pytest.fixture
def auth_headers(db_url: str) -> dict[str, str]:
    """Headers with an admin key, for every client the tests build."""
    return {"Authorization": f"Bearer {make_key(db_url, 'admin')}"}


@pytest.fixture
def bare_client(settings: Settings, auth_headers: dict[str, str]) -> Iterator[TestClient]:
    """The service with an empty registry; requests carry an admin key."""
    with TestClient(create_app(settings), headers=auth_headers) as client:
        yield client


@pytest.fixture
def client(bare_client: TestClient, model_sources: dict[str, Path]) -> TestClient:
    """The service with tiny-v1 registered and active (through the API itself)."""
    r = bare_client.post("/v1/models", json={"path": str(model_sources["v1"])})
    assert r.status_code == 201, r.text
    r = bare_client.post("/v1/models/tiny-v1/activate")
    assert r.status_code == 200, r.text
    return bare_client
