"""MLflow's registered models and model versions, on Maestro's registry through its
own service functions."""

from __future__ import annotations

import posixpath
import re
from collections import defaultdict
from collections.abc import Sequence
from dataclasses import dataclass
from typing import TYPE_CHECKING, Any

import yaml
from sqlalchemy import select
from sqlalchemy.orm import Session

from maestro.api.mlflow_errors import EXISTS, MlflowError, invalid, missing
from maestro.api.params import ID_MAX_LENGTH
from maestro.db import run_after_rollback
from maestro.errors import Conflict, NotFound
from maestro.identity import audit
from maestro.identity.rbac import Principal
from maestro.mlflow_compat import filters
from maestro.mlflow_compat.models import LoggedModel
from maestro.projects import service as projects_service
from maestro.registry import labels as registry_labels
from maestro.registry import service as registry
from maestro.registry.models import ModelAlias, ModelTag, ModelType, ModelVersion, RegisteredModel, Stage
from maestro.registry.models import VersionTag as RegistryVersionTag
from maestro.registry.schemas import (
    ALIAS_PATTERN,
    ModelCreate,
    ModelUpdate,
    StageChange,
    VersionCreate,
)
from maestro.runtimes.formats import ModelFormat, detect_format
from maestro.storage import ArtifactStore, StoredObject
from maestro.tracking.models import Run

if TYPE_CHECKING:
    from maestro.config import Settings
from maestro.mlflow_compat.artifacts import artifact_owner, artifact_place, files_of
from maestro.mlflow_compat.common import (
    DESCRIPTION_TYPE,
    FROM_MLFLOW_STAGE,
    MODEL_NAME_TYPE,
    REGISTRY_TAG_KEY_TYPE,
    REGISTRY_TAG_VALUE_TYPE,
    STAGE_NAMES,
    Scope,
    boolean,
    checked,
    entries,
    key_values,
    ms,
    pairs,
    required_text,
    strings,
    text,
)
from maestro.mlflow_compat.experiments import (
    TagColumns,
    order_by_clauses,
    page_window,
    paged,
    where_filter,
    within_budget,
)
from maestro.mlflow_compat.logged_models import get_logged_model_row, logged_model_uri
from maestro.mlflow_compat.runs import get_run_row, run_uri


# --- registered models ---------------------------------------------------------------------
def _model_name(body: dict[str, Any], field: str = "name") -> str:
    return required_text(body, field, max_length=500)


def registered_model_row(session: Session, principal: Principal, scope: Scope, name: str) -> RegisteredModel:
    try:
        return registry.get_model_by_name(session, principal, scope.required(), name)
    except NotFound as exc:
        raise missing(f"Registered Model with name={name[:200]} not found") from exc


def _version_extras(
    session: Session, version_ids: Sequence[str]
) -> tuple[dict[str, dict[str, str]], dict[str, list[str]]]:
    tags: dict[str, dict[str, str]] = defaultdict(dict)
    aliases: dict[str, list[str]] = defaultdict(list)
    if version_ids:
        for version_id, key, value in session.execute(
            select(RegistryVersionTag.version_id, RegistryVersionTag.key, RegistryVersionTag.value)
            .where(RegistryVersionTag.version_id.in_(list(version_ids)))
            .order_by(RegistryVersionTag.key)
        ):
            tags[version_id][key] = value
        for version_id, alias in session.execute(
            select(ModelAlias.version_id, ModelAlias.alias)
            .where(ModelAlias.version_id.in_(list(version_ids)))
            .order_by(ModelAlias.alias)
        ):
            aliases[version_id].append(alias)
    return tags, aliases


def version_dicts(
    session: Session, model: RegisteredModel, rows: Sequence[ModelVersion]
) -> list[dict[str, Any]]:
    tags, aliases = _version_extras(session, [row.id for row in rows])
    return [_version_dict(row, model, tags, aliases) for row in rows]


