"""Model registry use cases: register a directory, list, activate, pick the model for a request."""

from __future__ import annotations

from datetime import UTC, datetime
from pathlib import Path

from sqlalchemy import select, update
from sqlalchemy.orm import Session

from app.errors import Conflict, NoActiveModel, NotFound
from app.inference import OnnxModel, file_sha256, read_card
from app.registry import Registry, check_version_name
from app.tables import ModelVersion


def list_versions(session: Session) -> list[ModelVersion]:
    """All registered versions, newest first."""
    stmt = select(ModelVersion).order_by(ModelVersion.registered_at.desc())
    return list(session.scalars(stmt))


def get_version(session: Session, version: str) -> ModelVersion:
    """One registered version or 404."""
    row = session.get(ModelVersion, check_version_name(version))
    if row is None:
        raise NotFound(f"model version {version!r} is not registered")
    return row


def active_version(session: Session) -> str | None:
    """The version the database marks active (the source of truth for every worker)."""
    return session.scalar(select(ModelVersion.version).where(ModelVersion.is_active))


def get_active(session: Session) -> ModelVersion:
    """The active version's row, or 404 when none was activated yet."""
    version = active_version(session)
    if version is None:
        raise NotFound(
            "no model version is active; activate one with POST /v1/models/{version}/activate"
        )
    return get_version(session, version)


def register(session: Session, registry: Registry, source: Path) -> ModelVersion:
    """Check `source`, copy it to models/<version>/ and record the version (inactive)."""
    version = read_card(source).version if source.is_dir() else None
    if version is not None and session.get(ModelVersion, version) is not None:
        raise Conflict(f"model version {version!r} is already registered")
    model = registry.import_directory(source)
    row = ModelVersion(
        version=model.version,
        method=model.method,
        treatments=list(model.treatments),
        n_features=model.spec.n_features,
        onnx_sha256=file_sha256(model.path / "model.onnx"),
        card=model.card.to_json(),
        registered_at=datetime.now(UTC),
        is_active=False,
    )
    session.add(row)
    session.flush()
    return row


def activate(session: Session, registry: Registry, version: str) -> ModelVersion:
    """Load and check `version`, mark it the only active row, then swap it in.

    A version whose files are missing, do not load or disagree with model.json is refused
    (InvalidModel) and the current model keeps serving.
    """
    row = get_version(session, version)
    model = registry.get(version, reload=True)  # re-check the files as they are now
    # Serialise concurrent activations (Postgres); SQLite already has a single writer.
    session.execute(select(ModelVersion.version).with_for_update())
    # Unset first: the partial unique index allows one active row at any moment.
    session.execute(update(ModelVersion).where(ModelVersion.is_active).values(is_active=False))
    session.execute(
        update(ModelVersion)
        .where(ModelVersion.version == version)
        .values(is_active=True, activated_at=datetime.now(UTC))
    )
    session.flush()
    session.refresh(row)
    # Other workers follow via the database on their next request (Registry.sync).
    registry.swap(model)
    return row


def resolve(session: Session, registry: Registry, version: str | None) -> OnnxModel:
    """The model a request runs on: the named registered version, else the active one."""
    if version is not None:
        get_version(session, version)
        return registry.get(version)
    model = registry.sync(active_version(session))
    if model is None:
        why = registry.load_error or "no model version is active"
        raise NoActiveModel(
            f"{why}; register one (dfcl models register DIR) and activate it "
            "(POST /v1/models/{version}/activate)"
        )
    return model
