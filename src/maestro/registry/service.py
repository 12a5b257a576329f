"""Registered models: creation, filtered listing, lookup by name, updates, deletion and
tags. Every function checks access itself through ``authorize`` with the model's
project, so project roles and visibility apply, and records what it changed in the
audit log; creations also go to the event outbox, in the same transaction."""

from __future__ import annotations

from collections import defaultdict
from collections.abc import Mapping, Sequence
from typing import TYPE_CHECKING, Any, Literal

from pydantic import ValidationError
from sqlalchemy import Select, exists, func, or_, select, update
from sqlalchemy.orm import Session

from maestro.db import UniqueName, flush_unique, run_after_commit, utcnow
from maestro.errors import Conflict, NotFound, PermissionDenied, ValidationFailed
from maestro.events import service as events
from maestro.identity import audit
from maestro.identity.actors import acting, actors
from maestro.identity.rbac import Action, Principal, Target, organization_role
from maestro.organizations.models import Role
from maestro.projects import service as projects_service
from maestro.projects.models import Project
from maestro.projects.sources import register_counter, register_file_source
from maestro.registry.models import (
    ModelTag,
    ModelType,
    ModelVersion,
    RegisteredModel,
    Stage,
    StageTransition,
)
from maestro.registry.schemas import (
    MAX_TAGS,
    LatestVersion,
    LoadCheckRead,
    ModelCreate,
    ModelRead,
    ModelUpdate,
    StageChange,
    VersionCreate,
    VersionRead,
)
from maestro.registry.scope import readable_projects
from maestro.runtimes.formats import ModelFormat
from maestro.runtimes.isolation import TRUST_REASONS, Isolation, check_model, needs_check
from maestro.storage import ArtifactStore, StoredObject, delete_after_commit

if TYPE_CHECKING:
    from maestro.config import Settings

SortKey = Literal["name", "created_at", "updated_at"]
SORT_COLUMNS = {
    "name": RegisteredModel.name,
    "created_at": RegisteredModel.created_at,
    "updated_at": RegisteredModel.updated_at,
}
DUPLICATE_NAME = "A model with this name already exists in the project"


# --- loading and access --------------------------------------------------------------------
NO_SUCH_MODEL = "No such model"


def get_model(session: Session, model_id: str) -> RegisteredModel:
    model = session.get(RegisteredModel, model_id)
    if model is None:
        raise NotFound(NO_SUCH_MODEL)
    return model


def _model_named(session: Session, principal: Principal, name: str) -> RegisteredModel:
    """The one model named ``name`` among those the principal can see: 404 (the same as
    for an unknown id) when there is none, 409 naming the projects when there are several."""
    projects = readable_projects(session, principal)
    if projects is None:
        raise NotFound(NO_SUCH_MODEL)
    project_ids = projects.with_only_columns(Project.id).order_by(None)
    rows = session.execute(
        select(RegisteredModel, Project.name)
        .join(Project, Project.id == RegisteredModel.project_id)
        .where(RegisteredModel.name == name, RegisteredModel.project_id.in_(project_ids))
        .order_by(Project.name, Project.id)
        .limit(20)
    ).all()
    if not rows:
        raise NotFound(NO_SUCH_MODEL)
    if len(rows) > 1:
        places = ", ".join(f"{project_name!r} ({model.project_id})" for model, project_name in rows)
        raise Conflict(
            f"{len(rows)} models you can see are named {name!r}, in the projects {places}; "
            "address one by its id",
            details=[("model", f"ambiguous name, in projects {places}")],
        )
    return rows[0][0]


def get_visible_model(
    session: Session, principal: Principal, model_id: str, action: Action
) -> RegisteredModel:
    """The model, once ``principal`` may perform ``action`` on it (404 when invisible).
    ``model_id`` is the model's id or, failing that, its name: the one model of that
    name the principal can see (an id always wins). Every route that takes a model
    comes here."""
    model = session.get(RegisteredModel, model_id)
    if model is None:
        model = _model_named(session, principal, model_id)
    project = projects_service.get_project(session, model.project_id)
    projects_service.authorize_in_project(
        session, principal, "models", action, project, missing=NO_SUCH_MODEL
    )
    return model


def get_model_by_name(session: Session, principal: Principal, project_id: str, name: str) -> RegisteredModel:
    project = projects_service.project_for(session, principal, "models", project_id, "read")
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
) -> Select[RegisteredModel]:
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

    creators = actors(session, ((model.created_by_id, model.created_by_key_id) for model in models))

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
                created_by=creators.ref(model.created_by_id, model.created_by_key_id),
                created_at=model.created_at,
                updated_at=model.updated_at,
            )
        )
    return reads


