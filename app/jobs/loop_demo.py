"""`dfcl loop-demo`: the closed loop on the simulator, through the real service code path.

1. Simulate a campaign (small RCT + confounded OBS + a test population with ground truth) and
   train the first model on it; register and activate it in a fresh service (TestClient).
2. One campaign (POST /v1/campaigns) spends the per-capita budget over every day's customers,
   paced in real time: each simulated day, new customers arrive in decision batches
   (POST /v1/campaigns/{id}/decisions, with exploration); at the day's end the simulator draws
   what each customer really did under the treatment it got -> POST .../outcomes (a one-day
   outcome delay), which recalibrates the campaign's cost before the next day. Every batch is an
   ordinary allocation, so retraining reads it unchanged.
3. POST /v1/retrain (base tables = the first model's data) and follow the job.
4. Score both models on the test population by their TRUE per-capita revenue at equal TRUE spend
   (mode E with the simulator's expected outcomes as a perfect RCT), next to the oracle.

Training needs the `train` extra; `training` is imported inside functions only.
"""

from __future__ import annotations

import json
import time
from collections.abc import Callable
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import numpy as np

from app.config import Settings
from app.core import metrics
from app.core.solver import allocate
from app.inference import OnnxModel

OVERSPEND_TOL = 1e-3  # relative: mode E meets a budget to within its bisection tolerance


@dataclass(frozen=True)
class LoopConfig:
    """Sizes and knobs of the demo; defaults run in a few minutes on 2 CPU cores."""

    n_rct: int = 1_000
    n_obs: int = 10_000
    n_test: int = 20_000
    days: int = 5
    customers_per_day: int = 4_000
    exploration_rate: float = 0.2
    budget: float = 1.0  # per customer, for allocations and the headline comparison
    method: str = "bi-dfcl"
    train: dict[str, Any] = field(
        default_factory=lambda: {"prediction_epochs": 10, "epochs": 10, "teacher_epochs": 10}
    )
    seed: int = 0
    batch: int = 200  # customers per POST /v1/campaigns/{id}/decisions
    plan_sample: int = 1_000  # simulated customers the campaign's first multiplier is planned on


def true_curve(
    model: OnnxModel, test: Any, truth: tuple[np.ndarray, np.ndarray], budgets: np.ndarray
) -> tuple[np.ndarray, np.ndarray]:
    """True per-capita (revenue, cost) of a model's policy at equal TRUE spend, each (B,).

    The truth is fed to mode E as a perfect RCT: every customer under every arm, p = 1/K, so
    the multiplier is bisected until the policy's true cost meets each budget.
    """
    revenue_pred, cost_pred = model.predict_columns(test)  # (N, K)
    truth_revenue, truth_cost = truth
    n, k = truth_revenue.shape
    treatment = np.repeat(np.arange(k), n)
    curve = metrics.budget_curve(
        np.tile(revenue_pred, (k, 1)),
        np.tile(cost_pred, (k, 1)),
        metrics.Logged.of(
            treatment, truth_revenue.T.ravel(), truth_cost.T.ravel(), np.full(n * k, 1.0 / k)
        ),
        budgets,
    )
    return curve.revenue, curve.cost


def _records(frame: Any) -> list[dict[str, Any]]:
    """DataFrame rows -> JSON-ready feature dicts."""
    return json.loads(frame.to_json(orient="records"))  # type: ignore[no-any-return]


Say = Callable[[str], None]


def train_first_model(workdir: Path, cfg: LoopConfig, say: Say) -> tuple[Any, Path]:
    """Step 1: simulate the campaign's history and train the first model into workdir/first."""
    from training.data.simulator import simulate
    from training.pipeline import train_and_export

    sim = simulate(n_obs=cfg.n_obs, n_rct=cfg.n_rct, n_test=cfg.n_test, seed=cfg.seed)
    data = sim.write(workdir / "data")
    say(
        f"1/4 simulated {cfg.n_rct} RCT + {cfg.n_obs} OBS rows; training the first model "
        f"({cfg.method})"
    )
    config_path = workdir / "train-config.json"
    config_path.write_text(json.dumps({**cfg.train, "seed": cfg.seed}))
    train_and_export(
        cfg.method, data / "rct.parquet", data / "obs.parquet", workdir / "first", config_path,
        progress=False,
    )  # fmt: skip
    return sim, data


def _ok(response: Any) -> Any:
    """The response if it succeeded, else a RuntimeError with what the service said."""
    if response.status_code >= 400:
        raise RuntimeError(
            f"{response.request.method} {response.request.url.path}: HTTP "
            f"{response.status_code}: {response.text[:500]}"
        )
    return response


