"""Synthetic discount campaign with known ground truth, for testing that decisions improve.

Population: customers described by 8 numeric and 2 categorical features. Treatment k = 0..K-1 is
a discount of intensity d_k = k/(K-1) (fraction `max_discount * d_k` off the basket).

Per customer, all driven by observed features only (so the truth is E[outcome | x, k]):
  purchase probability  p_ik = sigmoid(alpha_i + beta_i * h_i(d_k))
  h_i(d) = (1 - exp(-gamma_i d)) / (1 - exp(-gamma_i))          diminishing returns, h(0)=0, h(1)=1
  beta_i  = response at full intensity: price-sensitive customers respond, others barely,
            "sleeping dogs" (frequent buyers with low engagement) respond negatively
  expected revenue R_ik = p_ik * m_i                              m_i: mean basket (heavy-tailed)
  expected cost    C_ik = p_ik * max_discount * d_k * m_i + contact_i * [k > 0]
Observed: purchase ~ Bernoulli(p), basket ~ m_i * W_i * LogNormal(-s_i^2/2, s_i) with s_i
larger for high-value customers (heteroscedastic, heavy right tail); revenue = purchase * basket,
cost = purchase * discount * basket + contact. W_i = exp(0.4 u_i - 0.08), u_i ~ N(0, 1), is a
hidden "wallet" factor that is not among the features and has mean 1, so the truth stays
E[outcome | x, k].

Regime "deal-seekers" (`SimulatorParams.regime`) adds a hidden trait D_i ~ N(0, 1) (a deal-seeker
score), correlated DEAL_CORRELATION with the observed price sensitivity. It raises the customer's
response to discounts (beta_i += deal_response * D_i), and the OBS logging policy targets it
with a sign that depends on the channel (DEAL_REACH): online, coupon-site and affiliate
retargeting finds deal-seekers and gives them deep discounts; on the phone, staff hand
discounts to loyal customers, who are the opposite of deal-seekers. The CRM records neither.
Within an arm, a model fit to OBS therefore over-states the response of web customers and
under-states that of phone customers -- a ranking error that the budget multiplier cannot
absorb. The truth stays E[outcome | x, k]: the trait is integrated out given x (Gauss-Hermite).
`deal_targeting` and `deal_response` were set by one criterion only, the de-biasing ceiling,
before any decision-focused method ran on the regime (docs/methods.md, "The deal-seekers
regime").

RCT assigns arms uniformly. The OBS logging policy gave deeper discounts to customers who looked
valuable (engaged, big history, recent, and -- as sales staff know -- a big wallet): exactly the
ones who buy a lot anyway. A naive OBS comparison therefore over-states the effect, and because
the wallet is hidden, no feature-based adjustment fully removes the bias. `bias` scales that
confounding (0 = unconfounded); the OBS `propensity` column is the true logging probability.
"""

from __future__ import annotations

import json
import math
from dataclasses import asdict, dataclass, field
from pathlib import Path
from typing import Any

import numpy as np
import numpy.typing as npt
import pandas as pd

from app.core.solver import Solution, allocate
from training.data.tables import write_frame

FloatArray = npt.NDArray[np.float64]
IntArray = npt.NDArray[np.int64]

NUMERIC = (
    "recency", "frequency", "history", "engagement", "price_sensitivity", "tenure", "age",
    "web_visits",
)  # fmt: skip
CATEGORICAL = {
    "channel": ("web", "phone", "multichannel"),
    "region": ("urban", "suburban", "rural"),
}
WALLET_SD = 0.4  # log-sd of the hidden wallet factor
REGIMES = ("default", "deal-seekers")
DEAL_CORRELATION = 0.5  # corr(D, standardised price_sensitivity): the part the features show
# sign and weight of the logging policy's D-targeting by channel (retargeting vs phone staff)
DEAL_REACH = {"web": 1.0, "multichannel": 0.3, "phone": -1.0}
_QUADRATURE = 24  # Gauss-Hermite nodes for integrating D out of the truth
CONTACT_COST = {"web": 0.05, "phone": 0.40, "multichannel": 0.20}  # per treated customer


