"""Tiny end-to-end training runs: every method learns, selects by validation, and exports."""

from __future__ import annotations

import dataclasses
import importlib.util
import json
from pathlib import Path

import numpy as np
import onnxruntime as ort
import pandas as pd
import pytest
import torch
from typer.testing import CliRunner

from app.cli import app
from training import losses
from training.config import METHODS, TrainConfig
from training.selection import Checkpoints, score
from training.train import Trainer, prepare, train


def _factual_loss(net, data, kind) -> float:
    with torch.no_grad():
        rev_hat, cost_hat = net(data.x)
    args = (data.treatment, data.revenue, data.cost, None, net.revenue_scale, net.cost_scale, kind)
    return float(losses.prediction_loss(rev_hat, cost_hat, *args))


CASES = [(m, True) for m in METHODS] + [("dfcl-pl", False), ("bi-dfcl", False)]


@pytest.mark.parametrize(("method", "keep_warm_start"), CASES)
def test_every_method_trains_and_selects_by_paired_gain(
    method, keep_warm_start, tiny_tables, tiny_config
):
    """The default model (the warm start's weight average for DFCL and Bi-DFCL unless
    keep_warm_start is off, else the main phase's) is kept unless another candidate's paired
    validation gain over it clears select_z SEs; the returned net holds the chosen weights."""
    rct, obs = tiny_tables
    cfg = tiny_config(method, lr=3e-3, select_z=0.5, keep_warm_start=keep_warm_start)
    result = train(cfg, rct, obs, progress=False)
    two_stage = method.startswith("tsm")
    main = [h for h in result.history if h["phase"] == method]
    assert len(main) == 3  # prediction_epochs (two-stage) or epochs (decision phase)
    average = [h for h in result.history if h["phase"] == f"{method}-average"]
    warm = [h for h in result.history if h["phase"] == "warm-start-average"]
    assert len(average) == 1 and average[0]["averaged_epochs"] == 1  # ceil(0.25 * 3)
    assert len(warm) == (0 if two_stage else 1)
    candidates = main + average + warm
    default = warm[0] if warm and keep_warm_start else average[0]
    val = result.card["validation"]
    assert val["selected_by"] == "paired_gain_lcb"
    assert val["default_phase"] == default["phase"]
    assert default["val_gain"] == 0.0 and default["val_gain_se"] == 0.0
    lcb = [h["val_gain"] - cfg.select_z * h["val_gain_se"] for h in candidates]
    best = candidates[int(np.argmax(lcb))] if max(lcb) > 0 else default
    assert val["selected_phase"] == best["phase"]
    assert val["selection_score"] == pytest.approx(max(max(lcb), 0.0))
    assert val["eom_mean_revenue"] == pytest.approx(best["val_revenue"])
    assert val["eom_area"] == pytest.approx(best["val_area"])
    # the returned network is the selected model: its validation revenue is the recorded one
    _, _, val_split, _ = prepare(result.config, rct, obs)
    rescored = score(result.net, val_split, np.asarray(val["budgets"]))
    assert rescored.row["val_revenue"] == pytest.approx(val["eom_mean_revenue"], rel=1e-6)
    assert result.config.outcome_loss == "poisson"  # simulator labels are all >= 0
    x = torch.from_numpy(result.val_features)
    rev, cost = result.net(x)
    assert rev.shape == (len(x), 3) and bool((rev >= 0).all() and (cost >= 0).all())


@pytest.mark.parametrize("kind", ["mse", "poisson"])
@pytest.mark.parametrize("source", ["rct", "obs", "pooled"])
def test_prediction_epochs_reduce_the_factual_loss(source, kind, tiny_tables, tiny_config):
    """Two-stage objective (also the teacher and the warm start) goes down with training."""
    rct, obs = tiny_tables
    cfg = tiny_config(f"tsm-{source}", lr=3e-3, outcome_loss=kind)
    _, tr, val, obs_split = prepare(cfg, rct, obs)
    data = {"rct": tr, "obs": obs_split, "pooled": tr.concat(obs_split)}[source]
    run = Trainer(cfg, tr, val, obs_split, progress=False)
    net = run.outcome_net(data, 0)
    before = _factual_loss(net, data, kind)
    run.prediction_epochs(net, data, 4, source == "rct", "fit")
    assert _factual_loss(net, data, kind) < before


