"""Model registry use cases: register a directory, list, activate, pick the model for a request."""

from __future__ import annotations

from datetime import UTC, datetime
from pathlib import Path

from sqlalchemy import select, update
from sqlalchemy.orm import Session

from app.config import Settings
from app.core.model_card import CARD_FILE, GRAPH_FILE
from app.errors import Conflict, InvalidModel, NoActiveModel, NotFound
from app.inference import OnnxModel, file_sha256, read_card
from app.registry import Registry, check_version_name
from app.tables import ModelVersion


def registration_roots(settings: Settings) -> list[Path]:
    """Where POST /v1/models may read from: DFCL_MODEL_ROOTS, else the models dir's parent."""
    roots = settings.model_roots or [settings.models_dir.resolve().parent]
    return [root.resolve() for root in roots]


def check_model_source(source: Path, roots: list[Path]) -> Path:
    """`source` resolved, if it is a model directory under one of `roots`.

    Every refusal reads the same, whether the path is outside the roots, missing, a file, or a
    directory without model.json / model.onnx, so a client cannot probe which paths exist.
    """
    resolved = source.resolve()
    inside = any(resolved.is_relative_to(root) for root in roots)
    if not (
        inside
        and resolved.is_dir()
        and (resolved / CARD_FILE).is_file()
        and (resolved / GRAPH_FILE).is_file()
    ):
        listed = ", ".join(str(root) for root in roots)
        raise InvalidModel(
            f"{source} is not a model directory (model.json + model.onnx) under the "
            f"registration roots ({listed}; DFCL_MODEL_ROOTS)"
        )
    return resolved


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


def register(
    session: Session, registry: Registry, source: Path, *, roots: list[Path] | None = None
) -> ModelVersion:
    """Check `source`, copy it to models/<version>/ and record the version (inactive).

    With `roots` (the API), `source` must be a model directory under one of them.
    """
    if roots is not None:
        source = check_model_source(source, roots)
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
    # Re-check the files as they are now; a refusal also drops the version from this
    # process's cache, and other processes notice the changed files on their next use.
    model = registry.get(version, reload=True)
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