def model_read(session: Session, model: RegisteredModel) -> ModelRead:
    return model_reads(session, [model])[0]


# --- changing models -----------------------------------------------------------------------
_NAMES = UniqueName(RegisteredModel, "project_id", DUPLICATE_NAME, "already used in this project")


def create_model(
    session: Session,
    principal: Principal,
    project_id: str,
    body: ModelCreate,
    tag_values: Mapping[str, str] | None = None,
) -> RegisteredModel:
    """Register a model; ``tag_values`` gives values to tags of ``body`` (keys alone have none)."""
    project = projects_service.project_for(session, principal, "models", project_id, "write")
    _NAMES.check(session, project.id, body.name)
    user_id, key_id = acting(principal)
    model = RegisteredModel(
        organization_id=project.organization_id,
        project_id=project.id,
        name=body.name,
        description=body.description or None,
        model_type=body.model_type,
        framework=body.framework,
        task_type=body.task_type,
        created_by_id=user_id,
        created_by_key_id=key_id,
    )
    session.add(model)
    _NAMES.flush(session)
    values = tag_values or {}
    session.add_all(ModelTag(model_id=model.id, key=key, value=values.get(key, "")) for key in body.tags)
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


def _replace_tag_keys(
    session: Session, model: RegisteredModel, keys: Sequence[str] | Mapping[str, str]
) -> None:
    """Keep the listed keys (with their values), add the new ones without a value and
    remove the others; key/value pairs also set the values of the keys they list."""
    existing = {
        tag.key: tag for tag in session.scalars(select(ModelTag).where(ModelTag.model_id == model.id))
    }
    for key, tag in existing.items():
        if key not in keys:
            session.delete(tag)
        elif isinstance(keys, Mapping):
            tag.value = keys[key]
    values = keys if isinstance(keys, Mapping) else {}
    session.add_all(
        ModelTag(model_id=model.id, key=key, value=values.get(key, "")) for key in keys if key not in existing
    )


def update_model(session: Session, principal: Principal, model_id: str, body: ModelUpdate) -> RegisteredModel:
    model = get_visible_model(session, principal, model_id, "write")
    changes = body.model_dump(exclude_unset=True)
    if "name" in changes and changes["name"] != model.name:
        _NAMES.check(session, model.project_id, changes["name"], but=model.id)
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
    _NAMES.flush(session)
    audit.describe(
        session,
        resource_type="models",
        resource_id=model.id,
        organization_id=model.organization_id,
        changed=sorted(changes),
    )
    return model


def delete_model(session: Session, principal: Principal, model_id: str, store: ArtifactStore) -> None:
    """Delete a model with all its versions, tags and aliases (their rows cascade); the
    versions' files are removed once the deletion has committed."""
    model = get_visible_model(session, principal, model_id, "delete")
    keys = list(session.scalars(select(ModelVersion.file_key).where(ModelVersion.model_id == model.id)))
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
    delete_after_commit(session, store, keys)


# --- tags ----------------------------------------------------------------------------------
def list_tags(session: Session, principal: Principal, model_id: str) -> list[ModelTag]:
    model = get_visible_model(session, principal, model_id, "read")
    tags = session.scalars(select(ModelTag).where(ModelTag.model_id == model.id)).all()
    return sorted(tags, key=lambda tag: tag.key)


def _upsert_tag(
    session: Session, owner: Any, owner_id: str, key: str, value: str, label: str
) -> tuple[Any, str | None]:
    """Set ``key`` on the model or version that ``owner`` (its tag table's foreign key
    column) points at, and flush; returns the tag and its previous value. At most
    MAX_TAGS each."""
    table = owner.class_
    tag = session.scalar(select(table).where(owner == owner_id, table.key == key))
    previous = None
    if tag is not None:
        previous, tag.value = tag.value, value
    else:
        count = session.scalar(select(func.count(table.id)).where(owner == owner_id)) or 0
        if count >= MAX_TAGS:
            raise Conflict(
                f"A {label} can have at most {MAX_TAGS} tags; delete one first",
                details=[("key", f"too many tags on this {label}")],
            )
        tag = table(**{owner.key: owner_id, "key": key, "value": value})
        session.add(tag)
    flush_unique(session, Conflict("This tag was changed at the same time; try again"))
    return tag, previous


