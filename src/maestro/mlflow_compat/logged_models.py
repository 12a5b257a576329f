"""MLflow 3's logged models: this facade's own rows, linked to tracking's experiments
and runs."""

from __future__ import annotations

from typing import Any, Literal

from pydantic import TypeAdapter
from sqlalchemy import select
from sqlalchemy.orm import Session

from maestro.api.mlflow_errors import invalid, missing
from maestro.db import utcnow
from maestro.identity import audit
from maestro.identity.rbac import Action, Principal
from maestro.mlflow_compat import filters
from maestro.mlflow_compat.common import (
    ID_RE,
    MAX_RESULTS,
    PARAMS_TYPE,
    RUN_NAME_TYPE,
    TAGS_TYPE,
    Scope,
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
    get_experiment_row,
    page_window,
    paged,
    where_filter,
    within_budget,
)
from maestro.mlflow_compat.models import LoggedModel, LoggedModelFile
from maestro.mlflow_compat.runs import get_run_row, searched_experiments
from maestro.projects import service as projects_service
from maestro.projects.models import Project
from maestro.storage import ArtifactStore, delete_after_commit
from maestro.tracking.models import Experiment

# --- logged models -------------------------------------------------------------------------
NO_LOGGED_MODEL = "No such logged model"


def logged_model_uri(model: LoggedModel) -> str:
    return f"mlflow-artifacts:/{model.experiment_id}/models/{model.id}/artifacts"


def get_logged_model_row(
    session: Session, principal: Principal, scope: Scope, model_id: str, action: Action
) -> tuple[LoggedModel, Experiment]:
    if len(model_id) > 40 or not ID_RE.fullmatch(model_id):
        raise missing(f"Logged model with ID '{model_id[:100]}' not found.")
    row = session.execute(
        select(LoggedModel, Experiment, Project)
        .join(Experiment, Experiment.id == LoggedModel.experiment_id)
        .join(Project, Project.id == LoggedModel.project_id)
        .where(LoggedModel.id == model_id)
    ).first()
    message = f"Logged model with ID '{model_id}' not found."
    if row is None or not scope.admits(row[0].project_id):
        raise missing(message)
    model, experiment, project = row
    projects_service.authorize_in_project(session, principal, "experiments", action, project, missing=message)
    return model, experiment


def logged_model_dict(model: LoggedModel) -> dict[str, Any]:
    info: dict[str, Any] = {
        "model_id": model.id,
        "experiment_id": model.experiment_id,
        "name": model.name,
        "creation_timestamp_ms": ms(model.created_at),
        "last_updated_timestamp_ms": ms(model.updated_at),
        "artifact_uri": logged_model_uri(model),
        "status": model.status,
        "tags": pairs(model.tags or {}),
    }
    if model.model_type:
        info["model_type"] = model.model_type
    if model.source_run_id:
        info["source_run_id"] = model.source_run_id
    if model.status_message:
        info["status_message"] = model.status_message
    return {"info": info, "data": {"params": pairs(model.params or {})}}


def create_logged_model(session: Session, principal: Principal, scope: Scope, body: dict[str, Any]) -> dict:
    experiment = get_experiment_row(session, principal, scope, required_text(body, "experiment_id"), "write")
    name = text(body, "name", required=False, max_length=250) or "model"
    checked(RUN_NAME_TYPE, name, "name")
    run_id = text(body, "source_run_id", required=False)
    if run_id:
        run_experiment, _ = get_run_row(session, principal, scope, run_id, "write")
        if run_experiment.project_id != experiment.project_id:
            raise missing(f"Run with id={run_id} not found")
    params = checked(PARAMS_TYPE, key_values(entries(body, "params", limit=1000), "params"), "params")
    tags = checked(TAGS_TYPE, key_values(entries(body, "tags", limit=1000), "tags"), "tags")
    model = LoggedModel(
        organization_id=experiment.organization_id,
        project_id=experiment.project_id,
        experiment_id=experiment.id,
        source_run_id=run_id or None,
        name=name,
        model_type=text(body, "model_type", required=False, max_length=100),
        status="LOGGED_MODEL_PENDING",
        params=params,
        tags=tags,
        created_by_id=principal.user_id,
    )
    session.add(model)
    session.flush()
    audit.describe(
        session,
        resource_type="mlflow_logged_models",
        resource_id=model.id,
        organization_id=model.organization_id,
        experiment_id=experiment.id,
        name=name,
    )
    return {"model": logged_model_dict(model)}


def get_logged_model(session: Session, principal: Principal, scope: Scope, model_id: str) -> dict:
    model, _ = get_logged_model_row(session, principal, scope, model_id, "read")
    return {"model": logged_model_dict(model)}


