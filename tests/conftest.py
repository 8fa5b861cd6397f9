"""Shared fixtures: small exported models, fresh SQLite/PostgreSQL databases, app clients.

Each database backend gets one fresh database per test session (PostgreSQL: created here and
dropped at the end), its schema from `alembic upgrade head`; every test starts from empty tables.
"""

from __future__ import annotations

import json
import os
import uuid
from collections.abc import Iterator
from pathlib import Path
from typing import Any

import numpy as np
import pytest
import sqlalchemy as sa
from alembic import command
from fastapi.testclient import TestClient

from app.config import Settings
from app.db import alembic_config, database_url, find_migrations, make_engine, make_sessionmaker
from app.main import create_app
from app.services import keys
from tests.utils.models import declare_treatments, export_synthetic_model

PG_ADMIN_URL = os.environ.get(
    "DFCL_TEST_PG_URL", "postgresql+psycopg://postgres@127.0.0.1:5432/test"
)


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
    """A small model directory as `dfcl train` leaves it (tests/utils/models.py).

    `declared` rewrites model.json to list another number of treatments than the graph has.
    """
    export_synthetic_model(out, version, seed=seed, n_treatments=n_treatments, method="tiny-test")
    return declare_treatments(out, declared) if declared is not None else out


@pytest.fixture(scope="session", autouse=True)
def _model_roots(tmp_path_factory: pytest.TempPathFactory) -> Iterator[None]:
    """POST /v1/models registers only under DFCL_MODEL_ROOTS; the tests' model directories
    all live under pytest's base temporary directory."""
    old = os.environ.get("DFCL_MODEL_ROOTS")
    os.environ["DFCL_MODEL_ROOTS"] = json.dumps([str(tmp_path_factory.getbasetemp())])
    yield
    if old is None:
        os.environ.pop("DFCL_MODEL_ROOTS", None)
    else:
        os.environ["DFCL_MODEL_ROOTS"] = old


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
            "allocation_jobs",
            "decisions",
            "allocations",
            "campaign_history",
            "campaigns",
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