def set_tag(session: Session, principal: Principal, model_id: str, key: str, value: str) -> ModelTag:
    """Set a tag's value, adding the tag if the model does not have it yet."""
    model = get_visible_model(session, principal, model_id, "write")
    model.updated_at = utcnow()
    tag, previous = _upsert_tag(session, ModelTag.model_id, model.id, key, value, "model")
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


# --- versions ------------------------------------------------------------------------------
NO_SUCH_VERSION = "No such version of this model"


def _semver_key(version: str) -> tuple[int, int, int]:
    core = version.split("-", 1)[0].split(".")
    return int(core[0]), int(core[1]), int(core[2])


def next_version(session: Session, model: RegisteredModel) -> str:
    """The next patch after the model's highest version, or 1.0.0 for its first."""
    existing = session.scalars(select(ModelVersion.version).where(ModelVersion.model_id == model.id)).all()
    if not existing:
        return "1.0.0"
    major, minor, patch = max(_semver_key(version) for version in existing)
    return f"{major}.{minor}.{patch + 1}"


def model_files_prefix(model: RegisteredModel) -> str:
    return f"models/{model.project_id.lower()}"


def numbered_version(number: int, patch: int = 0) -> str:
    """The semantic version of integer version ``number``: N is N.0.0."""
    return f"{number}.0.{patch}"


def version_text(version: str) -> str:
    """A version as the registry keeps it: semantic as given, an integer N as N.0.0."""
    return numbered_version(int(version)) if version.isdigit() else version


def semantic_version(session: Session, model: RegisteredModel, number: int) -> str:
    """``N.0.0`` for a new integer version N, or its next free patch when that is taken."""
    taken = set(
        session.scalars(
            select(ModelVersion.version).where(
                ModelVersion.model_id == model.id, ModelVersion.version.like(f"{number}.0.%")
            )
        )
    )
    patch = 0
    while numbered_version(number, patch) in taken:
        patch += 1
    return numbered_version(number, patch)


def get_version(
    session: Session, principal: Principal, model_id: str, version: str, action: Action
) -> tuple[RegisteredModel, ModelVersion]:
    """A version of a visible model, once ``principal`` may perform ``action`` on it;
    ``version`` is semantic (1.2.0) or an integer (3, which is 3.0.0)."""
    model = get_visible_model(session, principal, model_id, action)
    row = session.scalar(
        select(ModelVersion).where(
            ModelVersion.model_id == model.id, ModelVersion.version == version_text(version)
        )
    )
    if row is None:
        raise NotFound(NO_SUCH_VERSION)
    return model, row


def _record_transition(
    session: Session,
    principal: Principal,
    row: ModelVersion,
    to_stage: str,
    description: str | None,
    *,
    from_stage: str | None,
) -> StageTransition:
    transition = StageTransition(
        version_id=row.id,
        from_stage=from_stage,
        to_stage=to_stage,
        description=description,
        changed_by_id=acting(principal)[0],
        changed_by_key_id=acting(principal)[1],
    )
    session.add(transition)
    return transition


def next_number(session: Session, model: RegisteredModel) -> int:
    """The number the model's next version gets (1 for its first)."""
    highest = session.scalar(select(func.max(ModelVersion.number)).where(ModelVersion.model_id == model.id))
    return (highest or 0) + 1


def check_model_file(
    settings: Settings,
    store: ArtifactStore,
    stored: StoredObject,
    detected: ModelFormat | None,
    *,
    trusted: bool = False,
    model_schema: dict[str, Any] | None = None,
) -> dict[str, Any] | None:
    """Load an uploaded file in an isolated process (``serving.isolation``) before it
    becomes a version: a file that does not load, crashes, stalls or passes the memory
    budget of a model is refused (422) with the reason. Returns the result to keep on
    the version, or None for a format that is never loaded (a pickle, until an admin
    trusts it). A file refused only for want of trust is kept, as before: trusting it
    checks it again. Takes seconds, so it runs in no transaction."""
    if stored is None or detected is None or not needs_check(detected, trusted):
        return None
    isolation = Isolation.from_settings(settings, store)
    path = store.path(stored.key) if store.is_local else None
    check = check_model(
        None if path else store.read_bytes(stored.key),
        path=path,
        format=detected,
        trusted=trusted,
        model_schema=model_schema,
        isolation=isolation,
        sha256=stored.sha256,
    )
    if not check.passed and check.reason not in TRUST_REASONS:
        raise ValidationFailed(
            f"The model file was refused: {check.message}",
            details=[("model_file", check.reason or "refused")],
        )
    return check.to_dict()