@dataclass(frozen=True)
class SimulatorParams:
    """Everything that defines a simulated data set (saved in dataset.json)."""

    n_obs: int = 100_000
    n_rct: int = 10_000
    n_test: int = 100_000
    n_treatments: int = 5
    bias: float = 1.0
    seed: int = 0
    max_discount: float = 0.20
    regime: str = "default"
    # deal-seekers regime only (registered values, see the module docstring): the logging
    # policy's weight on the hidden trait, and the response logit shift per unit of it
    deal_targeting: float = 2.0
    deal_response: float = 2.0

    def __post_init__(self) -> None:
        if min(self.n_obs, self.n_rct, self.n_test) < 1:
            raise ValueError("n_obs, n_rct and n_test must be positive")
        if self.n_treatments < 2:
            raise ValueError(f"n_treatments must be >= 2, got {self.n_treatments}")
        if not (0.0 < self.max_discount < 1.0):
            raise ValueError(f"max_discount must lie in (0, 1), got {self.max_discount}")
        if not np.isfinite(self.bias) or self.bias < 0:
            raise ValueError(f"bias must be a finite number >= 0, got {self.bias}")
        if self.regime not in REGIMES:
            raise ValueError(f"regime must be one of {REGIMES}, got {self.regime!r}")
        for name in ("deal_targeting", "deal_response"):
            value = getattr(self, name)
            if not np.isfinite(value) or value < 0:
                raise ValueError(f"{name} must be finite and >= 0, got {value}")


def _sigmoid(x: FloatArray) -> FloatArray:
    return 1.0 / (1.0 + np.exp(-x))


def treatment_names(n_treatments: int, max_discount: float = 0.20) -> list[str]:
    """Arm labels: control, then the discount percentage of each intensity."""
    pct = 100.0 * max_discount * np.arange(n_treatments) / (n_treatments - 1)
    return ["control"] + [f"discount_{p:g}pct" for p in pct[1:]]


def sample_features(n: int, rng: np.random.Generator) -> pd.DataFrame:
    """Draw n customers; latent activity/value factors make features correlated."""
    activity = rng.standard_normal(n)
    value = rng.standard_normal(n)
    age = np.clip(rng.normal(42.0, 12.0, n), 18.0, 90.0)
    recency = np.clip(np.round(np.exp(1.4 - 0.6 * activity + 0.4 * rng.standard_normal(n))), 1, 24)
    frequency = rng.poisson(np.exp(0.9 + 0.5 * activity + 0.2 * value)).astype(np.float64)
    history = np.round(np.exp(4.5 + 0.8 * value + 0.2 * activity + 0.3 * rng.standard_normal(n)), 2)
    engagement = 0.7 * activity + 0.7 * rng.standard_normal(n)
    price_sensitivity = rng.standard_normal(n) - 0.3 * value
    tenure = np.round(rng.uniform(0.0, 10.0, n), 1)
    web_visits = rng.poisson(np.exp(1.0 + 0.3 * activity - 0.01 * (age - 42.0))).astype(np.float64)
    young = _sigmoid((35.0 - age) / 8.0)  # younger customers shop on the web
    u = rng.uniform(size=n)
    channel = np.where(u < 0.2 + 0.5 * young, "web", np.where(u < 0.75 + 0.1 * young, "phone",
                                                                 "multichannel"))  # fmt: skip
    region = rng.choice(np.array(CATEGORICAL["region"]), size=n, p=[0.45, 0.35, 0.20])
    return pd.DataFrame({
        "recency": recency, "frequency": frequency, "history": history, "engagement": engagement,
        "price_sensitivity": price_sensitivity, "tenure": tenure, "age": np.round(age),
        "web_visits": web_visits, "channel": channel, "region": region,
    })  # fmt: skip


@dataclass(frozen=True)
class _Drivers:
    alpha: FloatArray  # (N,) baseline purchase logit
    beta: FloatArray  # (N,) logit shift at full intensity (negative for sleeping dogs)
    gamma: FloatArray  # (N,) saturation speed of the intensity response
    basket: FloatArray  # (N,) mean basket value m_i
    noise: FloatArray  # (N,) log-sd of the basket
    contact: FloatArray  # (N,) cost of treating at all


