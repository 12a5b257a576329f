"""Registered models: creation, filtered listing, lookup by name, updates, deletion and
tags. Every function checks access itself through ``authorize`` with the model's
project, so project roles and visibility apply, and records what it changed in the
audit log; creations also go to the event outbox, in the same transaction."""

from __future__ import annotations

from collections import defaultdict
from collections.abc import Sequence
from typing import Literal

from sqlalchemy import Select, exists, func, or_, select
from sqlalchemy.exc import IntegrityError
from sqlalchemy.orm import Session

from maestro.api.errors import Conflict, NotFound
from maestro.db import flush_unique, utcnow
from maestro.events import service as events
from maestro.identity import audit
from maestro.identity.models import User
from maestro.identity.rbac import Action, Principal, Target, authorize
from maestro.identity.schemas import user_ref
from maestro.projects import service as projects_service
from maestro.projects.models import Project
from maestro.registry.models import ModelTag, ModelType, ModelVersion, RegisteredModel, Stage
from maestro.registry.schemas import MAX_TAGS, LatestVersion, ModelCreate, ModelRead, ModelUpdate

SortKey = Literal["name", "created_at", "updated_at"]
SORT_COLUMNS = {
    "name": RegisteredModel.name,
    "created_at": RegisteredModel.created_at,
    "updated_at": RegisteredModel.updated_at,
}
DUPLICATE_NAME = "A model with this name already exists in the project"


# --- loading and access --------------------------------------------------------------------
def authorize_models(
    session: Session, principal: Principal, action: Action, project: Project, *, missing: str | None = None
) -> None:
    authorize(session, principal, action, Target("models", project.organization_id, project), missing=missing)


def get_project_for_models(
    session: Session, principal: Principal, project_id: str, action: Action
) -> Project:
    """The project, once ``principal`` may perform ``action`` on its models."""
    project = projects_service.get_project(session, project_id)
    authorize_models(session, principal, action, project)
    return project


def get_model(session: Session, model_id: str) -> RegisteredModel:
    model = session.get(RegisteredModel, model_id)
    if model is None:
        raise NotFound("No such model")
    return model


def get_visible_model(
    session: Session, principal: Principal, model_id: str, action: Action
) -> RegisteredModel:
    """The model, once ``principal`` may perform ``action`` on it (404 when invisible)."""
    model = get_model(session, model_id)
    project = projects_service.get_project(session, model.project_id)
    authorize_models(session, principal, action, project, missing="No such model")
    return model


def get_model_by_name(session: Session, principal: Principal, project_id: str, name: str) -> RegisteredModel:
    project = get_project_for_models(session, principal, project_id, "read")
    model = session.scalar(
        select(RegisteredModel).where(RegisteredModel.project_id == project.id, RegisteredModel.name == name)
    )
    if model is None:
        raise NotFound("No model with this name in the project")
    return model


# --- reading -------------------------------------------------------------------------------
def models_query(
    project: Project,
    *,
    model_type: ModelType | None = None,
    framework: str | None = None,
    tags: Sequence[str] = (),
    search: str | None = None,
) -> Select[tuple[RegisteredModel]]:
    """The project's models matching every filter given; ``tags``: models having all
    of these tag keys."""
    statement = select(RegisteredModel).where(RegisteredModel.project_id == project.id)
    if model_type is not None:
        statement = statement.where(RegisteredModel.model_type == model_type)
    if framework:
        statement = statement.where(func.lower(RegisteredModel.framework) == framework.lower())
    for key in dict.fromkeys(tags):
        statement = statement.where(
            exists().where(ModelTag.model_id == RegisteredModel.id, ModelTag.key == key)
        )
    if search:
        statement = statement.where(
            or_(
                RegisteredModel.name.icontains(search, autoescape=True),
                RegisteredModel.description.icontains(search, autoescape=True),
            )
        )
    return statement


