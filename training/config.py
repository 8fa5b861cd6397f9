"""TrainConfig: the whole training configuration, saved as config.json beside every model."""

from __future__ import annotations

import dataclasses
import inspect
import json
import re
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any, Literal, get_args

Method = Literal[
    "tsm-rct", "tsm-obs", "tsm-pooled", "tsm-ipw", "tsm-dr", "dfcl-pl", "dfcl-mer", "dfcl-ifd",
    "bi-dfcl",
]  # fmt: skip
UpperLoss = Literal["ppl", "pifd", "dpl", "difd"]
MetaGrad = Literal["implicit", "unrolled"]
Reward = Literal["revenue", "dual"]
OutcomeLossChoice = Literal["auto", "mse", "poisson"]
IfdSurrogate = Literal["softmax", "linear"]
TeacherInit = Literal["pooled", "scratch"]
LowerData = Literal["pooled", "obs"]
Estimator = Literal["dr", "ht"]
UpperTarget = Literal["ipw", "aipw"]
ObsWeighting = Literal["none", "ipw", "auto"]

METHODS: tuple[str, ...] = get_args(Method)
TWO_STAGE: tuple[str, ...] = ("tsm-rct", "tsm-obs", "tsm-pooled", "tsm-ipw", "tsm-dr")
DFCL: tuple[str, ...] = ("dfcl-pl", "dfcl-mer", "dfcl-ifd")