def _drivers(features: pd.DataFrame) -> _Drivers:
    """Outcome parameters as deterministic functions of the observed features."""
    col = {c: features[c].to_numpy() for c in (*NUMERIC, *CATEGORICAL)}
    num = {c: np.asarray(col[c], dtype=np.float64) for c in NUMERIC}
    log_hist = np.log(num["history"] / 90.0)
    web = col["channel"] == "web"
    multi = col["channel"] == "multichannel"
    rural = col["region"] == "rural"
    alpha = (
        -2.0 + 0.5 * num["engagement"] - 0.4 * np.log(num["recency"])
        + 0.25 * np.log1p(num["frequency"]) + 0.2 * multi + 0.15 * log_hist
    )  # fmt: skip
    dog = _sigmoid(3.0 * (np.log1p(num["frequency"]) - 1.6)) * _sigmoid(-3.0 * (num["engagement"]
                                                                                + 0.2))  # fmt: skip
    beta = (
        1.8 * _sigmoid(2.0 * num["price_sensitivity"]) - 0.2 + 0.35 * web - 0.25 * rural
        - 1.6 * dog + 0.1 * np.tanh(num["web_visits"] - 3.0)
    )  # fmt: skip
    gamma = 0.3 + 4.0 * _sigmoid(num["tenure"] - 5.0)
    basket = 32.0 * np.exp(0.55 * log_hist + 0.004 * (num["age"] - 42.0))
    noise = 0.3 + 0.6 * _sigmoid(1.5 * log_hist)
    contact = np.select([web, multi], [CONTACT_COST["web"], CONTACT_COST["multichannel"]],
                        CONTACT_COST["phone"])  # fmt: skip
    return _Drivers(alpha, beta, gamma, basket, noise, contact)


def _purchase_prob(
    d: _Drivers, n_treatments: int, deal: FloatArray | None = None, response: float = 0.0
) -> FloatArray:
    """p_ik (N, K) with concave response in intensity; deal (N,): the hidden trait, if any,
    which shifts the full-intensity response logit by `response` per unit."""
    intensity = np.arange(n_treatments) / (n_treatments - 1)  # (K,)
    g = d.gamma[:, None]
    h = (1.0 - np.exp(-g * intensity)) / (1.0 - np.exp(-g))  # (N, K)
    beta = d.beta if deal is None else d.beta + response * deal
    return _sigmoid(d.alpha[:, None] + beta[:, None] * h)


_PRICE_SENSITIVITY_SD = math.sqrt(1.09)  # population sd of sample_features' price_sensitivity


def deal_mean(features: pd.DataFrame) -> FloatArray:
    """E[D | x] (N,): the part of the hidden deal-seeker trait the features show."""
    ps = features["price_sensitivity"].to_numpy(dtype=np.float64)
    mean: FloatArray = DEAL_CORRELATION * ps / _PRICE_SENSITIVITY_SD
    return mean


def sample_deal(features: pd.DataFrame, rng: np.random.Generator) -> FloatArray:
    """Hidden deal-seeker trait D (N,) ~ N(0, 1), correlated DEAL_CORRELATION with x."""
    spread = math.sqrt(1.0 - DEAL_CORRELATION**2)
    return deal_mean(features) + spread * rng.standard_normal(len(features))


def _expected_purchase(d: _Drivers, features: pd.DataFrame, n_treatments: int,
                       regime: str, response: float) -> FloatArray:  # fmt: skip
    """E[p_ik | x] (N, K): the hidden trait (if the regime has one) integrated out given x."""
    if regime == "default":
        return _purchase_prob(d, n_treatments)
    nodes, weights = np.polynomial.hermite_e.hermegauss(_QUADRATURE)  # weight exp(-u^2/2)
    weights = weights / math.sqrt(2.0 * math.pi)  # a N(0, 1) expectation
    mean, spread = deal_mean(features), math.sqrt(1.0 - DEAL_CORRELATION**2)
    p = np.zeros((len(mean), n_treatments))
    for node, weight in zip(nodes, weights, strict=True):  # over quadrature nodes, not customers
        p += weight * _purchase_prob(d, n_treatments, mean + spread * node, response)
    return p