def serve_days(client: Any, cfg: LoopConfig, sim: Any, say: Say) -> dict[str, Any]:
    """Step 2: run the days as ONE campaign; report each day's outcomes at the day's end.

    The campaign's budget is the per-capita budget over every expected customer; its first
    multiplier is planned on a sample of simulated customers, then paced batch by batch. Each
    day's customers arrive in decision batches of `cfg.batch`; what they did is reported when
    the day is over (a one-day outcome delay), which updates the campaign's realized spend and
    per-arm cost calibration before the next day. Returns the campaign as GET shows it.
    """
    from training.data.simulator import sample_features, sample_outcomes

    rng = np.random.default_rng(cfg.seed + 1)
    plan_rng = np.random.default_rng(cfg.seed + 2)  # the plan sample leaves the days' draws alone
    k, max_discount = sim.params.n_treatments, sim.params.max_discount
    expected = cfg.days * cfg.customers_per_day
    plan = [
        {"id": f"plan-{i}", "features": f}
        for i, f in enumerate(_records(sample_features(cfg.plan_sample, plan_rng)))
    ]
    r = _ok(
        client.post(
            "/v1/campaigns",
            json={
                "name": f"loop-demo-{cfg.seed}",
                "budget": cfg.budget * expected,
                "expected_customers": expected,
                "exploration_rate": cfg.exploration_rate,
                "seed": cfg.seed,  # exploration draws replayable
                "plan_sample": plan,
            },
        )
    )
    campaign = r.json()
    url = f"/v1/campaigns/{campaign['id']}"
    say(
        f"    campaign {campaign['name']}: budget {campaign['budget']:g} for {expected} customers, "
        f"planned multiplier {campaign['plan_multiplier']:.4g} (sample of {cfg.plan_sample})"
    )
    for day in range(cfg.days):  # loop over simulated days (batches are HTTP calls)
        features = sample_features(cfg.customers_per_day, rng)
        people = [{"id": f"day{day}-{i}", "features": f} for i, f in enumerate(_records(features))]
        batches: list[tuple[str, int, int]] = []  # (allocation id, first, end) of each batch
        treatment = np.empty(len(people), dtype=np.int64)
        explored = 0
        for lo in range(0, len(people), cfg.batch):
            hi = min(lo + cfg.batch, len(people))
            done = _ok(client.post(f"{url}/decisions", json={"customers": people[lo:hi]})).json()
            treatment[lo:hi] = [d["treatment"] for d in done["decisions"]]
            explored += sum(d["explored"] for d in done["decisions"])
            batches.append((done["allocation_id"], lo, hi))
        revenue, cost = sample_outcomes(features, treatment, rng, k, max_discount)
        for allocation_id, lo, hi in batches:  # the day is over: report what customers did
            outcomes = [
                {"customer_id": p["id"], "revenue": float(rv), "cost": float(c)}
                for p, rv, c in zip(people[lo:hi], revenue[lo:hi], cost[lo:hi], strict=True)
            ]
            _ok(
                client.post(
                    f"/v1/allocations/{allocation_id}/outcomes", json={"outcomes": outcomes}
                )
            )
        state = _ok(client.get(url)).json()
        say(
            f"    day {day + 1}: {explored} explored, realized revenue {revenue.mean():.3f} and "
            f"cost {cost.mean():.3f} per customer (budget {cfg.budget:g}); multiplier "
            f"{state['multiplier']:.4g}, realized spend {state['realized_spend']:.1f} / "
            f"{state['budget']:g}"
        )
    final: dict[str, Any] = _ok(client.get(url)).json()
    say(
        f"    campaign realized spend / budget = {final['realized_spend']:.1f} / "
        f"{final['budget']:g} = {final['realized_spend'] / final['budget']:.3f} "
        f"({final['n_budget_exhausted']} customers got the cheapest arm at the hard stop)"
    )
    return final


def retrain(client: Any, cfg: LoopConfig, data: Path, say: Say) -> dict[str, Any]:
    """Step 3: retrain through the API (base tables = the first model's data) and wait."""
    body = {
        "method": cfg.method,
        "config": {**cfg.train, "seed": cfg.seed},
        "base_rct": str((data / "rct.parquet").resolve()),
        "base_obs": str((data / "obs.parquet").resolve()),
    }
    r = client.post("/v1/retrain", json=body)
    r.raise_for_status()
    job: dict[str, Any] = r.json()
    while job["status"] not in ("succeeded", "failed"):
        time.sleep(1.0)
        job = client.get(f"/v1/retrain/{job['id']}").json()
    if job["status"] == "failed":
        raise RuntimeError(f"retraining failed: {job['error']}\n" + "\n".join(job["log_tail"]))
    cmp = job["comparison"]
    areas = [cmp.get(r, {}).get("eom_area", float("nan")) for r in ("champion", "challenger")]
    say(
        f"    job {job['id']}: {job['new_version']}, {cmp['decision']} ({cmp['reason']}); "
        f"held-out EOM area champion {areas[0]:.4f} vs challenger {areas[1]:.4f}"
    )
    return job