def _version_dict(
    row: ModelVersion,
    model: RegisteredModel,
    tags: dict[str, dict[str, str]],
    aliases: dict[str, list[str]],
) -> dict[str, Any]:
    item: dict[str, Any] = {
        "name": model.name,
        "version": str(row.number),
        "creation_timestamp": ms(row.created_at),
        "last_updated_timestamp": ms(row.created_at),  # versions keep no update time
        "current_stage": STAGE_NAMES.get(Stage(row.stage), "None"),
        "description": row.description or "",
        "source": row.source or "",
        "run_id": row.run_id or "",
        "status": "READY",
        "run_link": "",
        "tags": pairs(tags.get(row.id, {})),
        "aliases": aliases.get(row.id, []),
    }
    if row.logged_model_id:
        item["model_id"] = row.logged_model_id
    return item


def _latest_per_stage(
    session: Session, model: RegisteredModel, stages: Sequence[Stage] | None = None
) -> list[ModelVersion]:
    rows = session.scalars(
        select(ModelVersion).where(ModelVersion.model_id == model.id).order_by(ModelVersion.number)
    )
    latest: dict[str, ModelVersion] = {}
    for row in rows:
        if stages is None or Stage(row.stage) in stages:
            latest[row.stage] = row
    return sorted(latest.values(), key=lambda row: row.number)


def registered_model_dict(session: Session, model: RegisteredModel) -> dict[str, Any]:
    tags = dict(
        session.execute(
            select(ModelTag.key, ModelTag.value).where(ModelTag.model_id == model.id).order_by(ModelTag.key)
        ).all()
    )
    aliases = session.execute(
        select(ModelAlias.alias, ModelVersion.number)
        .join(ModelVersion, ModelVersion.id == ModelAlias.version_id)
        .where(ModelAlias.model_id == model.id)
        .order_by(ModelAlias.alias)
    ).all()
    item: dict[str, Any] = {
        "name": model.name,
        "creation_timestamp": ms(model.created_at),
        "last_updated_timestamp": ms(model.updated_at),
        "description": model.description or "",
        "latest_versions": version_dicts(session, model, _latest_per_stage(session, model)),
        "tags": pairs(tags),
        "aliases": [{"alias": alias, "version": str(number)} for alias, number in aliases],
    }
    return item


def _registry_tag(key: Any, value: Any) -> tuple[str, str]:
    return checked(REGISTRY_TAG_KEY_TYPE, key, "tag key"), checked(
        REGISTRY_TAG_VALUE_TYPE, value or "", "tag value"
    )


def create_registered_model(
    session: Session, principal: Principal, scope: Scope, body: dict[str, Any]
) -> dict:
    name = checked(MODEL_NAME_TYPE, _model_name(body), "name")
    description = checked(
        DESCRIPTION_TYPE, text(body, "description", required=False, max_length=2000) or "", "description"
    )
    tags = [
        _registry_tag(key, value)
        for key, value in key_values(entries(body, "tags", limit=100), "tags").items()
    ]
    try:
        model = registry.create_model(
            session,
            principal,
            scope.required(),
            ModelCreate(name=name, description=description or None, model_type=ModelType.other),
        )
    except Conflict as exc:
        raise MlflowError(f"Registered Model (name={name}) already exists.", EXISTS) from exc
    for key, value in tags:
        registry.set_tag(session, principal, model.id, key, value)
    return {"registered_model": registered_model_dict(session, model)}


def get_registered_model(session: Session, principal: Principal, scope: Scope, body: dict[str, Any]) -> dict:
    model = registered_model_row(session, principal, scope, _model_name(body))
    return {"registered_model": registered_model_dict(session, model)}


def update_registered_model(
    session: Session, principal: Principal, scope: Scope, body: dict[str, Any]
) -> dict:
    model = registered_model_row(session, principal, scope, _model_name(body))
    if "description" in body:
        description = checked(
            DESCRIPTION_TYPE, text(body, "description", required=False, max_length=2000) or "", "description"
        )
        model = registry.update_model(
            session, principal, model.id, ModelUpdate(description=description or None)
        )
    return {"registered_model": registered_model_dict(session, model)}