@dataclass(frozen=True)
class TrainConfig:
    """Every knob of every method.

    Defaults are what benchmarks/decision_quality.py measures. They follow docs/methods.md where
    the papers publish a value, except where a comment says "(paper: ...)": those were chosen
    on development simulations (data seeds the benchmark never uses).
    """

    method: Method = "bi-dfcl"
    seed: int = 0
    # networks (target = teacher = bridge architecture, §5.5)
    hidden: tuple[int, ...] = (64, 32, 32)
    # optimisation shared by all methods
    # prediction-loss epochs: the whole of a two-stage method, and the warm start of DFCL and
    # Bi-DFCL on the same data (so a decision-focused method starts from, and is compared
    # with, exactly the two-stage model; paper warm start: 20, longer here because it is what
    # DFCL / Bi-DFCL ship unless the decision-focused phase beats it)
    prediction_epochs: int = 30
    epochs: int = 15  # epochs of the decision-focused phase (DFCL, Bi-DFCL) after the warm start
    batch_size: int = 512
    # 0: one pass over the phase's data; >0: that many batches (reshuffled)
    steps_per_epoch: int = 0
    lr: float = 1e-3
    weight_decay: float = 1e-5
    # outcome error of every prediction term: "auto" = Poisson deviance when all revenue and
    # cost labels are >= 0 (spend-like, heavy-tailed), else squared error; resolved before
    # training and saved resolved in config.json
    outcome_loss: OutcomeLossChoice = "auto"
    # the model of a phase is the average of its final epochs' weights (SWA); 0: the last epoch
    average_fraction: float = 0.25
    # RCT validation split; selection by the paired EOM gain over the budget grid
    val_fraction: float = 0.25
    n_budgets: int = 10  # validation grid size (methods §8.7)
    select_z: float = 2.0  # a candidate replaces the default model only if gain > z * SE
    # validation estimator of those gains: "dr" = doubly robust (AIPW) with the default model's
    # predictions as the outcome baseline (it never saw the validation rows); "ht" = the
    # Horvitz-Thompson EOM of the papers
    val_estimator: Estimator = "dr"
    train_budget: float | None = None  # per-capita budget for PPL/PIFD; None -> quantiles below
    train_budget_quantiles: tuple[float, ...] = (0.25, 0.5, 0.75)  # of RCT spend (§8.7)
    # DFCL (methods §4): L = L_DL + alpha * L_PL on RCT after a warm start of prediction_epochs
    # DFCL / Bi-DFCL: the warm start (a prediction model) stays the default model and the
    # decision-focused phase replaces it only on paired validation evidence (select_z). False:
    # the decision-focused phase's average is the default (the phase judged on its own)
    keep_warm_start: bool = True
    alpha: float = 1.0
    dual_lambdas: tuple[float, ...] | None = None  # None -> lambda* at 25/50/75% budgets
    pl_tau: float = 1.0  # in units of the batch std of the dual score (§8.14)
    mer_tau: float = 0.3
    ifd_h: float = 0.3  # 'fix' clip width in units of the batch std of the dual score
    ifd_cost_grad: bool = False  # methods §8.13: notebook uses the revenue gradient only
    # IFD surrogate: "softmax" (smoothed, bounded; default) or "linear" (reference notebook)
    ifd_surrogate: IfdSurrogate = "softmax"
    # Bi-DFCL (methods §5)
    upper_loss: UpperLoss = "ppl"
    # the RCT reward of the PPL upper loss: "ipw" = the logged arm's outcome / propensity (the
    # paper); "aipw" = AIPW pseudo-outcomes of every arm from the teacher, which then never
    # sees the upper fold (the warm start leaves it out too), so the scores are cross-fitted
    upper_target: UpperTarget = "ipw"
    # OBS rows in Bi-DFCL's warm start and lower level: "none" (the paper) or "ipw", weighted
    # like tsm-ipw (training/baselines.py: logged propensity, else estimated), so the warm start
    # is exactly the tsm-ipw model and the lower level's factual labels are de-confounded as far
    # as the propensities allow; "auto": both warm starts are trained and the weighted one (and
    # then weighted lower-level rows) is used only if it beats the unweighted one on paired
    # validation evidence (select_z SEs), so IPW's variance is paid only where it buys something
    # (default: at OBS 10^6 it chose IPW in 4/6 confounded deal-seekers runs (+0.5 to +5.7 %
    # true revenue; 2 misses at 50:1) and kept the unweighted model in 3/3 default-world
    # seeds; docs §5.6)
    obs_weighting: ObsWeighting = "auto"
    ppl_reward: Reward = "revenue"  # methods §8.3: "dual" uses r - lambda* c
    ppl_tau: float = 1.0
    pifd_h: float = 0.3
    meta_grad: MetaGrad = "implicit"
    upper_every: int = 10  # upper-level step every k-th OBS batch (paper: every batch)
    assumed_steps: int = 5  # k assumed SGD steps approximating theta*
    assumed_lr: float = 0.005  # plain SGD; must stay below 2 / lambda_max(H) (~1e2 measured)
    n_cg: int = 5  # (paper: 50; 5 was as good on dev data at a tenth of the cost)
    cg_damping: float = 0.1
    cg_tol: float = 1e-8
    bridge_lr: float = 1e-3
    teacher_epochs: int = 10
    # "pooled": the warm-started target, replaced by its RCT fine-tune only on validation
    # evidence (paper: any uplift model trained on RCT; "scratch")
    teacher_init: TeacherInit = "pooled"
    bridge_factual: bool = True  # teacher also in the logged arm's label (§8.1)
    gate_init: float = 0.1  # initial teacher share of every pseudo-label (paper: unpublished)
    lower_data: LowerData = "pooled"  # lower level also fits RCT factual rows (paper: "obs")
    rct_upper_batch: int = 4096
    # cross-fitting: share of the RCT training rows kept for the upper level only; the teacher
    # (and a pooled lower level) never see them, so the bridge learns how far to trust the
    # teacher from rows the teacher did not fit. 0: every level uses every row (the papers)
    upper_fold: float = 0.5
    extra: dict[str, Any] = field(default_factory=dict)  # free-form notes, kept verbatim

    def __post_init__(self) -> None:
        """Reject impossible settings early, naming the field."""
        checks: list[tuple[bool, str]] = [
            (self.method in METHODS, f"method must be one of {METHODS}, got {self.method!r}"),
            (self.upper_loss in get_args(UpperLoss), f"upper_loss: bad value {self.upper_loss!r}"),
            (
                self.val_estimator in get_args(Estimator),
                f"val_estimator must be one of {get_args(Estimator)}, got {self.val_estimator!r}",
            ),
            (
                self.obs_weighting in get_args(ObsWeighting),
                f"obs_weighting must be one of {get_args(ObsWeighting)}, "
                f"got {self.obs_weighting!r}",
            ),
            (
                self.upper_target in get_args(UpperTarget),
                f"upper_target must be one of {get_args(UpperTarget)}, got {self.upper_target!r}",
            ),
            (
                self.upper_target == "ipw" or (self.upper_loss == "ppl" and self.upper_fold > 0),
                "upper_target 'aipw' needs upper_loss 'ppl' and upper_fold > 0 (cross-fitting)",
            ),
            (self.meta_grad in get_args(MetaGrad), f"meta_grad: bad value {self.meta_grad!r}"),
            (self.ppl_reward in get_args(Reward), f"ppl_reward: bad value {self.ppl_reward!r}"),
            (
                self.outcome_loss in get_args(OutcomeLossChoice),
                f"outcome_loss must be one of {get_args(OutcomeLossChoice)}, "
                f"got {self.outcome_loss!r}",
            ),
            (0.0 <= self.average_fraction <= 1.0, "average_fraction must lie in [0, 1]"),
            (0.0 <= self.upper_fold < 1.0, "upper_fold must lie in [0, 1)"),
            (
                self.ifd_surrogate in get_args(IfdSurrogate),
                f"ifd_surrogate: bad value {self.ifd_surrogate!r}",
            ),
            (
                self.teacher_init in get_args(TeacherInit),
                f"teacher_init: bad {self.teacher_init!r}",
            ),
            (
                self.lower_data in get_args(LowerData),
                f"lower_data: bad value {self.lower_data!r}",
            ),
            (self.epochs >= 1, "epochs must be >= 1"),
            (self.batch_size >= 2, "batch_size must be >= 2"),
            (self.steps_per_epoch >= 0, "steps_per_epoch must be >= 0"),
            (0.0 < self.val_fraction < 1.0, "val_fraction must be in (0, 1)"),
            (self.n_budgets >= 2, "n_budgets must be >= 2"),
            (self.select_z >= 0, "select_z must be >= 0"),
            (
                self.lr > 0 and self.bridge_lr > 0 and self.assumed_lr > 0,
                "learning rates must be > 0",
            ),
            (self.upper_every >= 1 and self.assumed_steps >= 1, "upper_every/assumed_steps >= 1"),
            (self.n_cg >= 1 and self.cg_damping >= 0, "n_cg >= 1 and cg_damping >= 0"),
            (
                self.prediction_epochs >= 1 and self.teacher_epochs >= 1,
                "prediction_epochs and teacher_epochs must be >= 1",
            ),
            (all(h >= 1 for h in self.hidden), "hidden sizes must be >= 1"),
            (self.train_budget is None or self.train_budget > 0, "train_budget must be > 0"),
            (
                len(self.train_budget_quantiles) > 0
                and all(0 < q < 1 for q in self.train_budget_quantiles),
                "train_budget_quantiles must be non-empty and inside (0, 1)",
            ),
        ]
        for ok, message in checks:
            if not ok:
                raise ValueError(message)

    def to_json(self) -> dict[str, Any]:
        """Plain JSON dict (tuples become lists)."""
        return json.loads(json.dumps(dataclasses.asdict(self)))

    @classmethod
    def from_json(cls, data: dict[str, Any]) -> TrainConfig:
        """Inverse of to_json; unknown keys are an error so typos do not pass silently.

        The one exception: `"device": "cpu"`, which configs saved before the field was dropped
        still hold (cpu was its only legal value), is skipped.
        """
        data = _without_legacy_device(data)
        names = {f.name for f in dataclasses.fields(cls)}
        unknown = sorted(set(data) - names)
        if unknown:
            raise ValueError(f"unknown config keys {unknown}; known: {sorted(names)}")
        kwargs = dict(data)
        for key in ("hidden", "dual_lambdas", "train_budget_quantiles"):
            if kwargs.get(key) is not None:
                kwargs[key] = tuple(kwargs[key])
        return cls(**kwargs)

    @classmethod
    def load(cls, path: Path) -> TrainConfig:
        """Read a JSON config file."""
        try:
            data = json.loads(Path(path).read_text())
        except (OSError, json.JSONDecodeError) as exc:
            raise ValueError(f"cannot read config {path}: {exc}") from exc
        if not isinstance(data, dict):
            raise ValueError(f"config {path} must hold a JSON object")
        return cls.from_json(data)

    def save(self, path: Path) -> None:
        """Write config.json next to the model."""
        Path(path).write_text(json.dumps(self.to_json(), indent=2, sort_keys=True) + "\n")

    def replace(self, **changes: Any) -> TrainConfig:
        """Copy with some fields changed (validated again)."""
        return dataclasses.replace(self, **changes)