def test_trainer_refuses_an_unresolved_outcome_loss(tiny_tables, tiny_config):
    rct, obs = tiny_tables
    cfg = tiny_config("tsm-pooled")
    _, tr, val, obs_split = prepare(cfg, rct, obs)
    with pytest.raises(ValueError, match="outcome_loss 'auto'"):
        Trainer(cfg, tr, val, obs_split, progress=False)


@pytest.mark.parametrize("method", ["dfcl-pl", "dfcl-mer", "dfcl-ifd"])
def test_dfcl_steps_raise_the_policy_value_they_target(method, tiny_tables, tiny_config):
    """Full-batch steps on the DFCL loss raise the smoothed (PL/MER) or exact (IFD) dual value."""
    rct, obs = tiny_tables
    cfg = tiny_config(method, alpha=0.0, lr=1e-2, outcome_loss="poisson")
    _, tr, val, obs_split = prepare(cfg, rct, obs)
    run = Trainer(cfg, tr, val, obs_split, progress=False)
    net = run.outcome_net(tr, 0)
    run.prediction_epochs(net, tr, 2, True, "warm-start")
    lambdas = run.dual_lambdas(net)

    def value() -> float:
        with torch.no_grad():
            rev_hat, cost_hat = net(tr.x)
        if method == "dfcl-ifd":
            return sum(
                float(losses.hajek_dual_value((rev_hat - m * cost_hat).argmax(1) == tr.treatment,
                                              tr, m))
                for m in lambdas
            )  # fmt: skip
        return -float(run.decision_loss(net, rev_hat, cost_hat, tr, lambdas))

    before = value()
    opt = torch.optim.Adam(net.parameters(), lr=1e-2)
    for _ in range(15):
        rev_hat, cost_hat = net(tr.x)
        opt.zero_grad()
        run.decision_loss(net, rev_hat, cost_hat, tr, lambdas).backward()
        opt.step()
    assert value() > before


def test_bad_inputs_are_named(tiny_tables, tiny_config):
    rct, _ = tiny_tables
    with pytest.raises(ValueError, match="needs an OBS table"):
        train(tiny_config("tsm-obs"), rct, None, progress=False)
    with pytest.raises(ValueError, match="unknown config keys"):
        TrainConfig.from_json({"epochs": 2, "epoch": 3})
    with pytest.raises(ValueError, match="upper_loss"):
        TrainConfig(upper_loss="nope")
    with pytest.raises(ValueError, match="outcome_loss must be one of"):
        TrainConfig(outcome_loss="huber")
    with pytest.raises(ValueError, match="average_fraction"):
        TrainConfig(average_fraction=1.5)
    with pytest.raises(ValueError, match="upper_fold"):
        TrainConfig(upper_fold=1.0)
    with pytest.raises(ValueError, match="prediction_epochs and teacher_epochs must be >= 1"):
        TrainConfig(prediction_epochs=0)
    with pytest.raises(ValueError, match=r"unknown config keys \['warm_start_epochs'\]"):
        TrainConfig.from_json({"warm_start_epochs": 30})  # renamed: old configs fail loudly
    with pytest.raises(ValueError, match="lower_data: bad value 'rct'"):
        TrainConfig.from_json({"lower_data": "rct"})
    with pytest.raises(ValueError, match="ifd_surrogate"):
        TrainConfig.from_json({"ifd_surrogate": "cubic"})


def test_a_legacy_device_key_loads_only_with_its_one_legal_value(tmp_path):
    """config.json files written before `device` was dropped still hold "device": "cpu"."""
    legacy = {**TrainConfig(epochs=2).to_json(), "device": "cpu"}
    (tmp_path / "config.json").write_text(json.dumps(legacy))
    assert TrainConfig.load(tmp_path / "config.json") == TrainConfig(epochs=2)
    assert "device" not in TrainConfig().to_json()
    with pytest.raises(ValueError, match="device 'cuda': training runs on cpu only"):
        TrainConfig.from_json({"device": "cuda"})