def rename_registered_model(
    session: Session, principal: Principal, scope: Scope, body: dict[str, Any]
) -> dict:
    model = registered_model_row(session, principal, scope, _model_name(body))
    new_name = checked(MODEL_NAME_TYPE, _model_name(body, "new_name"), "new_name")
    try:
        model = registry.update_model(session, principal, model.id, ModelUpdate(name=new_name))
    except Conflict as exc:
        raise MlflowError(f"Registered Model (name={new_name}) already exists.", EXISTS) from exc
    return {"registered_model": registered_model_dict(session, model)}


def delete_registered_model(
    session: Session, principal: Principal, scope: Scope, body: dict[str, Any], store: ArtifactStore
) -> dict:
    model = registered_model_row(session, principal, scope, _model_name(body))
    registry.delete_model(session, principal, model.id, store)
    return {}


def search_registered_models(
    session: Session, principal: Principal, scope: Scope, body: dict[str, Any]
) -> dict:
    project = projects_service.project_for(session, principal, "models", scope.required(), "read")
    limit, offset = page_window(body, 100, 1000)
    statement = select(RegisteredModel).where(RegisteredModel.project_id == project.id)
    tag_columns = TagColumns(ModelTag.model_id, ModelTag.key, ModelTag.value, RegisteredModel.id)
    statement = where_filter(
        statement, body, filters.REGISTERED_MODELS, {"name": RegisteredModel.name}, tag_columns
    )
    columns = {
        "name": RegisteredModel.name,
        "timestamp": RegisteredModel.updated_at,
        "last_updated_timestamp": RegisteredModel.updated_at,
        "creation_timestamp": RegisteredModel.created_at,
    }
    ordering = order_by_clauses(
        strings(body, "order_by", limit=5), columns, [RegisteredModel.name.asc(), RegisteredModel.id.asc()]
    )
    rows = list(session.scalars(statement.order_by(*ordering).offset(offset).limit(limit + 1)))
    page, token = paged(rows, limit, offset)
    models, token = within_budget([registered_model_dict(session, model) for model in page], offset, token)
    answer: dict[str, Any] = {"registered_models": models}
    if token:
        answer["next_page_token"] = token
    return answer


def latest_versions(session: Session, principal: Principal, scope: Scope, body: dict[str, Any]) -> dict:
    model = registered_model_row(session, principal, scope, _model_name(body))
    stages = None
    if body.get("stages"):
        stages = [_stage(name) for name in strings(body, "stages", limit=10)]
    return {"model_versions": version_dicts(session, model, _latest_per_stage(session, model, stages))}


def _stage(name: str) -> Stage:
    stage = FROM_MLFLOW_STAGE.get(name.strip().lower())
    if stage is None:
        raise invalid(
            f"Invalid Model Version stage: {name[:50]}. "
            "Value must be one of None, Staging, Production, Archived."
        )
    return stage


def set_registered_model_tag(
    session: Session, principal: Principal, scope: Scope, body: dict[str, Any]
) -> dict:
    model = registered_model_row(session, principal, scope, _model_name(body))
    key, value = _registry_tag(body.get("key"), body.get("value"))
    registry.set_tag(session, principal, model.id, key, value)
    return {}


def delete_registered_model_tag(
    session: Session, principal: Principal, scope: Scope, body: dict[str, Any]
) -> dict:
    model = registered_model_row(session, principal, scope, _model_name(body))
    key = required_text(body, "key", max_length=250)
    try:
        registry.delete_tag(session, principal, model.id, key)
    except NotFound as exc:
        raise missing(f"No tag with key {key[:100]!r} on registered model {model.name}") from exc
    return {}


# --- model versions ------------------------------------------------------------------------
def _version_number(body: dict[str, Any]) -> int:
    raw = body.get("version")
    if isinstance(raw, int) and not isinstance(raw, bool):
        return raw
    if not isinstance(raw, str) or not raw.strip().isdigit() or len(raw) > 9:
        raise invalid(f"Parameter 'version' must be an integer, got {str(raw)[:50]!r}.")
    return int(raw)