LOGGED_MODEL_STATUSES = ("LOGGED_MODEL_PENDING", "LOGGED_MODEL_READY", "LOGGED_MODEL_UPLOAD_FAILED")


def finalize_logged_model(
    session: Session, principal: Principal, scope: Scope, model_id: str, body: dict[str, Any]
) -> dict:
    model, _ = get_logged_model_row(session, principal, scope, model_id, "write")
    status = required_text(body, "status", max_length=40).upper()
    if status not in LOGGED_MODEL_STATUSES:
        raise invalid(f"Invalid status {status!r}; one of {', '.join(LOGGED_MODEL_STATUSES)}.")
    model.status = status
    model.status_message = text(body, "status_message", required=False, max_length=2000)
    model.updated_at = utcnow()
    session.flush()
    audit.describe(
        session,
        resource_type="mlflow_logged_models",
        resource_id=model.id,
        organization_id=model.organization_id,
        status=status,
    )
    return {"model": logged_model_dict(model)}


def _merge_into_logged_model(
    session: Session,
    principal: Principal,
    scope: Scope,
    model_id: str,
    body: dict[str, Any],
    field: Literal["tags", "params"],
    limits: TypeAdapter[Any],
) -> dict:
    """Add or replace a logged model's tags or params with the body's entries."""
    model, _ = get_logged_model_row(session, principal, scope, model_id, "write")
    values = checked(limits, key_values(entries(body, field, limit=1000), field), field)
    setattr(model, field, {**(getattr(model, field) or {}), **values})
    model.updated_at = utcnow()
    session.flush()
    changed: dict[str, Any] = {field: sorted(values)[:50]}  # a detail of the audit entry
    audit.describe(
        session,
        resource_type="mlflow_logged_models",
        resource_id=model.id,
        organization_id=model.organization_id,
        **changed,
    )
    return {}


def set_logged_model_tags(
    session: Session, principal: Principal, scope: Scope, model_id: str, body: dict[str, Any]
) -> dict:
    return _merge_into_logged_model(session, principal, scope, model_id, body, "tags", TAGS_TYPE)


def delete_logged_model_tag(
    session: Session, principal: Principal, scope: Scope, model_id: str, key: str
) -> dict:
    model, _ = get_logged_model_row(session, principal, scope, model_id, "write")
    if key not in (model.tags or {}):
        raise missing(f"No tag with key {key[:100]!r} on logged model {model.id}")
    model.tags = {name: value for name, value in model.tags.items() if name != key}
    model.updated_at = utcnow()
    session.flush()
    audit.describe(
        session,
        resource_type="mlflow_logged_models",
        resource_id=model.id,
        organization_id=model.organization_id,
        deleted_tag=key,
    )
    return {}


def log_logged_model_params(
    session: Session, principal: Principal, scope: Scope, model_id: str, body: dict[str, Any]
) -> dict:
    return _merge_into_logged_model(session, principal, scope, model_id, body, "params", PARAMS_TYPE)


def delete_logged_model(
    session: Session, principal: Principal, scope: Scope, model_id: str, store: ArtifactStore
) -> dict:
    model, _ = get_logged_model_row(session, principal, scope, model_id, "delete")
    keys = list(
        session.scalars(select(LoggedModelFile.storage_key).where(LoggedModelFile.model_id == model.id))
    )
    audit.describe(
        session,
        resource_type="mlflow_logged_models",
        resource_id=model.id,
        organization_id=model.organization_id,
        deleted=True,
    )
    session.delete(model)
    session.flush()
    delete_after_commit(session, store, keys)
    return {}


def search_logged_models(session: Session, principal: Principal, scope: Scope, body: dict[str, Any]) -> dict:
    experiment_ids = searched_experiments(session, principal, scope, strings(body, "experiment_ids"))
    limit, offset = page_window(body, 100, MAX_RESULTS)
    statement = select(LoggedModel).where(LoggedModel.experiment_id.in_(experiment_ids))
    fields = {
        "name": LoggedModel.name,
        "status": LoggedModel.status,
        "source_run_id": LoggedModel.source_run_id,
        "model_type": LoggedModel.model_type,
    }
    statement = where_filter(statement, body, filters.LOGGED_MODELS, fields)
    rows = list(
        session.scalars(
            statement.order_by(LoggedModel.created_at.desc(), LoggedModel.id.desc())
            .offset(offset)
            .limit(limit + 1)
        )
    )
    page, token = paged(rows, limit, offset)
    models, token = within_budget([logged_model_dict(model) for model in page], offset, token)
    answer: dict[str, Any] = {"models": models}
    if token:
        answer["next_page_token"] = token
    return answer
