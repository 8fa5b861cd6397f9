"""Service settings: the only place that reads environment variables (prefix DFCL_)."""

from __future__ import annotations

from pathlib import Path

from pydantic import Field, model_validator
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
    host: str = Field(default="127.0.0.1", description="`dfcl serve` bind address.")
    port: int = Field(default=8000, ge=1, le=65535, description="`dfcl serve` port.")
    log_level: str = Field(default="info", description="Python/uvicorn log level.")

    @model_validator(mode="after")
    def _default_database(self) -> Settings:
        """Put the SQLite file under data_dir unless a URL was given."""
        if not self.database_url:
            self.database_url = f"sqlite:///{self.data_dir / 'dfcl.db'}"
        return self