def score_models(
    models_dir: Path, versions: dict[str, str], sim: Any, cfg: LoopConfig
) -> dict[str, Any]:
    """Step 4: each model's true per-capita revenue and cost at equal TRUE spend, and the
    oracle's, on the simulator's test population."""
    truth = (sim.truth_revenue, sim.truth_cost)
    budgets = np.array(sorted({cfg.budget, *np.linspace(0.5, 2.0, 4).round(3).tolist()}))
    result: dict[str, Any] = {"budgets": budgets.tolist()}
    for role, version in versions.items():
        model = OnnxModel.load(models_dir / version)
        revenue, cost = true_curve(model, sim.test, truth, budgets)
        result[f"{role}_revenue"], result[f"{role}_cost"] = revenue.tolist(), cost.tolist()
        # No multiplier brings the true spend down to the budget: not a like-for-like point.
        result[f"{role}_overspends"] = (cost > budgets * (1 + OVERSPEND_TOL)).tolist()
    result["oracle_revenue"] = [
        allocate(*truth, b, per_capita=True).revenue / cfg.n_test for b in budgets
    ]
    return result


def report(result: dict[str, Any], say: Say) -> None:
    """The comparison table: true revenue per budget of both models and the oracle."""
    header = f"{'budget':>8} {'first':>10} {'retrained':>10} {'oracle':>10}"
    say(f"    {header}   (true cost first/retrained; * = cannot spend as little as the budget)")
    for i, b in enumerate(result["budgets"]):
        first, again = result["first_revenue"][i], result["retrained_revenue"][i]
        costs = "/".join(
            f"{result[f'{r}_cost'][i]:.4f}{'*' if result[f'{r}_overspends'][i] else ''}"
            for r in ("first", "retrained")
        )
        oracle = result["oracle_revenue"][i]
        say(f"    {b:8.3f} {first:10.4f} {again:10.4f} {oracle:10.4f}   ({costs})")


def run(workdir: Path, cfg: LoopConfig, say: Say) -> dict[str, Any]:
    """Run the loop (module docstring); returns the comparison, also printed through `say`."""
    from fastapi.testclient import TestClient

    from app.main import create_app

    started = time.perf_counter()
    workdir.mkdir(parents=True, exist_ok=True)
    sim, data = train_first_model(workdir, cfg, say)
    settings = Settings(
        database_url=f"sqlite:///{(workdir / 'loop.db').resolve()}",
        models_dir=workdir / "models",
        retrain_dir=workdir / "retrain",
        auth_enabled=False,
        max_customers=max(10_000, cfg.customers_per_day),
    )
    with TestClient(create_app(settings)) as client:
        r = client.post("/v1/models", json={"path": str(workdir / "first")})
        r.raise_for_status()
        first_version = r.json()["version"]
        client.post(f"/v1/models/{first_version}/activate").raise_for_status()
        say(
            f"2/4 serving {first_version}; {cfg.days} days of {cfg.customers_per_day} customers, "
            f"exploration {cfg.exploration_rate:g}, budget {cfg.budget:g} per customer"
        )
        campaign = serve_days(client, cfg, sim, say)
        say("3/4 retraining on the logged decisions + outcomes (+ the first model's data)")
        job = retrain(client, cfg, data, say)
    say("4/4 true per-capita revenue on the test population at equal TRUE spend")
    versions = {"first": first_version, "retrained": job["new_version"]}
    result = {
        "job": job["id"],
        **versions,
        "activated": job["activated"],
        "comparison_decision": job["comparison"]["decision"],
        "campaign": {
            key: campaign[key]
            for key in ("id", "budget", "realized_spend", "committed_spend", "n_decisions")
        },
        **score_models(settings.models_dir, versions, sim, cfg),
    }
    report(result, say)
    result["seconds"] = round(time.perf_counter() - started, 1)
    (workdir / "loop-result.json").write_text(json.dumps(result, indent=2) + "\n")
    say(f"done in {result['seconds']} s; details in {workdir / 'loop-result.json'}")
    return result
