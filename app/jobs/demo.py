"""`dfcl demo`: simulated data -> trained model -> registered and active -> curl example.

Training needs the `train` extra (torch); it is imported inside `train_model` only, so the
service itself never loads it.

By default the demo is small (DEMO_SIZES, DEMO_CONFIG: about a minute on 2 cores) so a newcomer
reaches a serving model quickly; `dfcl demo --full` runs FULL_SIZES with the TrainConfig
defaults (several minutes), as the benchmarks do.
"""

from __future__ import annotations

import json
import shlex
from collections.abc import Callable
from dataclasses import dataclass
from pathlib import Path
from typing import Any

from app.config import Settings
from app.core.model_card import ModelCard
from app.db import make_engine, make_sessionmaker, prepare_schema
from app.registry import Registry
from app.services import keys, models
from app.tables import ApiKey

# Most faithful first: Bi-DFCL, then DFCL with its own decision loss, then the two-stage model.
PREFERRED_METHODS = ("bi-dfcl", "dfcl-ifd", "tsm-rct")
EXAMPLE_CUSTOMERS = 3
# (OBS, RCT, test) rows: the quick default, and `--full`.
DEMO_SIZES = (20_000, 5_000, 2_000)
FULL_SIZES = (50_000, 10_000, 10_000)
# TrainConfig overrides of the quick demo (the full demo uses the TrainConfig defaults).
DEMO_CONFIG: dict[str, Any] = {"prediction_epochs": 8, "teacher_epochs": 3, "epochs": 2}
DEMO_KEY_NAME = "dfcl-demo"
DEMO_SCOPES = ("allocate", "read")
# Phase of DFCL / Bi-DFCL training whose weights are the two-stage (prediction-only) model
# (rows "warm-start", "warm-start-average", "warm-start-end").
WARM_START_PHASE = "warm-start"


@dataclass(frozen=True)
class DemoResult:
    data_dir: Path
    model_dir: Path
    version: str
    method: str
    curl: str
    api_key: str
    serving: str = ""  # which weights serve and why, one sentence
    phase: str = ""  # the training phase whose weights were exported


def simulate_data(out: Path, *, n_obs: int, n_rct: int, n_test: int, seed: int) -> Path:
    """Simulated campaign (RCT + biased OBS + randomized test with ground truth)."""
    from training.data.simulator import simulate

    return simulate(n_obs=n_obs, n_rct=n_rct, n_test=n_test, seed=seed).write(out)


def available_methods() -> list[str]:
    """Methods the installed training package knows, in PREFERRED_METHODS order."""
    from training.config import METHODS

    return [m for m in PREFERRED_METHODS if m in METHODS]


def train_model(
    data: Path, out: Path, method: str, config: dict[str, Any], say: Callable[[str], None]
) -> ModelCard:
    """Train `method` (falling back down PREFERRED_METHODS if it is unavailable) and export.

    Only a missing implementation (ImportError / NotImplementedError) triggers the fallback,
    and it is announced; any other failure is an error.
    """
    from training.pipeline import train_and_export

    methods = [method, *[m for m in available_methods() if m != method]]
    config_path = out / "train-config.json"
    last: Exception | None = None
    for candidate in methods:
        if candidate != method:
            say(f"method {method!r} is not available ({last}); training {candidate!r} instead")
        out.mkdir(parents=True, exist_ok=True)
        config_path.write_text(json.dumps({**config, "method": candidate}))
        try:
            return train_and_export(
                candidate, data / "rct.parquet", data / "obs.parquet", out / candidate, config_path
            )
        except (ImportError, NotImplementedError) as exc:
            last = exc
    raise RuntimeError(f"no training method is available: {last}")


def register_and_activate(settings: Settings, model_dir: Path) -> str:
    """Copy the exported model into the registry and make it active (one transaction)."""
    engine = make_engine(settings)
    try:
        prepare_schema(engine, settings)
        with make_sessionmaker(engine)() as session, session.begin():
            registry = Registry(settings.models_dir, threads=settings.inference_threads)
            row = models.register(session, registry, model_dir)
            models.activate(session, registry, row.version)
            return row.version
    finally:
        engine.dispose()


def _is_demo_key(row: ApiKey) -> bool:
    """Keys an earlier `dfcl demo` made (older versions named them "demo")."""
    if row.name == DEMO_KEY_NAME:
        return True
    return row.name == "demo" and sorted(row.scopes) == sorted(DEMO_SCOPES)