def version_row(
    session: Session, principal: Principal, scope: Scope, body: dict[str, Any]
) -> tuple[RegisteredModel, ModelVersion]:
    model = registered_model_row(session, principal, scope, _model_name(body))
    number = _version_number(body)
    row = session.scalar(
        select(ModelVersion).where(ModelVersion.model_id == model.id, ModelVersion.number == number)
    )
    if row is None:
        raise missing(f"Model Version (name={model.name}, version={number}) not found")
    return model, row


semantic_version = registry.semantic_version  # N.0.0 for MLflow's version N (the registry's rule)


@dataclass
class PreparedVersion:
    """What registering needs, found (and the model file copied) before the write
    transaction, so no lock is held while a large file is copied."""

    model_id: str
    name: str
    source: str
    run_id: str | None
    logged_model_id: str | None
    description: str | None
    tags: list[tuple[str, str]]
    stored: StoredObject | None
    detected: ModelFormat | None
    framework: str | None


MAX_MLMODEL_BYTES = 1024 * 1024
FRAMEWORKS = {
    "sklearn": "scikit-learn",
    "xgboost": "xgboost",
    "lightgbm": "lightgbm",
    "onnx": "onnx",
    "pytorch": "pytorch",
    "tensorflow": "tensorflow",
    "keras": "keras",
}


def main_model_file(mlmodel: bytes) -> tuple[str | None, str | None]:
    """(the model file's path, the framework) named in an ``MLmodel`` file: the
    ``python_function`` flavor's ``model_path``, else a flavor's own file field. Read as
    plain YAML data (``safe_load``); nothing in it is imported or run."""
    try:
        document = yaml.safe_load(mlmodel)
    except yaml.YAMLError:
        return None, None
    flavors = document.get("flavors") if isinstance(document, dict) else None
    if not isinstance(flavors, dict):
        return None, None
    framework = next((FRAMEWORKS[name] for name in flavors if name in FRAMEWORKS), None)
    candidates: list[Any] = []
    pyfunc = flavors.get("python_function")
    if isinstance(pyfunc, dict):
        candidates.append(pyfunc.get("model_path"))
    for name, flavor in flavors.items():
        if isinstance(flavor, dict) and name != "python_function":
            candidates += [
                flavor.get("pickled_model"),
                flavor.get("model_path"),
                flavor.get("data"),
                flavor.get("model_data"),
            ]
    for candidate in candidates:
        if isinstance(candidate, str) and candidate:
            return posixpath.normpath(candidate), framework
    return None, framework


def _source_files(
    session: Session,
    principal: Principal,
    scope: Scope,
    source: str,
    logged_model_id: str | None,
    run_id: str | None,
    check_path: Any,
) -> tuple[dict[str, tuple[str, int]], str | None, str | None]:
    """(files by path relative to the model directory, logged model id, run id) of a
    version's source: a logged model (``models:/<id>`` or ``model_id``), or a directory
    of run artifacts (``mlflow-artifacts:/<exp>/<run>/artifacts/<dir>`` or
    ``runs:/<run>/<dir>``). Other sources register without a file."""
    if logged_model_id is None and source.startswith("models:/"):
        candidate = source.removeprefix("models:/").strip("/")
        if "/" not in candidate and "@" not in candidate:
            logged_model_id = candidate
    if logged_model_id:
        logged, _ = get_logged_model_row(session, principal, scope, logged_model_id, "read")
        files = {path: (key, size) for path, size, key in files_of(session, None, logged, "")}
        return files, logged.id, run_id or logged.source_run_id
    place = None
    if source.startswith("mlflow-artifacts:/"):
        place = artifact_place(source.removeprefix("mlflow-artifacts:").lstrip("/"), check_path)
    elif source.startswith("runs:/"):
        found_run, _, inner = source.removeprefix("runs:/").partition("/")
        experiment, _ = get_run_row(session, principal, scope, found_run, "read")
        place = artifact_place(f"{experiment.id}/{found_run}/artifacts/{inner}".rstrip("/"), check_path)
    if place is None:
        return {}, None, run_id
    _, run, model = artifact_owner(session, principal, scope, place, "read")
    prefix = f"{place.path}/" if place.path else ""
    files = {
        path[len(prefix) :]: (key, size)
        for path, size, key in files_of(session, run, model, place.path)
        if path.startswith(prefix)
    }
    return files, model.id if model else None, run.id if run else run_id


