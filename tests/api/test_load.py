"""The real server under concurrent load, and killed with SIGKILL mid-load (tests/utils/load.py).

Short versions of `python benchmarks/load.py` and `... --kill-after`: a uvicorn subprocess on a
fresh SQLite file / PostgreSQL database, then the database is audited against what clients saw.
"""

from __future__ import annotations

from pathlib import Path
from typing import Any

import pytest

from tests.utils import load


def _assert_consistent(summary: dict[str, Any]) -> None:
    assert summary["ok"] > 0, summary
    assert summary["errors"] == 0, summary["error_examples"]
    assert summary["lost"] == 0 and summary["partial"] == 0, summary
    assert summary["duplicated"] == 0 and summary["mismatched"] == 0, summary


@pytest.mark.slow
@pytest.mark.parametrize("kind", ["sqlite", "postgres"])
def test_fifty_clients_no_errors_lost_or_duplicated(
    kind: str, tmp_path: Path, model_sources: dict[str, Path]
) -> None:
    summary = load.run_one(
        kind, tmp_path, model_sources["v1"], clients=50, seconds=8.0, n_customers=20
    )
    print("\n" + load.HEADER + "\n" + load.row(summary))
    _assert_consistent(summary)
    assert summary["stored"] == summary["ok"]  # every stored allocation was answered 201


@pytest.mark.slow
@pytest.mark.parametrize("kind", ["sqlite", "postgres"])
def test_sigkill_mid_load_leaves_only_complete_allocations(
    kind: str, tmp_path: Path, model_sources: dict[str, Path]
) -> None:
    summary = load.run_one(
        kind,
        tmp_path,
        model_sources["v1"],
        clients=20,
        seconds=6.0,
        n_customers=50,
        kill_after=2.0,
    )
    print("\n" + load.HEADER + "\n" + load.row(summary))
    _assert_consistent(summary)  # every 201 stored whole; nothing partial after restart
    crash = summary["after_kill"]
    assert crash["lost"] == 0 and crash["partial"] == 0 and crash["duplicated"] == 0, crash
    assert summary["cut_by_kill"] > 0  # the kill did hit requests in flight
    # Resent with their keys, the cut requests are now answered; none was allocated twice.
    assert summary["stored"] == summary["ok"] == crash["ok"] + summary["cut_by_kill"]
