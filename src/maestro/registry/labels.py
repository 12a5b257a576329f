"""Aliases and version tags: the names and labels people put on model versions (an alias
points at one version of its model; tags are free key-value pairs)."""

from __future__ import annotations

from typing import TYPE_CHECKING

from sqlalchemy import select
from sqlalchemy.orm import Session

from maestro.db import flush_unique, utcnow
from maestro.errors import Conflict, NotFound
from maestro.identity import audit
from maestro.identity.rbac import Principal
from maestro.registry.models import (
    ModelAlias,
    ModelVersion,
    VersionTag,
)
from maestro.registry.service import NO_SUCH_VERSION, _upsert_tag, get_version, get_visible_model

if TYPE_CHECKING:
    pass


# --- aliases -------------------------------------------------------------------------------
def resolve_alias(
    session: Session, principal: Principal, model_id: str, alias: str
) -> tuple[ModelAlias, ModelVersion]:
    model = get_visible_model(session, principal, model_id, "read")
    row = session.scalar(select(ModelAlias).where(ModelAlias.model_id == model.id, ModelAlias.alias == alias))
    if row is None:
        raise NotFound("The model has no such alias")
    version = session.get(ModelVersion, row.version_id)
    if version is None:
        raise NotFound(NO_SUCH_VERSION)
    return row, version


def set_alias(
    session: Session, principal: Principal, model_id: str, alias: str, version: str
) -> tuple[ModelAlias, ModelVersion]:
    """Point an alias at a version, creating the alias or moving it."""
    model, row = get_version(session, principal, model_id, version, "write")
    existing = session.scalar(
        select(ModelAlias).where(ModelAlias.model_id == model.id, ModelAlias.alias == alias)
    )
    previous = None
    if existing is None:
        existing = ModelAlias(model_id=model.id, alias=alias, version_id=row.id)
        session.add(existing)
    else:
        previous = existing.version_id
        existing.version_id = row.id
        existing.updated_at = utcnow()
    flush_unique(session, Conflict("This alias was changed at the same time; try again"))
    audit.describe(
        session,
        resource_type="models",
        resource_id=model.id,
        organization_id=model.organization_id,
        alias=alias,
        version=row.version,
        previous_version_id=previous,
    )
    return existing, row


def delete_alias(session: Session, principal: Principal, model_id: str, alias: str) -> None:
    model = get_visible_model(session, principal, model_id, "write")
    row = session.scalar(select(ModelAlias).where(ModelAlias.model_id == model.id, ModelAlias.alias == alias))
    if row is None:
        raise NotFound("The model has no such alias")
    session.delete(row)
    session.flush()
    audit.describe(
        session,
        resource_type="models",
        resource_id=model.id,
        organization_id=model.organization_id,
        alias=alias,
    )


# --- version tags --------------------------------------------------------------------------
def list_version_tags(
    session: Session, principal: Principal, model_id: str, version: str
) -> list[VersionTag]:
    _, row = get_version(session, principal, model_id, version, "read")
    tags = session.scalars(select(VersionTag).where(VersionTag.version_id == row.id)).all()
    return sorted(tags, key=lambda tag: tag.key)


def set_version_tag(
    session: Session, principal: Principal, model_id: str, version: str, key: str, value: str
) -> VersionTag:
    """Set a tag's value on a version, adding the tag if the version does not have it yet."""
    model, row = get_version(session, principal, model_id, version, "write")
    tag, previous = _upsert_tag(session, VersionTag.version_id, row.id, key, value, "version")
    audit.describe(
        session,
        resource_type="model_versions",
        resource_id=row.id,
        organization_id=model.organization_id,
        model_id=model.id,
        version=row.version,
        tag=key,
        value=value,
        previous_value=previous,
    )
    return tag


def delete_version_tag(session: Session, principal: Principal, model_id: str, version: str, key: str) -> None:
    model, row = get_version(session, principal, model_id, version, "write")
    tag = session.scalar(select(VersionTag).where(VersionTag.version_id == row.id, VersionTag.key == key))
    if tag is None:
        raise NotFound("The version has no tag with this key")
    session.delete(tag)
    session.flush()
    audit.describe(
        session,
        resource_type="model_versions",
        resource_id=row.id,
        organization_id=model.organization_id,
        model_id=model.id,
        version=row.version,
        tag=key,
    )