SOURCE_PREFIXES = ("models:/", "runs:/", "mlflow-artifacts:/")


def is_own_source(source: str) -> bool:
    """Whether ``source`` is a location this server hands out and serves itself: a
    logged or registered model (``models:/…``), a run's artifacts (``runs:/…``) or the
    artifact store behind this server (``mlflow-artifacts:/…``), never with a host
    (``scheme://host/…`` would send clients to another server)."""
    return source.startswith(SOURCE_PREFIXES) and not source.startswith(
        tuple(prefix + "/" for prefix in SOURCE_PREFIXES)
    )


def checked_source(source: str) -> str:
    """A version's ``source``, refused unless Maestro serves it (``is_own_source``): the
    MLflow client of whoever loads the version downloads from its source, so a file
    path, a bucket or another server there would make them read whatever it names.
    Maestro never reads a source itself; it only looks up the runs, artifacts and logged
    models its own URIs name, with the caller's access."""
    if source and not is_own_source(source):
        raise invalid(
            f"Invalid source {source[:100]!r}: a model version's source is a models:/, runs:/ or "
            "mlflow-artifacts:/ URI of this server."
        )
    return source


def prepare_version(
    session: Session,
    principal: Principal,
    scope: Scope,
    body: dict[str, Any],
    store: ArtifactStore,
    max_bytes: int,
    check_path: Any,
) -> PreparedVersion:
    model = registered_model_row(session, principal, scope, _model_name(body))
    model = registry.get_visible_model(session, principal, model.id, "write")
    source = checked_source(text(body, "source", required=False, max_length=1000) or "")
    run_id = text(body, "run_id", required=False, max_length=ID_MAX_LENGTH)
    if run_id:
        get_run_row(session, principal, scope, run_id, "read")
    description = checked(
        DESCRIPTION_TYPE, text(body, "description", required=False, max_length=2000) or "", "description"
    )
    tags = [
        _registry_tag(key, value)
        for key, value in key_values(entries(body, "tags", limit=100), "tags").items()
    ]
    files, logged_model_id, run_id = _source_files(
        session,
        principal,
        scope,
        source,
        text(body, "model_id", required=False, max_length=40),
        run_id,
        check_path,
    )
    stored = detected = framework = None
    if "MLmodel" in files:
        key, size = files["MLmodel"]
        if size <= MAX_MLMODEL_BYTES:
            main, framework = main_model_file(store.read_bytes(key))
            if main is not None and main in files:
                stored, detected = copy_model_file(
                    store, files[main][0], registry.model_files_prefix(model), max_bytes
                )
    return PreparedVersion(
        model.id,
        model.name,
        source,
        run_id,
        logged_model_id,
        description or None,
        tags,
        stored,
        detected,
        framework,
    )


def copy_model_file(
    store: ArtifactStore, key: str, prefix: str, max_bytes: int
) -> tuple[StoredObject, ModelFormat]:
    """A copy of the model file for the registry (which owns it from then on), with its
    format recognised from its bytes alone."""
    stored = store.put_stream(prefix, store.iter_bytes(key), max_bytes=max_bytes)
    try:
        with store.open(stored.key) as file:
            head = file.read(64 * 1024)
            detected = detect_format(head, file, stored.size)
    except BaseException:
        store.delete(stored.key)
        raise
    return stored, detected