def expected(
    features: pd.DataFrame, n_treatments: int = 5, max_discount: float = 0.20,
    regime: str = "default", deal_response: float = 2.0,
) -> tuple[FloatArray, FloatArray]:  # fmt: skip
    """Ground truth E[revenue | x, k] and E[cost | x, k]: two (N, K) arrays."""
    d = _drivers(features)
    p = _expected_purchase(d, features, n_treatments, regime, deal_response)
    discount = max_discount * np.arange(n_treatments) / (n_treatments - 1)  # (K,)
    revenue = p * d.basket[:, None]
    cost = revenue * discount + d.contact[:, None] * (discount > 0)
    return revenue, cost


def sample_outcomes(
    features: pd.DataFrame,
    treatment: IntArray,
    rng: np.random.Generator,
    n_treatments: int = 5,
    max_discount: float = 0.20,
    wallet: FloatArray | None = None,
    deal: FloatArray | None = None,
    deal_response: float = 2.0,
) -> tuple[FloatArray, FloatArray]:
    """Noisy observed (revenue, cost), each (N,); wallet (N,) ~ N(0, 1) is drawn if not given.

    deal (N,): the hidden deal-seeker trait of the deal-seekers regime (None: no such trait).
    """
    d = _drivers(features)
    if wallet is None:
        wallet = rng.standard_normal(len(treatment))
    rows = np.arange(len(treatment))
    p = _purchase_prob(d, n_treatments, deal, deal_response)[rows, treatment]
    discount = max_discount * treatment / (n_treatments - 1)
    bought = rng.uniform(size=len(treatment)) < p
    spend_level = np.exp(WALLET_SD * wallet - 0.5 * WALLET_SD**2)  # mean 1: truth unchanged
    basket = d.basket * spend_level * rng.lognormal(-0.5 * d.noise**2, d.noise)
    revenue: FloatArray = np.where(bought, basket, 0.0)
    cost: FloatArray = revenue * discount + d.contact * (treatment > 0)
    return np.round(revenue, 2), np.round(cost, 4)


def logging_propensity(
    features: pd.DataFrame, n_treatments: int, bias: float, wallet: FloatArray | None = None,
    deal: FloatArray | None = None, deal_targeting: float = 0.0,
) -> FloatArray:  # fmt: skip
    """OBS policy P(k | x, wallet, deal), (N, K): deeper discounts for customers who look
    valuable, and (deal-seekers regime) for deal-seekers that retargeting can reach."""
    num = {c: features[c].to_numpy(dtype=np.float64) for c in ("engagement", "history", "recency")}
    looks_valuable = (
        0.8 * num["engagement"] + 0.7 * np.log(num["history"] / 90.0) - 0.5 * np.log(num["recency"])
    )
    if wallet is not None:
        looks_valuable = looks_valuable + 0.8 * wallet
    intensity = np.arange(n_treatments) / (n_treatments - 1)
    prior = np.where(np.arange(n_treatments) == 0, 1.0, 0.0)  # control is the common default
    target = looks_valuable
    if deal is not None:
        channel = features["channel"].to_numpy()
        reach = np.select([channel == c for c in DEAL_REACH], list(DEAL_REACH.values()), 0.0)
        target = target + deal_targeting * reach * deal
    logits = prior + 1.5 * bias * target[:, None] * (intensity - 0.5)  # (N, K)
    logits -= logits.max(axis=1, keepdims=True)
    w: FloatArray = np.exp(logits)
    probs: FloatArray = w / w.sum(axis=1, keepdims=True)
    return probs


def _draw_categorical(probs: FloatArray, rng: np.random.Generator) -> IntArray:
    """One draw per row of a (N, K) probability matrix (inverse CDF, vectorised)."""
    cdf = np.cumsum(probs, axis=1)
    u = rng.uniform(size=(len(probs), 1)) * cdf[:, -1:]
    draw: IntArray = np.minimum((u > cdf).sum(axis=1), probs.shape[1] - 1).astype(np.int64)
    return draw