def model_reads(session: Session, models: Sequence[RegisteredModel]) -> list[ModelRead]:
    """Read models for a page of models: tags, version counts with latest versions, and
    creators in one query each, whatever the page size."""
    ids = [model.id for model in models]
    if not ids:
        return []

    tags: dict[str, list[str]] = defaultdict(list)
    for model_id, key in session.execute(
        select(ModelTag.model_id, ModelTag.key).where(ModelTag.model_id.in_(ids))
    ):
        tags[model_id].append(key)

    ranked = (
        select(
            ModelVersion.model_id,
            ModelVersion.version,
            ModelVersion.stage,
            ModelVersion.performance_metrics,
            func.count().over(partition_by=ModelVersion.model_id).label("version_count"),
            func.row_number()
            .over(
                partition_by=ModelVersion.model_id,
                order_by=(ModelVersion.created_at.desc(), ModelVersion.id.desc()),
            )
            .label("position"),
        )
        .where(ModelVersion.model_id.in_(ids))
        .subquery()
    )
    latest: dict[str, tuple[int, LatestVersion]] = {}
    for row in session.execute(select(ranked).where(ranked.c.position == 1)):
        latest[row.model_id] = (
            row.version_count,
            LatestVersion(
                version=row.version, stage=Stage(row.stage), performance_metrics=row.performance_metrics or {}
            ),
        )

    creator_ids = {model.created_by_id for model in models if model.created_by_id}
    creators = (
        {user.id: user for user in session.scalars(select(User).where(User.id.in_(creator_ids)))}
        if creator_ids
        else {}
    )

    reads = []
    for model in models:
        version_count, latest_version = latest.get(model.id, (0, None))
        reads.append(
            ModelRead(
                id=model.id,
                name=model.name,
                description=model.description,
                model_type=ModelType(model.model_type),
                framework=model.framework,
                task_type=model.task_type,
                tags=sorted(tags.get(model.id, [])),
                version_count=version_count,
                latest_version=latest_version,
                created_by=user_ref(creators.get(model.created_by_id or "")),
                created_at=model.created_at,
                updated_at=model.updated_at,
            )
        )
    return reads


def model_read(session: Session, model: RegisteredModel) -> ModelRead:
    return model_reads(session, [model])[0]


# --- changing models -----------------------------------------------------------------------
def _ensure_unique_name(session: Session, project_id: str, name: str, *, but: str | None = None) -> None:
    clash = select(RegisteredModel.id).where(
        RegisteredModel.project_id == project_id, RegisteredModel.name == name
    )
    if but is not None:
        clash = clash.where(RegisteredModel.id != but)
    if session.scalar(clash.limit(1)) is not None:
        raise Conflict(DUPLICATE_NAME, details=[("name", "already used in this project")])


def _flush_unique(session: Session) -> None:
    flush_unique(session, Conflict(DUPLICATE_NAME, details=[("name", "already used in this project")]))


def create_model(
    session: Session, principal: Principal, project_id: str, body: ModelCreate
) -> RegisteredModel:
    project = get_project_for_models(session, principal, project_id, "write")
    _ensure_unique_name(session, project.id, body.name)
    model = RegisteredModel(
        organization_id=project.organization_id,
        project_id=project.id,
        name=body.name,
        description=body.description or None,
        model_type=body.model_type,
        framework=body.framework,
        task_type=body.task_type,
        created_by_id=principal.user_id,
    )
    session.add(model)
    _flush_unique(session)
    session.add_all(ModelTag(model_id=model.id, key=key, value="") for key in body.tags)
    session.flush()
    events.record(
        session,
        model.organization_id,
        "model.created",
        {"model_id": model.id, "name": model.name, "project_id": project.id},
    )
    audit.describe(
        session,
        resource_type="models",
        resource_id=model.id,
        organization_id=model.organization_id,
        project_id=project.id,
        name=model.name,
    )
    return model


