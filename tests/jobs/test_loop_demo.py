"""`dfcl loop-demo` on a tiny simulated campaign: the loop runs end to end through the service."""

from __future__ import annotations

import json
from pathlib import Path

import pytest

from app.jobs.loop_demo import LoopConfig, run


@pytest.mark.slow
def test_loop_demo_runs_end_to_end(tmp_path: Path) -> None:
    cfg = LoopConfig(
        n_rct=300, n_obs=600, n_test=500, days=2, customers_per_day=300,
        exploration_rate=0.3, train={"epochs": 1, "teacher_epochs": 1, "prediction_epochs": 1},
    )  # fmt: skip
    lines: list[str] = []
    result = run(tmp_path, cfg, lines.append)
    assert result["first"] != result["retrained"]
    assert result["comparison_decision"] in ("activate", "keep champion")
    budgets = result["budgets"]
    for role in ("first", "retrained"):  # equal TRUE spend, or flagged where it cannot be met
        meets = [c <= b * 1.001 for c, b in zip(result[f"{role}_cost"], budgets, strict=True)]
        assert [not m for m in meets] == result[f"{role}_overspends"]
    oracle, first = result["oracle_revenue"], result["first_revenue"]
    reached = [not o for o in result["first_overspends"]]
    assert all(o >= f - 1e-9 for o, f, ok in zip(oracle, first, reached, strict=True) if ok)
    assert json.loads((tmp_path / "loop-result.json").read_text())["job"] == result["job"]
    assert any(line.startswith("4/4") for line in lines)