@dataclass(frozen=True)
class SimulatedData:
    """Contract tables plus ground truth for the test customers."""

    params: SimulatorParams
    rct: pd.DataFrame
    obs: pd.DataFrame
    test: pd.DataFrame
    truth_revenue: FloatArray  # (N_test, K) expected revenue
    truth_cost: FloatArray  # (N_test, K) expected cost
    treatments: list[str] = field(default_factory=list)

    def expected(self, features: pd.DataFrame) -> tuple[FloatArray, FloatArray]:
        """Ground truth (revenue, cost), each (N, K), for any customers."""
        return expected(
            features,
            self.params.n_treatments,
            self.params.max_discount,
            self.params.regime,
            self.params.deal_response,
        )

    def true_value(self, policy: IntArray) -> tuple[float, float]:
        """True per-capita (revenue, cost) of a treatment per test customer (N_test,)."""
        policy = np.asarray(policy, dtype=np.int64)
        if policy.shape != (len(self.test),):
            raise ValueError(f"policy has shape {policy.shape}, expected ({len(self.test)},)")
        if policy.min() < 0 or policy.max() >= self.params.n_treatments:
            raise ValueError(f"policy values must lie in 0..{self.params.n_treatments - 1}")
        rows = np.arange(len(policy))
        return (
            float(self.truth_revenue[rows, policy].mean()),
            float(self.truth_cost[rows, policy].mean()),
        )

    def oracle(self, budget: float) -> Solution:
        """Best allocation of the test customers at a per-capita budget, on the true values."""
        return allocate(self.truth_revenue, self.truth_cost, budget, per_capita=True)

    def truth_frame(self) -> pd.DataFrame:
        """Truth table row-aligned with test: revenue_0..revenue_{K-1}, cost_0..cost_{K-1}."""
        k = self.params.n_treatments
        data = {f"revenue_{j}": self.truth_revenue[:, j] for j in range(k)}
        data.update({f"cost_{j}": self.truth_cost[:, j] for j in range(k)})
        return pd.DataFrame(data)

    def write(self, directory: str | Path) -> Path:
        """Write rct/obs/test/truth Parquet files and dataset.json into a directory."""
        directory = Path(directory)
        directory.mkdir(parents=True, exist_ok=True)
        for name, frame in (("rct", self.rct), ("obs", self.obs), ("test", self.test)):
            write_frame(frame, directory / f"{name}.parquet")
        write_frame(self.truth_frame(), directory / "truth.parquet")
        info: dict[str, Any] = {
            "treatments": self.treatments,
            "features": [*NUMERIC, *CATEGORICAL],
            "categorical": list(CATEGORICAL),
            "kind": "simulator",
            "params": asdict(self.params),
        }
        (directory / "dataset.json").write_text(json.dumps(info, indent=2) + "\n")
        return directory


def simulate(params: SimulatorParams | None = None, **overrides: Any) -> SimulatedData:
    """Draw RCT, OBS and test tables; test rows are randomized too (an evaluation RCT)."""
    params = SimulatorParams(**{**asdict(params or SimulatorParams()), **overrides})
    k = params.n_treatments
    rng = np.random.default_rng(params.seed)
    uniform = np.full(k, 1.0 / k)

    def table(n: int, confounded: bool) -> pd.DataFrame:
        features = sample_features(n, rng)
        wallet = rng.standard_normal(n)  # hidden: never written to the tables
        # hidden too; drawn only in its regime, so the default regime's stream is unchanged
        deal = sample_deal(features, rng) if params.regime == "deal-seekers" else None
        if confounded:
            probs = logging_propensity(
                features, k, params.bias, wallet, deal, params.deal_targeting
            )
            treatment = _draw_categorical(probs, rng)
            propensity = probs[np.arange(n), treatment]
        else:
            treatment = rng.integers(0, k, size=n)
            propensity = uniform[treatment]
        revenue, cost = sample_outcomes(
            features, treatment, rng, k, params.max_discount, wallet, deal, params.deal_response
        )
        return features.assign(
            treatment=treatment, revenue=revenue, cost=cost, propensity=propensity
        )

    rct = table(params.n_rct, confounded=False)
    obs = table(params.n_obs, confounded=True)
    test = table(params.n_test, confounded=False)
    truth_revenue, truth_cost = expected(
        test, k, params.max_discount, params.regime, params.deal_response
    )
    return SimulatedData(
        params=params,
        rct=rct,
        obs=obs,
        test=test,
        truth_revenue=truth_revenue,
        truth_cost=truth_cost,
        treatments=treatment_names(k, params.max_discount),
    )