def create_version(
    session: Session,
    principal: Principal,
    model_id: str,
    body: VersionCreate,
    stored: StoredObject | None,
    detected: ModelFormat | None,
    *,
    number: int | None = None,
    lineage: dict[str, str | None] | None = None,
    settings: Settings | None = None,
    store: ArtifactStore | None = None,
    load_check: dict[str, Any] | None = None,
) -> ModelVersion:
    """Record an uploaded file as a new version. The caller removes the stored file
    when this raises. ``number`` (default: the next) and ``lineage`` (``source``,
    ``run_id``, ``logged_model_id``) come from the MLflow API; a version registered
    there from a source Maestro cannot read has no file.

    A loadable file is checked first (``check_model_file``, with ``settings`` and
    ``store``), before this function reads or writes the database, so that a caller
    without an open transaction holds no lock meanwhile; ``load_check`` passes the
    result of a check the caller made itself."""
    if body.format is not None and detected is not None and body.format != detected:
        raise ValidationFailed(
            "The file's contents do not match its claimed format",
            details=[("format", f"claimed {body.format}, but the file is {detected}")],
        )
    if stored is not None and load_check is None and needs_check(detected, False):
        if settings is None or store is None:
            raise TypeError("create_version needs settings and store to check the model file")
        load_check = check_model_file(settings, store, stored, detected, model_schema=body.model_schema)
    model = get_visible_model(session, principal, model_id, "write")
    # Versions of one model are numbered one at a time: concurrent uploads wait here
    # (PostgreSQL row lock; SQLite's writers already take turns) instead of picking
    # the same next version and failing.
    session.execute(select(RegisteredModel.id).where(RegisteredModel.id == model.id).with_for_update())
    version = body.version or next_version(session, model)
    duplicate = Conflict("This version already exists", details=[("version", f"{version} already exists")])
    exists_already = session.scalar(
        select(ModelVersion.id).where(ModelVersion.model_id == model.id, ModelVersion.version == version)
    )
    if exists_already is not None:
        raise duplicate
    row = ModelVersion(
        model_id=model.id,
        organization_id=model.organization_id,
        version=version,
        number=number or next_number(session, model),
        **(lineage or {}),
        stage=body.stage,
        description=body.description or None,
        file_key=stored.key if stored else None,
        file_size=stored.size if stored else None,
        sha256=stored.sha256 if stored else None,
        format=detected,
        trusted=False,
        load_check=load_check,
        performance_metrics=body.performance_metrics,
        training_metrics=body.training_metrics,
        model_schema=body.model_schema,
        requirements=body.requirements or None,
        created_by_id=acting(principal)[0],
        created_by_key_id=acting(principal)[1],
    )
    session.add(row)
    flush_unique(session, duplicate)
    _record_transition(session, principal, row, body.stage, "Uploaded", from_stage=None)
    model.updated_at = utcnow()
    session.flush()
    events.record(
        session,
        model.organization_id,
        "model.version.created",
        {"model_id": model.id, "version_id": row.id, "version": version, "stage": str(body.stage)},
    )
    audit.describe(
        session,
        resource_type="model_versions",
        resource_id=row.id,
        organization_id=model.organization_id,
        project_id=model.project_id,
        model_id=model.id,
        version=version,
        stage=str(body.stage),
        format=str(detected) if detected else None,
        size=stored.size if stored else None,
        sha256=stored.sha256 if stored else None,
        source=(lineage or {}).get("source"),
    )
    return row


def versions_query(model: RegisteredModel) -> Select[ModelVersion]:
    return select(ModelVersion).where(ModelVersion.model_id == model.id)


def _load_check_read(value: dict[str, Any] | None) -> LoadCheckRead | None:
    if not value:
        return None
    try:
        return LoadCheckRead.model_validate(value)
    except ValidationError:
        return None


def record_load_check(session: Session, version_id: str, check: dict[str, Any]) -> None:
    """Keep the result of a check made when a version was loaded (it had none, or a
    stale one); only for the file it checked."""
    session.execute(
        update(ModelVersion)
        .where(ModelVersion.id == version_id, ModelVersion.sha256 == check.get("sha256"))
        .values(load_check=check)
    )