def test_cli_trains_exports_and_onnxruntime_loads(tiny_dir, tmp_path, tiny_config):
    cfg = TrainConfig(**{**tiny_config("bi-dfcl").to_json(), "hidden": (16, 8)})
    (tmp_path / "cfg.json").write_text(json.dumps(cfg.to_json()))
    out = tmp_path / "model"
    runner = CliRunner()
    args = ["train", "--method", "bi-dfcl", "--rct", str(tiny_dir / "rct.parquet"),
            "--obs", str(tiny_dir / "obs.parquet"), "--out", str(out),
            "--config", str(tmp_path / "cfg.json"), "--seed", "4", "--quiet"]  # fmt: skip
    result = runner.invoke(app, args)
    assert result.exit_code == 0, result.output
    desc = json.loads((out / "model.json").read_text())
    assert desc["method"] == "bi-dfcl" and desc["config"]["seed"] == 4
    selected = desc["validation"]["selected_phase"]
    assert f"selected {selected} (default warm-start-average;" in result.output
    assert desc["treatments"][0] == "control" and len(desc["treatments"]) == 3
    assert json.loads((out / "config.json").read_text())["seed"] == 4
    session = ort.InferenceSession(str(out / "model.onnx"))
    x = np.zeros((5, desc["n_features"]), dtype=np.float32)
    rev, cost = session.run(["revenue", "cost"], {"features": x})
    assert rev.shape == cost.shape == (5, 3)
    from app.inference import OnnxModel
    from training.data import load_table

    test = load_table(tiny_dir / "test.parquet", "rct", n_treatments=3)
    rev_onnx, cost_onnx = OnnxModel.load(out).predict_columns(test.features)
    assert rev_onnx.shape == (test.n_rows, 3) and np.isfinite(cost_onnx).all()
    again = runner.invoke(app, ["export", str(out)])
    assert again.exit_code == 0, again.output
    assert json.loads((out / "model.json").read_text())["version"] != desc["version"]
    bad = runner.invoke(app, ["train", "--method", "tsm-rct", "--rct", str(tmp_path / "none.csv"),
                              "--out", str(tmp_path / "x")])  # fmt: skip
    assert bad.exit_code != 0 and "none.csv" in bad.output and "Traceback" not in bad.output


def test_train_help_lists_every_config_field():
    """`dfcl train` has one option per TrainConfig field, generated from the dataclass."""
    result = CliRunner().invoke(app, ["train", "--help"], env={"COLUMNS": "300"})
    assert result.exit_code == 0, result.output
    for f in dataclasses.fields(TrainConfig):
        assert f"--{f.name.replace('_', '-')} " in result.output, f.name
    assert "--no-keep-warm-start" in result.output  # booleans are on/off pairs
    assert "ppl|pifd|dpl|difd" in result.output  # Literal fields list their choices


def test_cli_options_override_the_config_file_which_overrides_defaults(tiny_dir, tmp_path):
    file_cfg = {"prediction_epochs": 3, "batch_size": 64, "hidden": [16, 8], "device": "cpu",
                "steps_per_epoch": 4, "upper_loss": "dpl"}  # fmt: skip
    (tmp_path / "cfg.json").write_text(json.dumps(file_cfg))
    out = tmp_path / "model"
    base = ["train", "--method", "tsm-rct", "--rct", str(tiny_dir / "rct.parquet"),
            "--out", str(out), "--config", str(tmp_path / "cfg.json"), "--quiet"]  # fmt: skip
    options = ["--prediction-epochs", "2", "--hidden", "8,4", "--no-keep-warm-start",
               "--train-budget", "1.5", "--train-budget-quantiles", "0.3,0.6",
               "--upper-loss", "pifd", "--seed", "7"]  # fmt: skip
    result = CliRunner().invoke(app, base + options)
    assert result.exit_code == 0, result.output
    saved = json.loads((out / "config.json").read_text())
    assert saved["prediction_epochs"] == 2 and saved["hidden"] == [8, 4]  # option > file
    assert saved["batch_size"] == 64 and saved["steps_per_epoch"] == 4  # file > default
    assert saved["lr"] == TrainConfig().lr  # default where neither says otherwise
    assert saved["keep_warm_start"] is False and saved["train_budget"] == 1.5
    assert saved["train_budget_quantiles"] == [0.3, 0.6] and saved["upper_loss"] == "pifd"
    assert saved["seed"] == 7 and saved["method"] == "tsm-rct" and "device" not in saved
    bad = CliRunner().invoke(app, base + ["--upper-fold", "1.0"])
    assert bad.exit_code != 0 and "Traceback" not in bad.output
    assert "error: upper_fold must lie in [0, 1)" in bad.output
    bad = CliRunner().invoke(app, base + ["--hidden", "8,x"])
    assert bad.exit_code != 0 and "error: '8,x' is not a comma list of int" in bad.output