def _replace_tag_keys(session: Session, model: RegisteredModel, keys: Sequence[str]) -> None:
    """Keep the listed keys (with their values), add the new ones without a value and
    remove the others."""
    existing = {
        tag.key: tag for tag in session.scalars(select(ModelTag).where(ModelTag.model_id == model.id))
    }
    for key, tag in existing.items():
        if key not in keys:
            session.delete(tag)
    session.add_all(ModelTag(model_id=model.id, key=key, value="") for key in keys if key not in existing)


def update_model(session: Session, principal: Principal, model_id: str, body: ModelUpdate) -> RegisteredModel:
    model = get_visible_model(session, principal, model_id, "write")
    changes = body.model_dump(exclude_unset=True)
    if "name" in changes and changes["name"] != model.name:
        _ensure_unique_name(session, model.project_id, changes["name"], but=model.id)
        model.name = changes["name"]
    if "description" in changes:
        model.description = changes["description"] or None
    for field in ("model_type", "framework", "task_type"):
        if field in changes:
            setattr(model, field, changes[field])
    if "tags" in changes:
        _replace_tag_keys(session, model, changes["tags"])
    if changes:
        model.updated_at = utcnow()
    _flush_unique(session)
    audit.describe(
        session,
        resource_type="models",
        resource_id=model.id,
        organization_id=model.organization_id,
        changed=sorted(changes),
    )
    return model


def delete_model(session: Session, principal: Principal, model_id: str) -> None:
    """Delete a model with all its versions, tags and aliases (their rows cascade)."""
    model = get_visible_model(session, principal, model_id, "delete")
    audit.describe(
        session,
        resource_type="models",
        resource_id=model.id,
        organization_id=model.organization_id,
        project_id=model.project_id,
        name=model.name,
    )
    session.delete(model)
    session.flush()


# --- tags ----------------------------------------------------------------------------------
def list_tags(session: Session, principal: Principal, model_id: str) -> list[ModelTag]:
    model = get_visible_model(session, principal, model_id, "read")
    tags = session.scalars(select(ModelTag).where(ModelTag.model_id == model.id)).all()
    return sorted(tags, key=lambda tag: tag.key)


def set_tag(session: Session, principal: Principal, model_id: str, key: str, value: str) -> ModelTag:
    """Set a tag's value, adding the tag if the model does not have it yet."""
    model = get_visible_model(session, principal, model_id, "write")
    tag = session.scalar(select(ModelTag).where(ModelTag.model_id == model.id, ModelTag.key == key))
    previous = tag.value if tag is not None else None
    if tag is None:
        count = session.scalar(select(func.count(ModelTag.id)).where(ModelTag.model_id == model.id)) or 0
        if count >= MAX_TAGS:
            raise Conflict(
                f"A model can have at most {MAX_TAGS} tags; delete one first",
                details=[("key", "too many tags on this model")],
            )
        tag = ModelTag(model_id=model.id, key=key, value=value)
        session.add(tag)
    else:
        tag.value = value
    model.updated_at = utcnow()
    try:
        session.flush()
    except IntegrityError as exc:  # a concurrent request added the same key
        raise Conflict("This tag was changed at the same time; try again") from exc
    audit.describe(
        session,
        resource_type="models",
        resource_id=model.id,
        organization_id=model.organization_id,
        tag=key,
        value=value,
        previous_value=previous,
    )
    return tag


def delete_tag(session: Session, principal: Principal, model_id: str, key: str) -> None:
    model = get_visible_model(session, principal, model_id, "write")
    tag = session.scalar(select(ModelTag).where(ModelTag.model_id == model.id, ModelTag.key == key))
    if tag is None:
        raise NotFound("The model has no tag with this key")
    session.delete(tag)
    model.updated_at = utcnow()
    session.flush()
    audit.describe(
        session,
        resource_type="models",
        resource_id=model.id,
        organization_id=model.organization_id,
        tag=key,
    )