def create_key(settings: Settings) -> tuple[str, int]:
    """A new API key for the demo's curl (allocate + read) and how many earlier demo keys were
    revoked: a secret is stored only hashed, so it cannot be shown again and is replaced."""
    engine = make_engine(settings)
    try:
        with make_sessionmaker(engine)() as session, session.begin():
            revoked = 0
            for row in keys.list_keys(session):
                if row.revoked_at is None and _is_demo_key(row):
                    keys.revoke(session, str(row.id))
                    revoked += 1
            return keys.create(session, list(DEMO_SCOPES), name=DEMO_KEY_NAME)[1], revoked
    finally:
        engine.dispose()


def serving_explanation(card: ModelCard) -> str:
    """Which weights the registered model carries and why, in one plain sentence."""
    val = card.validation
    selected = str(val.get("selected_phase", ""))
    default = str(val.get("default_phase", ""))
    if card.method.startswith("tsm"):
        return f"a two-stage prediction model ({card.method}): no decision-focused phase."
    if selected.startswith(WARM_START_PHASE):
        return (
            f"the two-stage warm start ({selected}) of the {card.method} run, not its "
            f"decision-focused phase: on the validation split no {card.method} checkpoint beat "
            f"the warm start by enough (paired EOM gain > select_z standard errors), so the "
            "warm start ships, as configured (keep_warm_start)."
        )
    if selected == default:
        return f"the {card.method} phase's default weights ({selected})."
    return (
        f"the {card.method} decision-focused weights ({selected}): they beat the default "
        f"{default} on the validation split (paired EOM gain lower bound "
        f"{float(val.get('selection_score', 0.0)):.4g})."
    )


def example_body(data: Path, n: int = EXAMPLE_CUSTOMERS) -> dict[str, Any]:
    """A request built from the first test customers' raw features, with a modest budget."""
    import pandas as pd

    info = json.loads((data / "dataset.json").read_text())
    frame = pd.read_parquet(data / "test.parquet", columns=info["features"]).head(n)
    records = json.loads(frame.to_json(orient="records"))
    customers = [{"id": f"customer-{i + 1}", "features": r} for i, r in enumerate(records)]
    return {"budget": 0.5 * n, "campaign": "demo", "customers": customers}  # binds: < max spend


def curl_example(
    settings: Settings, body: dict[str, Any], host: str, port: int, api_key: str
) -> str:
    """A ready-to-paste command for the running service."""
    url = f"http://{'127.0.0.1' if host in ('0.0.0.0', '::') else host}:{port}/v1/allocations"
    return (
        f"curl -s -X POST {url} \\\n  -H 'content-type: application/json' \\\n"
        f"  -H {shlex.quote(f'authorization: Bearer {api_key}')} \\\n"
        f"  -d {shlex.quote(json.dumps(body))}"
    )


def run(
    settings: Settings,
    workdir: Path,
    *,
    method: str,
    config: dict[str, Any],
    sizes: tuple[int, int, int],
    seed: int,
    say: Callable[[str], None],
) -> DemoResult:
    """Everything up to (not including) starting the server."""
    n_obs, n_rct, n_test = sizes
    data = workdir / "data"
    say(f"1/3 simulating a campaign into {data} ({n_obs} OBS, {n_rct} RCT, {n_test} test rows)")
    simulate_data(data, n_obs=n_obs, n_rct=n_rct, n_test=n_test, seed=seed)
    say(f"2/3 training {method} (this is the slow step)")
    card = train_model(data, workdir / "runs", method, {**config, "seed": seed}, say)
    model_dir = workdir / "runs" / card.method
    val = card.validation
    say(
        f"    trained {card.method}: validation EOM area {val['eom_area']:.4f}, "
        f"selected {val['selected_phase']} (default {val['default_phase']})"
    )
    version = register_and_activate(settings, model_dir)
    say(f"3/3 registered and activated {version} in {settings.models_dir}")
    explanation = serving_explanation(card)
    say(f"    serving: {explanation}")
    api_key, revoked = create_key(settings)
    if revoked:
        say(f"    revoked {revoked} API key(s) of earlier demo runs")
    say(f"    API key (allocate, read; shown once, stored hashed): {api_key}")
    curl = curl_example(settings, example_body(data), settings.host, settings.port, api_key)
    phase = str(val.get("selected_phase", card.method))
    return DemoResult(data, model_dir, version, card.method, curl, api_key, explanation, phase)