def _hillstrom_csv(path, n: int = 3000):
    """Synthetic rows in the original Hillstrom CSV layout (tests never read shared data)."""
    rng = np.random.default_rng(0)
    segment = rng.choice(["No E-Mail", "Mens E-Mail", "Womens E-Mail"], n)
    history = np.round(rng.lognormal(5.0, 0.9, n), 2)
    visit = rng.binomial(1, np.where(segment == "No E-Mail", 0.1, 0.17))
    buy = visit * rng.binomial(1, 0.2, n)
    pd.DataFrame({
        "recency": rng.integers(1, 13, n), "history_segment": "1) $0 - $100", "history": history,
        "mens": rng.integers(0, 2, n), "womens": rng.integers(0, 2, n),
        "zip_code": rng.choice(["Urban", "Surburban", "Rural"], n), "newbie": rng.integers(0, 2, n),
        "channel": rng.choice(["Phone", "Web", "Multichannel"], n), "segment": segment,
        "visit": visit, "conversion": buy, "spend": np.round(buy * rng.uniform(30, 500, n), 2),
    }).to_csv(path, index=False)  # fmt: skip


def test_benchmark_quick_runs_end_to_end(tmp_path):
    spec = importlib.util.spec_from_file_location(
        "decision_quality", Path(__file__).parents[2] / "benchmarks" / "decision_quality.py"
    )
    bench = importlib.util.module_from_spec(spec)
    spec.loader.exec_module(bench)
    _hillstrom_csv(tmp_path / "hillstrom.csv")
    args = ["--quick", "--seeds", "2", "--out", str(tmp_path), "--hillstrom",
            str(tmp_path / "hillstrom.csv")]  # fmt: skip
    assert bench.main(args) == 0
    payload = json.loads((tmp_path / "decision_quality_quick.json").read_text())
    assert payload["complete"] is True and not list(tmp_path.glob("*.tmp"))
    settings = {r["setting"] for r in payload["summary"]}
    assert settings == {"sim 10:1", "sim 50:1", "hillstrom"}
    bi = [r for r in payload["summary"] if r["method"] == "bi-dfcl" and r["setting"] == "sim 10:1"]
    assert len(bi[0]["mid_gain"]) == 2 and bi[0]["seconds"] > 0
    oracle = [r for r in payload["summary"] if r["method"] == "oracle"][0]
    assert all(oracle[b] >= bi[0][b] - 1e-9 for b in ("low", "mid", "high"))
    pooled = [r for r in payload["summary"] if r["method"] == "tsm-pooled"][0]
    assert pooled["mid_vs_pooled"] == [0.0, 0.0]  # paired with itself
    ceiling = [r for r in payload["summary"] if r["method"] == "pooled-unconfounded"][0]
    assert ceiling["mid_gap_share"] == pytest.approx(1.0) and pooled["mid_gap_share"] == 0.0
    assert (tmp_path / "decision_quality_quick.png").stat().st_size > 0


def test_benchmark_quick_runs_the_deal_seekers_regime(tmp_path):
    """Smoke test of the regime where de-biasing has room: every practitioner baseline, both
    Bi-DFCL upper targets with their "-raw" rows (one training each), the ceiling, the oracle."""
    spec = importlib.util.spec_from_file_location(
        "decision_quality", Path(__file__).parents[2] / "benchmarks" / "decision_quality.py"
    )
    bench = importlib.util.module_from_spec(spec)
    spec.loader.exec_module(bench)
    methods = "tsm-pooled,tsm-ipw,tsm-dr,bi-dfcl,bi-dfcl-raw,bi-dfcl-aipw-raw,pooled-unconfounded"
    args = ["--quick", "--seeds", "2", "--ratios", "10", "--regime", "deal-seekers",
            "--methods", methods, "--out", str(tmp_path), "--tag", "deal"]  # fmt: skip
    assert bench.main(args) == 0
    payload = json.loads((tmp_path / "decision_quality_quick_deal.json").read_text())
    rows = {r["method"]: r for r in payload["summary"]}
    assert {r["setting"] for r in payload["summary"]} == {"sim 10:1 deal-seekers"}
    assert set(rows) == {*methods.split(","), "oracle"}
    assert "bi-dfcl-aipw" not in rows  # only its -raw row was asked for
    raw = {r["seed"]: r["seconds"] for r in payload["records"] if r["method"] == "bi-dfcl-raw"}
    full = {r["seed"]: r["seconds"] for r in payload["records"] if r["method"] == "bi-dfcl"}
    assert raw == full  # the "-raw" row is the same training run
    assert all(rows["oracle"][b] >= rows["tsm-pooled"][b] - 1e-9 for b in ("low", "mid", "high"))


