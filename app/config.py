"""Service settings: the only place that reads environment variables (prefix DFCL_)."""

from __future__ import annotations

from pathlib import Path
from typing import Literal

from pydantic import Field, SecretStr, model_validator
from pydantic_settings import BaseSettings, SettingsConfigDict


class Settings(BaseSettings):
    """Everything the service needs from its environment, with defaults for a local run."""

    model_config = SettingsConfigDict(env_prefix="DFCL_", env_file=".env", extra="ignore")

    data_dir: Path = Field(
        default=Path("data"), description="Holds the default SQLite database file."
    )
    database_url: str = Field(
        default="", description="SQLAlchemy URL; empty means sqlite:///<data_dir>/dfcl.db."
    )
    models_dir: Path = Field(
        default=Path("models"), description="Model registry: <version>/model.onnx."
    )
    model_roots: list[Path] = Field(
        default_factory=list,
        description="Directories under which POST /v1/models may register a model directory; "
        "empty: the parent of models_dir. The CLI (dfcl models register) is not limited.",
    )
    migrations_dir: Path | None = Field(
        default=None, description="Alembic scripts; empty means found next to the package or in ./."
    )
    auto_migrate: bool = Field(
        default=True,
        description="Apply pending migrations at start; false: refuse to start if behind.",
    )
    max_customers: int = Field(
        default=10_000, ge=1, description="Most customers in one allocation (413)."
    )
    max_body_bytes: int = Field(
        default=32 * 1024 * 1024, ge=1024, description="Largest request body (413 above)."
    )
    max_page_size: int = Field(
        default=1_000, ge=1, description="Largest `limit` on list endpoints."
    )
    max_loaded_models: int = Field(
        default=3, ge=1, description="Model versions kept in memory at once."
    )
    inference_threads: int = Field(
        default=1, ge=0, description="onnxruntime intra-op threads per call (0: one per core)."
    )
    db_pool_size: int = Field(
        default=8, ge=1, description="Connections kept open to a server database."
    )
    # Closing the loop: exploration, retraining jobs, champion/challenger.
    exploration_rate: float = Field(
        default=0.0, ge=0.0, le=1.0,
        description="Share of customers given a uniformly random treatment when a request "
        "does not say (POST /v1/allocations exploration_rate).",
    )  # fmt: skip
    retrain_dir: Path | None = Field(
        default=None, description="Retraining job directories; empty means <data_dir>/retrain."
    )
    retrain_method: str = Field(default="bi-dfcl", description="Default retraining method.")
    retrain_base_rct: Path | None = Field(
        default=None, description="RCT table added to every retraining's randomized rows."
    )
    retrain_base_obs: Path | None = Field(
        default=None, description="OBS table added to every retraining's observational rows."
    )
    retrain_eval_data: Path | None = Field(
        default=None, description="Extra held-out RCT table for champion/challenger."
    )
    retrain_holdout_fraction: float = Field(
        default=0.3, gt=0.0, lt=1.0,
        description="Share of explored decisions (fixed per decision) kept out of training "
        "for champion/challenger.",
    )  # fmt: skip
    retrain_min_holdout: int = Field(
        default=100, ge=1,
        description="Fewest held-out randomized rows for a comparison that may activate.",
    )  # fmt: skip
    retrain_margin: float = Field(
        default=0.0, description="Challenger must beat the champion's EOM area by more than this."
    )
    retrain_min_z: float = Field(
        default=1.0,
        description="Challenger's mean EOM revenue over the budgets must beat the champion's by "
        "this many paired standard errors (as well as the area margin).",
    )
    retrain_estimator: Literal["dr", "ht"] = Field(
        default="dr",
        description="Estimator of the comparison: 'dr' = doubly robust, with the champion's "
        "predictions as the outcome baseline (it was trained before the held-out rows were "
        "logged and never on them); 'ht' = Horvitz-Thompson EOM.",
    )
    retrain_budgets: list[float] | None = Field(
        default=None,
        description="Per-capita budgets of the comparison; empty: 10 points between the "
        "held-out data's cheapest and dearest arm.",
    )
    # Campaign-scale allocation jobs (POST /v1/allocation-jobs, dfcl allocate).
    jobs_dir: Path | None = Field(
        default=None, description="Allocation job directories; empty means <data_dir>/jobs."
    )
    batch_engine: Literal["local", "ray"] = Field(
        default="local",
        description="Where allocation jobs run their passes: this host, or Ray (the [scale] "
        "extra).",
    )
    ray_address: str = Field(
        default="",
        description="Ray cluster to join (ray.init(address=...)); empty starts a local Ray.",
    )
    batch_chunk_rows: int = Field(
        default=65_536, ge=1_024, description="Customers per chunk an allocation job scores."
    )
    batch_input_roots: list[Path] = Field(
        default_factory=list,
        description="Directories whose files POST /v1/allocation-jobs may name by `path`; "
        "empty: only uploads (POST /v1/uploads).",
    )
    max_upload_bytes: int = Field(
        default=64 * 1024**3, ge=1024,
        description="Largest customer file POST /v1/uploads accepts (413 above); streamed to "
        "disk, never held in memory.",
    )  # fmt: skip
    host: str = Field(default="127.0.0.1", description="`dfcl serve` bind address.")
    port: int = Field(default=8000, ge=1, le=65535, description="`dfcl serve` port.")
    log_level: str = Field(default="info", description="Python/uvicorn log level.")
    log_format: Literal["json", "text"] = Field(
        default="json", description="`dfcl serve` logs: one JSON object per line, or plain text."
    )
    auth_enabled: bool = Field(
        default=True, description="Require an API key (dfcl keys create) on /v1 endpoints."
    )
    metrics_enabled: bool = Field(default=True, description="Serve GET /metrics (Prometheus).")
    metrics_require_key: bool = Field(
        default=False, description="GET /metrics needs a key with the `read` scope."
    )
    request_timeout_s: float = Field(
        default=30.0,
        ge=0,
        description="Answer 504 and roll back a request running longer (0: no limit).",
    )
    idempotency_ttl_h: float = Field(
        default=24.0, gt=0, description="How long an Idempotency-Key's response is replayed."
    )
    # Dashboard (/ui, app/ui): session cookies are HMAC-signed; see app/ui/session.py.
    ui_secret: SecretStr = Field(
        default=SecretStr(""),
        description="Signs /ui session cookies; set the same value on every worker. Empty: "
        "each session is signed with a key derived from its API key's stored hash (stable "
        "across workers, but anyone who can read the database could forge a session).",
    )
    ui_session_hours: float = Field(
        default=8.0, gt=0, le=24 * 30, description="How long a /ui login lasts."
    )

    @model_validator(mode="after")
    def _default_database(self) -> Settings:
        """Put the SQLite file under data_dir unless a URL was given."""
        if not self.database_url:
            self.database_url = f"sqlite:///{self.data_dir / 'dfcl.db'}"
        if self.retrain_dir is None:
            self.retrain_dir = self.data_dir / "retrain"
        if self.jobs_dir is None:
            self.jobs_dir = self.data_dir / "jobs"
        return self
