"""/v1/models: registered versions, the active one, registration and activation."""

from __future__ import annotations

from pathlib import Path
from typing import Any

from fastapi import APIRouter

from app.auth import AdminKey, Principal, ReadKey
from app.deps import RegistryDep, SessionDep, SettingsDep
from app.schemas import ModelRegister, ModelVersionRead
from app.services import models
from app.tables import ModelVersion
from app.visibility import is_admin, public_card

router = APIRouter(prefix="/v1/models", tags=["models"])

_REFUSED: dict[int | str, dict[str, Any]] = {
    422: {"description": "Files missing, do not load, or outputs disagree with model.json"}
}


def _shown(row: ModelVersion, principal: Principal) -> ModelVersionRead:
    """The version as this key may see it: the card's training paths and config are admin-only."""
    out = ModelVersionRead.model_validate(row)
    if not is_admin(principal):
        out.card = public_card(out.card)
    return out


@router.get("", response_model=list[ModelVersionRead])
def list_models(principal: ReadKey, session: SessionDep) -> list[ModelVersionRead]:
    """Every registered version, newest first (training paths and config: admin keys only)."""
    return [_shown(row, principal) for row in models.list_versions(session)]


@router.get(
    "/active",
    response_model=ModelVersionRead,
    responses={404: {"description": "None"}},
)
def get_active_model(principal: ReadKey, session: SessionDep) -> ModelVersionRead:
    """The version new allocations use (training paths and config: admin keys only)."""
    return _shown(models.get_active(session), principal)


@router.post(
    "",
    status_code=201,
    response_model=ModelVersionRead,
    responses={
        **_REFUSED,
        409: {"description": "Version already registered"},
        422: {
            "description": "Not a model directory under DFCL_MODEL_ROOTS (one answer whatever "
            "is or is not there), or its files are refused"
        },
    },
)
def register_model(
    body: ModelRegister,
    principal: AdminKey,
    session: SessionDep,
    registry: RegistryDep,
    settings: SettingsDep,
) -> ModelVersion:
    """Admin: copy a model directory on the server (e.g. from `dfcl train`) into the registry.

    The directory must lie under one of DFCL_MODEL_ROOTS (default: the parent of
    DFCL_MODELS_DIR)."""
    roots = models.registration_roots(settings)
    return models.register(session, registry, Path(body.path), roots=roots)


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