def version_reads(session: Session, rows: Sequence[ModelVersion]) -> list[VersionRead]:
    creators = actors(session, ((row.created_by_id, row.created_by_key_id) for row in rows))
    return [
        VersionRead(
            id=row.id,
            model_id=row.model_id,
            version=row.version,
            stage=Stage(row.stage),
            description=row.description,
            model_file_path=row.file_key,
            model_size_bytes=row.file_size,
            sha256=row.sha256,
            format=row.format,
            trusted=row.trusted,
            performance_metrics=row.performance_metrics or {},
            training_metrics=row.training_metrics or {},
            model_schema=row.model_schema,
            requirements=row.requirements,
            load_check=_load_check_read(row.load_check),
            created_by=creators.ref(row.created_by_id, row.created_by_key_id),
            created_at=row.created_at,
        )
        for row in rows
    ]


def version_read(session: Session, row: ModelVersion) -> VersionRead:
    return version_reads(session, [row])[0]


def delete_version(
    session: Session, principal: Principal, model_id: str, version: str, store: ArtifactStore
) -> None:
    """Delete a version's row (its tags, aliases and stage history cascade); its file
    is removed once the deletion has committed."""
    model, row = get_version(session, principal, model_id, version, "delete")
    audit.describe(
        session,
        resource_type="model_versions",
        resource_id=row.id,
        organization_id=model.organization_id,
        project_id=model.project_id,
        model_id=model.id,
        version=row.version,
    )
    key = row.file_key
    session.delete(row)
    model.updated_at = utcnow()
    session.flush()
    if key:
        run_after_commit(session, lambda: store.delete(key))


def change_stage(
    session: Session, principal: Principal, model_id: str, version: str, body: StageChange
) -> ModelVersion:
    """Move a version to another stage, recording the transition; promoting to
    production may archive the model's other production versions."""
    model, row = get_version(session, principal, model_id, version, "write")
    archived: list[str] = []
    if body.stage is Stage.production and body.archive_existing_versions:
        others = session.scalars(
            select(ModelVersion).where(
                ModelVersion.model_id == model.id,
                ModelVersion.stage == Stage.production,
                ModelVersion.id != row.id,
            )
        ).all()
        for other in others:
            _record_transition(
                session,
                principal,
                other,
                Stage.archived,
                f"Archived when {row.version} was promoted to production",
                from_stage=other.stage,
            )
            other.stage = Stage.archived
            archived.append(other.version)
    previous = row.stage
    if previous != body.stage or archived:
        _record_transition(session, principal, row, body.stage, body.description, from_stage=previous)
        row.stage = body.stage
        model.updated_at = utcnow()
    session.flush()
    events.record(
        session,
        model.organization_id,
        "model.version.stage_changed",
        {
            "model_id": model.id,
            "version_id": row.id,
            "version": row.version,
            "from_stage": previous,
            "to_stage": str(body.stage),
            "archived_versions": archived,
        },
    )
    audit.describe(
        session,
        resource_type="model_versions",
        resource_id=row.id,
        organization_id=model.organization_id,
        model_id=model.id,
        version=row.version,
        from_stage=previous,
        to_stage=str(body.stage),
        archived_versions=archived or None,
    )
    return row


def stage_history(session: Session, row: ModelVersion) -> list[StageTransition]:
    return list(
        session.scalars(
            select(StageTransition)
            .where(StageTransition.version_id == row.id)
            .order_by(StageTransition.created_at, StageTransition.id)
        )
    )


def set_trusted(
    session: Session, principal: Principal, model_id: str, version: str, trusted: bool
) -> ModelVersion:
    """Mark a version's file as trusted (or no longer): organisation admins only."""
    model, row = get_version(session, principal, model_id, version, "read")
    if organization_role(session, principal, model.organization_id) is not Role.admin:
        project = projects_service.get_project(session, model.project_id)
        target = Target("models", model.organization_id, project)
        audit.note_denied(session, principal, "write", target)
        raise PermissionDenied("Only an organisation admin can trust a model file")
    previous = row.trusted
    row.trusted = trusted
    if previous != trusted and row.format in (ModelFormat.pickle, ModelFormat.joblib, ModelFormat.skops):
        row.load_check = None  # the file loads differently now: it is checked again before it loads
    session.flush()
    audit.describe(
        session,
        resource_type="model_versions",
        resource_id=row.id,
        organization_id=model.organization_id,
        model_id=model.id,
        version=row.version,
        trusted=trusted,
        previous_trusted=previous,
    )
    return row


# --- what the registry holds per organisation and project --------------------------------
register_file_source(
    "model_versions",
    select(ModelVersion.file_key).join(RegisteredModel, RegisteredModel.id == ModelVersion.model_id),
    organization=RegisteredModel.organization_id,
    project=RegisteredModel.project_id,
)
register_counter("models", organization=RegisteredModel.organization_id, project=RegisteredModel.project_id)