def create_version(
    session: Session,
    principal: Principal,
    scope: Scope,
    prepared: PreparedVersion,
    store: ArtifactStore,
    settings: Settings | None = None,
) -> dict:
    # The file is loaded in an isolated process first, before this transaction reads or
    # writes anything: the check takes seconds, and a refused file is refused (422) here.
    load_check = None
    if settings is not None and prepared.stored is not None:
        load_check = registry.check_model_file(settings, store, prepared.stored, prepared.detected)
    model = registry.get_visible_model(session, principal, prepared.model_id, "write")
    session.execute(select(RegisteredModel.id).where(RegisteredModel.id == model.id).with_for_update())
    number = registry.next_number(session, model)
    version = semantic_version(session, model, number)
    if prepared.stored is not None:
        key = prepared.stored.key
        run_after_rollback(session, lambda: store.delete(key))
    row = registry.create_version(
        session,
        principal,
        model.id,
        VersionCreate(version=version, description=prepared.description),
        prepared.stored,
        prepared.detected,
        number=number,
        lineage={
            "source": prepared.source or None,
            "run_id": prepared.run_id,
            "logged_model_id": prepared.logged_model_id,
        },
        settings=settings,
        store=store,
        load_check=load_check,
    )
    if prepared.framework and not model.framework:
        model.framework = prepared.framework
    for key, value in prepared.tags:
        registry_labels.set_version_tag(session, principal, model.id, row.version, key, value)
    session.flush()
    return {"model_version": version_dicts(session, model, [row])[0]}


def get_version(session: Session, principal: Principal, scope: Scope, body: dict[str, Any]) -> dict:
    model, row = version_row(session, principal, scope, body)
    return {"model_version": version_dicts(session, model, [row])[0]}


def update_version(session: Session, principal: Principal, scope: Scope, body: dict[str, Any]) -> dict:
    model, row = version_row(session, principal, scope, body)
    registry.get_visible_model(session, principal, model.id, "write")
    if "description" in body:
        description = checked(
            DESCRIPTION_TYPE, text(body, "description", required=False, max_length=2000) or "", "description"
        )
        row.description = description or None
        session.flush()
        audit.describe(
            session,
            resource_type="model_versions",
            resource_id=row.id,
            organization_id=model.organization_id,
            changed=["description"],
        )
    return {"model_version": version_dicts(session, model, [row])[0]}


def delete_version(
    session: Session, principal: Principal, scope: Scope, body: dict[str, Any], store: ArtifactStore
) -> dict:
    model, row = version_row(session, principal, scope, body)
    registry.delete_version(session, principal, model.id, row.version, store)
    return {}


def transition_stage(session: Session, principal: Principal, scope: Scope, body: dict[str, Any]) -> dict:
    model, row = version_row(session, principal, scope, body)
    stage = _stage(required_text(body, "stage", max_length=50))
    row = registry.change_stage(
        session,
        principal,
        model.id,
        row.version,
        StageChange(stage=stage, archive_existing_versions=boolean(body, "archive_existing_versions")),
    )
    return {"model_version": version_dicts(session, model, [row])[0]}


def download_uri(session: Session, principal: Principal, scope: Scope, body: dict[str, Any]) -> dict:
    _, row = version_row(session, principal, scope, body)
    if row.logged_model_id:
        logged = session.get(LoggedModel, row.logged_model_id)
        if logged is not None:
            return {"artifact_uri": logged_model_uri(logged)}
    source = row.source or ""
    if source.startswith("runs:/"):
        found_run, _, inner = source.removeprefix("runs:/").partition("/")
        run = session.get(Run, found_run)
        if run is not None and run.organization_id == row.organization_id:
            return {"artifact_uri": f"{run_uri(run.experiment_id, run.id)}/{inner}".rstrip("/")}
    if not source:
        raise missing(
            f"Version {row.number} was uploaded through Maestro's API and has no MLflow model directory; "
            f"download its file from /api/v1/models/{row.model_id}/versions/{row.version}/file"
        )
    if not is_own_source(source):
        # Stored before sources were checked: never send a client to another location.
        raise missing(
            f"Version {row.number} names a source this server does not serve; "
            f"download its file from /api/v1/models/{row.model_id}/versions/{row.version}/file"
        )
    return {"artifact_uri": source}