def _without_legacy_device(data: dict[str, Any]) -> dict[str, Any]:
    """data without the obsolete "device" key if it holds "cpu"; any other value is an error."""
    if "device" not in data:
        return data
    if data["device"] != "cpu":
        raise ValueError(
            f"device {data['device']!r}: training runs on cpu only (drop the obsolete 'device' key)"
        )
    return {key: value for key, value in data.items() if key != "device"}


def field_help() -> dict[str, str]:
    """Each TrainConfig field's comment (the lines just above it plus its trailing comment).

    The comments are the fields' documentation; `dfcl train --help` shows them. Empty when
    the source is not available (e.g. a frozen build).
    """
    try:
        lines = inspect.getsource(TrainConfig).splitlines()
    except (OSError, TypeError):
        return {}
    names = {f.name for f in dataclasses.fields(TrainConfig)}
    out: dict[str, str] = {}
    above: list[str] = []
    for line in lines:
        stripped = line.strip()
        if stripped.startswith("#"):
            above.append(stripped.lstrip("#").strip())
            continue
        match = _FIELD.match(line)
        if match and match.group(1) in names:
            trailing = match.group(2) or ""
            out[match.group(1)] = " ".join([*above, trailing.strip()]).strip()
        above = []
    return out


_FIELD = re.compile(r"^    (\w+): [^#]*?(?:#(.*))?$")
