"""Tiny simulated data for training tests (a few thousand rows, written once per session)."""

from __future__ import annotations

from pathlib import Path

import pytest

from training.config import TrainConfig
from training.data import Table, load_table
from training.data.simulator import simulate

TINY = {
    "epochs": 3, "prediction_epochs": 3, "teacher_epochs": 2, "steps_per_epoch": 12,
    "batch_size": 128, "hidden": (16, 8), "rct_upper_batch": 256, "n_cg": 5,
}  # fmt: skip


@pytest.fixture(scope="session")
def tiny_dir(tmp_path_factory: pytest.TempPathFactory) -> Path:
    """rct/obs/test/truth + dataset.json of a 3-arm simulated campaign."""
    directory = tmp_path_factory.mktemp("tiny")
    simulate(n_obs=2000, n_rct=600, n_test=400, n_treatments=3, seed=0).write(directory)
    return directory


@pytest.fixture(scope="session")
def tiny_tables(tiny_dir: Path) -> tuple[Table, Table]:
    rct = load_table(tiny_dir / "rct.parquet", "rct", n_treatments=3)
    obs = load_table(tiny_dir / "obs.parquet", "obs", n_treatments=3)
    return rct, obs


def make_tiny_config(method: str, **changes: object) -> TrainConfig:
    """A config small enough for a test run of any method."""
    return TrainConfig(method=method, **{**TINY, **changes})  # type: ignore[arg-type]


@pytest.fixture
def tiny_config():  # noqa: ANN201 - returns the factory
    """Factory for tiny configs: tiny_config(method, **changes)."""
    return make_tiny_config