def search_versions(session: Session, principal: Principal, scope: Scope, body: dict[str, Any]) -> dict:
    project = projects_service.project_for(session, principal, "models", scope.required(), "read")
    limit, offset = page_window(body, 10_000, 200_000)
    statement = (
        select(ModelVersion, RegisteredModel)
        .join(RegisteredModel, RegisteredModel.id == ModelVersion.model_id)
        .where(RegisteredModel.project_id == project.id)
    )
    fields = {
        "name": RegisteredModel.name,
        "run_id": ModelVersion.run_id,
        "source_path": ModelVersion.source,
        "version_number": ModelVersion.number,
        "model_id": ModelVersion.logged_model_id,
    }
    tag_columns = TagColumns(
        RegistryVersionTag.version_id, RegistryVersionTag.key, RegistryVersionTag.value, ModelVersion.id
    )
    statement = where_filter(statement, body, filters.MODEL_VERSIONS, fields, tag_columns)
    ordering = order_by_clauses(
        strings(body, "order_by", limit=5),
        {
            "name": RegisteredModel.name,
            "version_number": ModelVersion.number,
            "creation_timestamp": ModelVersion.created_at,
        },
        [RegisteredModel.name.asc(), ModelVersion.number.desc()],
    )
    rows = session.execute(statement.order_by(*ordering).offset(offset).limit(limit + 1)).all()
    page, token = paged(list(rows), limit, offset)
    tags, aliases = _version_extras(session, [version.id for version, _ in page])
    versions, token = within_budget(
        [_version_dict(version, model, tags, aliases) for version, model in page], offset, token
    )
    answer: dict[str, Any] = {"model_versions": versions}
    if token:
        answer["next_page_token"] = token
    return answer


def set_version_tag(session: Session, principal: Principal, scope: Scope, body: dict[str, Any]) -> dict:
    model, row = version_row(session, principal, scope, body)
    key, value = _registry_tag(body.get("key"), body.get("value"))
    registry_labels.set_version_tag(session, principal, model.id, row.version, key, value)
    return {}


def delete_version_tag(session: Session, principal: Principal, scope: Scope, body: dict[str, Any]) -> dict:
    model, row = version_row(session, principal, scope, body)
    key = required_text(body, "key", max_length=250)
    try:
        registry_labels.delete_version_tag(session, principal, model.id, row.version, key)
    except NotFound as exc:
        raise missing(f"No tag with key {key[:100]!r} on version {row.number} of {model.name}") from exc
    return {}


def _alias(body: dict[str, Any]) -> str:
    alias = required_text(body, "alias", max_length=60)
    if not re.fullmatch(ALIAS_PATTERN, alias):
        raise invalid(
            f"Invalid alias {alias[:60]!r}: lowercase letters, digits, '_' and '-', starting with a letter."
        )
    return alias


def set_alias(session: Session, principal: Principal, scope: Scope, body: dict[str, Any]) -> dict:
    model, row = version_row(session, principal, scope, body)
    registry_labels.set_alias(session, principal, model.id, _alias(body), row.version)
    return {}


def get_alias(session: Session, principal: Principal, scope: Scope, body: dict[str, Any]) -> dict:
    model = registered_model_row(session, principal, scope, _model_name(body))
    alias = _alias(body)
    try:
        _, row = registry_labels.resolve_alias(session, principal, model.id, alias)
    except NotFound as exc:
        raise missing(f"Registered model alias {alias} not found.") from exc
    return {"model_version": version_dicts(session, model, [row])[0]}


def delete_alias(session: Session, principal: Principal, scope: Scope, body: dict[str, Any]) -> dict:
    model = registered_model_row(session, principal, scope, _model_name(body))
    alias = _alias(body)
    try:
        registry_labels.delete_alias(session, principal, model.id, alias)
    except NotFound as exc:
        raise missing(f"Registered model alias {alias} not found.") from exc
    return {}
