"""/v1/models: registered versions, the active one, registration and activation."""

from __future__ import annotations

from pathlib import Path
from typing import Any

from fastapi import APIRouter

from app.auth import AdminKey, ReadKey
from app.deps import RegistryDep, SessionDep
from app.schemas import ModelRegister, ModelVersionRead
from app.services import models
from app.tables import ModelVersion

router = APIRouter(prefix="/v1/models", tags=["models"])

_REFUSED: dict[int | str, dict[str, Any]] = {
    422: {"description": "Files missing, do not load, or outputs disagree with model.json"}
}


@router.get("", response_model=list[ModelVersionRead])
def list_models(principal: ReadKey, session: SessionDep) -> list[ModelVersion]:
    """Every registered version, newest first."""
    return models.list_versions(session)


@router.get(
    "/active",
    response_model=ModelVersionRead,
    responses={404: {"description": "None"}},
)
def get_active_model(principal: ReadKey, session: SessionDep) -> ModelVersion:
    """The version new allocations use."""
    return models.get_active(session)


@router.post(
    "",
    status_code=201,
    response_model=ModelVersionRead,
    responses={**_REFUSED, 409: {"description": "Version already registered"}},
)
def register_model(
    body: ModelRegister, principal: AdminKey, session: SessionDep, registry: RegistryDep
) -> ModelVersion:
    """Admin: copy a model directory on the server (e.g. from `dfcl train`) into the registry."""
    return models.register(session, registry, Path(body.path))


@router.post(
    "/{version}/activate",
    response_model=ModelVersionRead,
    responses={**_REFUSED, 404: {"description": "Unknown version"}},
)
def activate_model(
    version: str, principal: AdminKey, session: SessionDep, registry: RegistryDep
) -> ModelVersion:
    """Check and load a registered version, then serve it; in-flight requests finish on the old."""
    return models.activate(session, registry, version)