@pytest.mark.parametrize(
    ("method", "two_stage"), [("bi-dfcl", "tsm-pooled"), ("dfcl-pl", "tsm-rct")]
)
def test_a_decision_phase_that_cannot_prove_itself_ships_exactly_the_two_stage_model(
    method, two_stage, tiny_tables, tiny_config
):
    """The warm start is the two-stage recipe on the same data, so with an unreachable bar
    (select_z huge) the decision-focused method returns the two-stage model, bit for bit."""
    rct, obs = tiny_tables
    decision = train(tiny_config(method, select_z=1e9), rct, obs, progress=False)
    baseline = train(tiny_config(two_stage), rct, obs, progress=False)
    assert decision.card["validation"]["selected_phase"] == "warm-start-average"
    x = torch.from_numpy(decision.val_features)
    with torch.no_grad():
        for got, want in zip(decision.net(x), baseline.net(x), strict=True):
            torch.testing.assert_close(got, want, rtol=0, atol=0)


@pytest.mark.parametrize(
    ("method", "two_stage", "weighted"),
    [("bi-dfcl", "tsm-pooled", False), ("dfcl-pl", "tsm-rct", True)],
)
def test_the_warm_start_is_the_selected_two_stage_model(
    method, two_stage, weighted, tiny_tables, tiny_config
):
    """With no bar (select_z = 0: any positive paired gain wins), the two-stage method ships
    a single epoch rather than its average; the warm start must be that same model."""
    rct, obs = tiny_tables
    baseline = train(tiny_config(two_stage, select_z=0.0), rct, obs, progress=False)
    assert baseline.card["validation"]["selected_phase"] == two_stage  # an epoch, not the average
    cfg = tiny_config(method, select_z=0.0, outcome_loss=baseline.config.outcome_loss)
    _, tr, val, obs_split = prepare(cfg, rct, obs)
    run = Trainer(cfg, tr, val, obs_split, progress=False)
    data = tr if weighted else tr.concat(obs_split)
    net = run.outcome_net(data, 0)
    warm = run.warm_start(net, data, weighted, Checkpoints())
    assert warm.scored.row["phase"] == "warm-start"
    x = torch.from_numpy(baseline.val_features)
    with torch.no_grad():
        for got, want in zip(net(x), baseline.net(x), strict=True):
            torch.testing.assert_close(got, want, rtol=0, atol=0)


def test_benchmark_recorder_keeps_finished_records_of_a_stopped_run(tmp_path: Path) -> None:
    """A 10^6-row seed takes most of an hour: every finished method must already be on disk."""
    spec = importlib.util.spec_from_file_location(
        "decision_quality", Path(__file__).parents[2] / "benchmarks" / "decision_quality.py"
    )
    bench = importlib.util.module_from_spec(spec)
    spec.loader.exec_module(bench)
    path = tmp_path / "run.json"
    recorder = bench.Recorder(path, {"command": "python x"})
    recorder.add({"method": "tsm-pooled", "seed": 0})
    recorder.add({"method": "bi-dfcl", "seed": 0})
    partial = json.loads(path.read_text())  # what a killed process leaves
    assert partial["complete"] is False and partial["command"] == "python x"
    assert [r["method"] for r in partial["records"]] == ["tsm-pooled", "bi-dfcl"]
    assert recorder.finish([{"method": "bi-dfcl"}]) >= 0
    final = json.loads(path.read_text())
    assert final["complete"] is True and final["summary"] == [{"method": "bi-dfcl"}]
