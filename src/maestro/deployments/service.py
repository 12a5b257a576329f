"""Deployments: creation, listing, changes, deploys and rollbacks, deletion, and reading
their history, logs and metrics.

A deploy happens in three steps, so that loading a model never holds the database:
``check_*`` authorises and validates, the route commits (releasing SQLite's write lock)
and loads and warms the version (``ServingState.prepare``), then ``create`` / ``update``
/ ``rollback`` write the change, its history, its log line, the outbox event and the
audit description in one transaction, and bump the generation counter so that other
processes pick the change up. The name moves to the new version once that transaction
has committed. A version that cannot be loaded changes nothing: the deployment keeps
serving what it served, and the failure is written to its log.

Deploying a version (creating, deploying another, rolling back) needs permission to write
deployments and to read models: an API key needs both grants. Environment variables are
write-only secrets (``deployment_secrets``): sealed when stored, masked in every read.
"""

from __future__ import annotations

import math
from collections import defaultdict
from collections.abc import Sequence
from datetime import UTC, datetime, timedelta
from typing import Any, cast

from sqlalchemy import Select, and_, func, or_, select
from sqlalchemy.orm import Session

from maestro.api.errors import Conflict, NotFound, ValidationFailed
from maestro.api.request_metrics import LATENCY_BUCKETS_MS
from maestro.config import Settings
from maestro.db import Database, flush_unique, run_after_commit, utcnow
from maestro.deployments.models import (
    LEVEL_RANK,
    Deployment,
    DeploymentEvent,
    DeploymentMinute,
    DeploymentRevision,
    DeploymentStatus,
    Environment,
    InstanceType,
    LogLevel,
    ServingGeneration,
)
from maestro.deployments.schemas import (
    METRIC_NAMES,
    Actor,
    ActorType,
    DeploymentConfig,
    DeploymentCreate,
    DeploymentDetail,
    DeploymentLogRead,
    DeploymentMetrics,
    DeploymentRead,
    DeploymentRevisionRead,
    DeploymentUpdate,
    Granularity,
    MetricName,
    MetricPoint,
    ModelVersionRef,
    RevisionAction,
    RollbackRequest,
)
from maestro.deployments.secrets import MASK, SecretsUnreadable, masked, seal, unseal
from maestro.deployments.state import GENERATION_ROW, ServingState
from maestro.events import service as events
from maestro.identity import audit
from maestro.identity.models import User
from maestro.identity.rbac import Action, Principal, Target, authorize
from maestro.identity.schemas import user_ref
from maestro.projects import service as projects_service
from maestro.projects.models import Project
from maestro.registry.models import ModelVersion, RegisteredModel

NO_SUCH_DEPLOYMENT = "No such deployment"
NO_SUCH_VERSION = "No such model version in this project"
DUPLICATE_NAME = "A deployment with this name already exists in the organisation"
HISTORY_SHOWN = 50
GRANULARITY_SECONDS = {"1m": 60, "5m": 300, "1h": 3600, "1d": 86_400}
MAX_POINTS = 1500
CONFIG_FIELDS = ("environment", "instance_type", "min_instances", "max_instances", "auto_scaling")


# --- access ------------------------------------------------------------------------------------
def authorize_deployments(
    session: Session, principal: Principal, action: Action, project: Project, *, missing: str | None = None
) -> None:
    authorize(
        session, principal, action, Target("deployments", project.organization_id, project), missing=missing
    )


def project_for_deployments(
    session: Session, principal: Principal, project_id: str, action: Action
) -> Project:
    project = projects_service.get_project(session, project_id)
    authorize_deployments(session, principal, action, project)
    return project


def authorize_deploying(session: Session, principal: Principal, project: Project) -> None:
    """Deploying serves a model version: whoever deploys must also be allowed to read
    the project's models (a role that writes deployments always may; a key needs
    ``models: read`` besides ``deployments: write``)."""
    authorize(session, principal, "read", Target("models", project.organization_id, project))


def get_deployment(session: Session, principal: Principal, deployment_id: str, action: Action) -> Deployment:
    """The deployment, once ``principal`` may ``action`` it; another tenant's answers 404."""
    deployment = session.get(Deployment, deployment_id)
    if deployment is None:
        raise NotFound(NO_SUCH_DEPLOYMENT)
    project = projects_service.get_project(session, deployment.project_id)
    authorize_deployments(session, principal, action, project, missing=NO_SUCH_DEPLOYMENT)
    return deployment


def deployable_version(session: Session, project_id: str, version_id: str, field: str) -> ModelVersion:
    """A version of a model in the deployment's project; any other answers the same 422."""
    row = session.execute(
        select(ModelVersion)
        .join(RegisteredModel, RegisteredModel.id == ModelVersion.model_id)
        .where(ModelVersion.id == version_id, RegisteredModel.project_id == project_id)
    ).scalar_one_or_none()
    if row is None:
        raise ValidationFailed(NO_SUCH_VERSION, details=[(field, NO_SUCH_VERSION)])
    return row


# --- configuration and its secrets -------------------------------------------------------------
def _mask_values_kept(values: dict[str, str], current: dict[str, str] | None) -> dict[str, str]:
    """``values`` with each sent back as the mask replaced by the stored value."""
    kept = dict(values)
    for name, value in values.items():
        if value != MASK:
            continue
        if current is None or name not in current:
            problem = (
                "its stored value can no longer be read (the secret key changed); send it again"
                if current is None
                else "there is no stored value to keep; send the value itself"
            )
            raise ValidationFailed(
                f"{MASK} stands for a stored value of {name}, but {problem}",
                details=[(f"deployment_config.env_vars.{name}", problem)],
            )
        kept[name] = current[name]
    return kept


def stored_config(
    settings: Settings, sent: DeploymentConfig, deployment: Deployment | None = None
) -> tuple[dict[str, Any], str | None, bool]:
    """What to store for the configuration ``sent`` (to ``deployment``, for an update):
    the configuration with environment values masked, the values sealed, and whether the
    values changed. On an update, a part ``sent`` leaves out is kept (so is a value sent
    back as the mask)."""
    config = dict(deployment.deployment_config or {}) if deployment is not None else {}
    sealed = deployment.env_vars_encrypted if deployment is not None else None
    values_changed = False
    if deployment is None or "resource_limits" in sent.model_fields_set:
        config["resource_limits"] = sent.resource_limits.model_dump(mode="json")
    if deployment is None or "env_vars" in sent.model_fields_set:
        current: dict[str, str] | None = {}
        if deployment is not None:
            try:
                current = unseal(settings, deployment.env_vars_encrypted)
            except SecretsUnreadable:
                current = None
        values = _mask_values_kept(dict(sent.env_vars), current)
        values_changed = values != current
        if values_changed:
            sealed = seal(settings, values)
        config["env_vars"] = masked(values)
    config.setdefault("env_vars", {})
    config.setdefault("resource_limits", {})
    return config, sealed, values_changed


def config_read(stored: dict[str, Any] | None) -> DeploymentConfig:
    """The configuration as every reader sees it: environment values masked."""
    config = dict(stored or {})
    config["env_vars"] = masked(config.get("env_vars") or {})
    return DeploymentConfig.model_validate(config)


def deployment_env_vars(settings: Settings, deployment: Deployment) -> dict[str, str]:
    """The environment variables in clear, for whatever runs the deployment's instances
    (never for an API answer)."""
    return unseal(settings, deployment.env_vars_encrypted)


def _ensure_unique_name(session: Session, organization_id: str, name: str, but: str | None = None) -> None:
    clash = select(Deployment.id).where(
        Deployment.organization_id == organization_id, Deployment.name == name
    )
    if but is not None:
        clash = clash.where(Deployment.id != but)
    if session.scalar(clash.limit(1)) is not None:
        raise Conflict(DUPLICATE_NAME, details=[("name", "already used in this organisation")])


def _flush_unique(session: Session) -> None:
    flush_unique(session, Conflict(DUPLICATE_NAME, details=[("name", "already used in this organisation")]))


def bump_generation(session: Session) -> None:
    """Count a deployment change, so every serving process notices it."""
    from sqlalchemy.dialects import postgresql, sqlite

    table = ServingGeneration.__table__
    statement: postgresql.Insert | sqlite.Insert
    if session.get_bind().dialect.name == "postgresql":
        statement = postgresql.insert(table)
    else:
        statement = sqlite.insert(table)
    statement = statement.values(id=GENERATION_ROW, value=1)
    session.execute(
        statement.on_conflict_do_update(index_elements=[table.c.id], set_={"value": table.c.value + 1})
    )


def _actor(principal: Principal) -> dict[str, str | None]:
    return {"actor_type": principal.kind, "actor_id": principal.user_id or principal.id}


def _who(principal: Principal) -> str:
    return "an API key" if principal.kind == "api_key" else "a user"


def _event(
    session: Session, deployment: Deployment, level: LogLevel, event: str, message: str, **details: Any
) -> None:
    session.add(
        DeploymentEvent(
            deployment_id=deployment.id, level=level, event=event, message=message[:2000], details=details
        )
    )


def _record_updated(
    session: Session, deployment: Deployment, changed: list[str], previous_version_id: str | None
) -> None:
    events.record(
        session,
        deployment.organization_id,
        "deployment.updated",
        {
            "deployment_id": deployment.id,
            "name": deployment.name,
            "changed": changed,
            "model_version_id": deployment.model_version_id,
            "previous_version_id": previous_version_id,
            "status": str(deployment.status),
        },
    )


def fail_serving(
    session: Session, version_id: str, deployment_ids: list[str], message: str
) -> list[Deployment]:
    """Stop the active deployments among ``deployment_ids`` that serve ``version_id``,
    whose model process crashed too often: each is marked failed, with a log line and
    a ``deployment.updated`` event, and every serving process is told. Returns them."""
    rows = list(
        session.scalars(
            select(Deployment).where(
                Deployment.id.in_(deployment_ids),
                Deployment.model_version_id == version_id,
                Deployment.status == DeploymentStatus.active,
            )
        )
    )
    for deployment in rows:
        deployment.status = DeploymentStatus.failed
        _event(
            session,
            deployment,
            LogLevel.error,
            "failed",
            f"Stopped serving: {message}",
            version_id=version_id,
            reason="model_crashed",
        )
        _record_updated(session, deployment, ["status"], None)
    if rows:
        bump_generation(session)
    return rows


def log_now(
    database: Database, deployment_id: str, level: LogLevel, event: str, message: str, **details: Any
) -> None:
    """A log line in its own transaction: for failures, whose request changes nothing."""
    with database.session() as session:
        session.add(
            DeploymentEvent(
                deployment_id=deployment_id, level=level, event=event, message=message[:2000], details=details
            )
        )


def _after_commit(
    session: Session, serving: ServingState, deployment: Deployment, *names: str, moved: bool = True
) -> None:
    """Once the change is committed: move (or release) the live name when what is served
    changed, and drop the directory entries so the next request reads the deployment as
    it now is."""
    deployment_id, organization_id = deployment.id, deployment.organization_id
    serves = deployment.model_version_id if deployment.status == DeploymentStatus.active else None

    def apply() -> None:
        if moved:
            serving.serve(deployment_id, serves)
        serving.forget(organization_id, *names)

    run_after_commit(session, apply)


# --- creating ----------------------------------------------------------------------------------
def check_create(
    session: Session, principal: Principal, project_id: str, body: DeploymentCreate
) -> ModelVersion:
    project = project_for_deployments(session, principal, project_id, "write")
    authorize_deploying(session, principal, project)
    version = deployable_version(session, project.id, body.model_version_id, "model_version_id")
    _ensure_unique_name(session, project.organization_id, body.name)
    _mask_values_kept(dict(body.deployment_config.env_vars), {})  # nothing stored to keep yet
    return version


def create(
    session: Session,
    principal: Principal,
    serving: ServingState,
    project_id: str,
    body: DeploymentCreate,
    described: dict[str, Any],
) -> Deployment:
    """Record a deployment of a version ``serving`` has prepared (its ``describe()``)."""
    project = project_for_deployments(session, principal, project_id, "write")
    version = deployable_version(session, project.id, body.model_version_id, "model_version_id")
    _ensure_unique_name(session, project.organization_id, body.name)
    config, sealed, _ = stored_config(serving.settings, body.deployment_config)
    now = utcnow()
    deployment = Deployment(
        organization_id=project.organization_id,
        project_id=project.id,
        name=body.name,
        environment=body.environment,
        status=DeploymentStatus.active,
        model_id=version.model_id,
        model_version_id=version.id,
        instance_type=body.instance_type,
        min_instances=body.min_instances,
        max_instances=body.max_instances,
        auto_scaling=body.auto_scaling,
        deployment_config=config,
        env_vars_encrypted=sealed,
        serving=described,
        deployed_at=now,
        created_by_id=principal.user_id,
    )
    session.add(deployment)
    _flush_unique(session)
    session.add(
        DeploymentRevision(
            deployment_id=deployment.id,
            action="created",
            model_version_id=version.id,
            version=version.version,
            reason=body.reason or None,
            **_actor(principal),
        )
    )
    _event(
        session,
        deployment,
        LogLevel.info,
        "created",
        f"Created by {_who(principal)}, serving version {version.version} as {described.get('serving')}",
        version_id=version.id,
        version=version.version,
        actor_id=principal.user_id or principal.id,
    )
    bump_generation(session)
    session.flush()
    events.record(
        session,
        deployment.organization_id,
        "deployment.created",
        {
            "deployment_id": deployment.id,
            "name": deployment.name,
            "project_id": project.id,
            "environment": str(deployment.environment),
            "model_version_id": version.id,
            "version": version.version,
        },
    )
    audit.describe(
        session,
        resource_type="deployments",
        resource_id=deployment.id,
        organization_id=deployment.organization_id,
        project_id=project.id,
        name=deployment.name,
        model_version_id=version.id,
        version=version.version,
    )
    _after_commit(session, serving, deployment, deployment.name)
    return deployment


# --- changing ----------------------------------------------------------------------------------
def check_update(
    session: Session, principal: Principal, deployment_id: str, body: DeploymentUpdate
) -> tuple[Deployment, ModelVersion | None]:
    """The deployment and the version to prepare before the change, if it serves one
    that is not live yet (a new version, or reactivation)."""
    deployment = get_deployment(session, principal, deployment_id, "write")
    if body.name is not None and body.name != deployment.name:
        _ensure_unique_name(session, deployment.organization_id, body.name, but=deployment.id)
    if body.model_version_id is not None and body.model_version_id != deployment.model_version_id:
        authorize_deploying(session, principal, projects_service.get_project(session, deployment.project_id))
        return deployment, deployable_version(
            session, deployment.project_id, body.model_version_id, "model_version_id"
        )
    reactivating = body.status == DeploymentStatus.active and deployment.status != DeploymentStatus.active
    if reactivating:
        if deployment.model_version_id is None:
            raise Conflict(
                "The deployment's version was deleted; deploy another version to activate it",
                details=[("model_version_id", "required to activate this deployment")],
            )
        return deployment, session.get(ModelVersion, deployment.model_version_id)
    return deployment, None


def _deploy(
    session: Session,
    principal: Principal,
    deployment: Deployment,
    version: ModelVersion,
    action: str,
    reason: str | None,
    described: dict[str, Any],
) -> str | None:
    """Point the row at ``version``; returns the version id it served before."""
    previous_id = deployment.model_version_id
    previous = session.get(ModelVersion, previous_id) if previous_id else None
    deployment.model_version_id = version.id
    deployment.model_id = version.model_id
    deployment.serving = described
    deployment.deployed_at = utcnow()
    session.add(
        DeploymentRevision(
            deployment_id=deployment.id,
            action=action,
            model_version_id=version.id,
            version=version.version,
            previous_version_id=previous_id,
            reason=reason or None,
            **_actor(principal),
        )
    )
    was = f" (was {previous.version})" if previous is not None else ""
    verb = "Rolled back to" if action == "rolled_back" else "Deployed"
    because = f": {reason}" if reason else ""
    _event(
        session,
        deployment,
        LogLevel.info,
        action,
        f"{verb} version {version.version}{was} by {_who(principal)}{because}",
        version_id=version.id,
        version=version.version,
        previous_version_id=previous_id,
        serving=described.get("serving"),
        actor_id=principal.user_id or principal.id,
    )
    return previous_id


def update(
    session: Session,
    principal: Principal,
    serving: ServingState,
    deployment_id: str,
    body: DeploymentUpdate,
    prepared: tuple[ModelVersion, dict[str, Any]] | None,
) -> Deployment:
    """Apply a change; ``prepared``: the version ``check_update`` asked for, loaded."""
    deployment = get_deployment(session, principal, deployment_id, "write")
    changes = body.model_dump(exclude_unset=True, exclude={"reason"})
    old_name = deployment.name
    changed: list[str] = []
    if "name" in changes and changes["name"] != deployment.name:
        _ensure_unique_name(session, deployment.organization_id, changes["name"], but=deployment.id)
        deployment.name = changes["name"]
        changed.append("name")
    for field in CONFIG_FIELDS:
        if field in changes and changes[field] != getattr(deployment, field):
            setattr(deployment, field, changes[field])
            changed.append(field)
    if body.deployment_config is not None:
        config, sealed, values_changed = stored_config(serving.settings, body.deployment_config, deployment)
        if values_changed or config != deployment.deployment_config:
            deployment.deployment_config = config
            deployment.env_vars_encrypted = sealed
            changed.append("deployment_config")
    if deployment.max_instances < deployment.min_instances:
        raise ValidationFailed(
            "max_instances must be at least min_instances",
            details=[("max_instances", f"less than min_instances ({deployment.min_instances})")],
        )
    previous_id = deployment.model_version_id
    new_version = (
        prepared is not None
        and body.model_version_id is not None
        and prepared[0].id == body.model_version_id
        and body.model_version_id != deployment.model_version_id
    )
    if new_version:
        assert prepared is not None
        version = deployable_version(session, deployment.project_id, prepared[0].id, "model_version_id")
        _deploy(session, principal, deployment, version, "deployed", body.reason, prepared[1])
        changed.append("model_version_id")
    if "status" in changes and changes["status"] != deployment.status:
        if changes["status"] == DeploymentStatus.active and prepared is not None and not new_version:
            deployment.serving = prepared[1]
        deployment.status = changes["status"]
        changed.append("status")
        verb = "Activated" if deployment.status == DeploymentStatus.active else "Deactivated"
        _event(session, deployment, LogLevel.info, verb.lower(), f"{verb} by {_who(principal)}")
    config_changes = [field for field in changed if field not in ("model_version_id", "status")]
    if config_changes:
        _event(
            session,
            deployment,
            LogLevel.info,
            "updated",
            f"Configuration changed by {_who(principal)}: {', '.join(config_changes)}",
            changed=config_changes,
        )
    if changed:
        deployment.updated_at = utcnow()
        bump_generation(session)
    _flush_unique(session)
    if changed:
        _record_updated(session, deployment, changed, previous_id if new_version else None)
    audit.describe(
        session,
        resource_type="deployments",
        resource_id=deployment.id,
        organization_id=deployment.organization_id,
        changed=changed,
        model_version_id=deployment.model_version_id if new_version else None,
        previous_version_id=previous_id if new_version else None,
        reason=body.reason,
    )
    moved = new_version or "status" in changed
    _after_commit(session, serving, deployment, old_name, deployment.name, moved=moved)
    return deployment


# --- rolling back -------------------------------------------------------------------------------
def previous_version_id(session: Session, deployment: Deployment) -> str | None:
    """The version served before the current one: the newest revision naming another."""
    for version_id in session.scalars(
        select(DeploymentRevision.model_version_id)
        .where(DeploymentRevision.deployment_id == deployment.id)
        .order_by(DeploymentRevision.created_at.desc(), DeploymentRevision.id.desc())
    ):
        if version_id is not None and version_id != deployment.model_version_id:
            return version_id
    return None


def check_rollback(
    session: Session, principal: Principal, deployment_id: str, body: RollbackRequest
) -> tuple[Deployment, ModelVersion]:
    deployment = get_deployment(session, principal, deployment_id, "write")
    authorize_deploying(session, principal, projects_service.get_project(session, deployment.project_id))
    if body.target_version_id is not None:
        target = deployable_version(
            session, deployment.project_id, body.target_version_id, "target_version_id"
        )
    else:
        target_id = previous_version_id(session, deployment)
        if target_id is None:
            raise Conflict(
                "This deployment has served no other version to roll back to",
                details=[("target_version_id", "no previous version; name one")],
            )
        target = deployable_version(session, deployment.project_id, target_id, "target_version_id")
    if target.id == deployment.model_version_id:
        raise Conflict(
            "The deployment already serves this version",
            details=[("target_version_id", "already served")],
        )
    return deployment, target


def rollback(
    session: Session,
    principal: Principal,
    serving: ServingState,
    deployment_id: str,
    target_id: str,
    reason: str | None,
    described: dict[str, Any],
) -> Deployment:
    deployment = get_deployment(session, principal, deployment_id, "write")
    target = deployable_version(session, deployment.project_id, target_id, "target_version_id")
    previous_id = _deploy(session, principal, deployment, target, "rolled_back", reason, described)
    deployment.updated_at = utcnow()
    bump_generation(session)
    session.flush()
    events.record(
        session,
        deployment.organization_id,
        "deployment.rolled_back",
        {
            "deployment_id": deployment.id,
            "name": deployment.name,
            "model_version_id": target.id,
            "version": target.version,
            "previous_version_id": previous_id,
            "reason": reason,
        },
    )
    audit.describe(
        session,
        resource_type="deployments",
        resource_id=deployment.id,
        organization_id=deployment.organization_id,
        model_version_id=target.id,
        version=target.version,
        previous_version_id=previous_id,
        reason=reason,
    )
    _after_commit(session, serving, deployment, deployment.name)
    return deployment


def load_failed(
    database: Database, deployment: Deployment | None, version: ModelVersion, message: str, reason: str
) -> None:
    """Note in the deployment's log that a version could not be deployed."""
    if deployment is None:
        return
    still = " It keeps serving the version it served." if deployment.model_version_id else ""
    log_now(
        database,
        deployment.id,
        LogLevel.error,
        "load_failed",
        f"Version {version.version} could not be deployed: {message}.{still}",
        version_id=version.id,
        reason=reason,
    )


# --- deleting ----------------------------------------------------------------------------------
def delete(session: Session, principal: Principal, serving: ServingState, deployment_id: str) -> None:
    """Terminate a deployment: it stops serving, and its history, log, prediction log and
    metrics go with it."""
    deployment = get_deployment(session, principal, deployment_id, "delete")
    audit.describe(
        session,
        resource_type="deployments",
        resource_id=deployment.id,
        organization_id=deployment.organization_id,
        project_id=deployment.project_id,
        name=deployment.name,
    )
    events.record(
        session,
        deployment.organization_id,
        "deployment.deleted",
        {"deployment_id": deployment.id, "name": deployment.name, "project_id": deployment.project_id},
    )
    deployment.status = DeploymentStatus.inactive  # so the live name is released after the commit
    _after_commit(session, serving, deployment, deployment.name)
    session.delete(deployment)
    bump_generation(session)
    session.flush()


# --- reading -----------------------------------------------------------------------------------
def effective_status(deployment: Deployment) -> DeploymentStatus:
    if deployment.model_version_id is None:
        return DeploymentStatus.failed
    return DeploymentStatus(deployment.status)


def deployments_query(
    project: Project,
    *,
    environment: Environment | None = None,
    status: DeploymentStatus | None = None,
    model_id: str | None = None,
) -> Select[Deployment]:
    statement = select(Deployment).where(Deployment.project_id == project.id)
    if environment is not None:
        statement = statement.where(Deployment.environment == environment)
    if status is DeploymentStatus.failed:
        statement = statement.where(
            or_(Deployment.model_version_id.is_(None), Deployment.status == DeploymentStatus.failed)
        )
    elif status is not None:
        statement = statement.where(Deployment.status == status, Deployment.model_version_id.is_not(None))
    if model_id is not None:
        statement = statement.where(Deployment.model_id == model_id)
    return statement


def endpoint_url(public_url: str | None, name: str) -> str:
    path = f"/api/v1/inference/{name}"
    return f"{public_url.rstrip('/')}{path}" if public_url else path


def deployment_reads(
    session: Session, serving: ServingState, rows: Sequence[Deployment]
) -> list[DeploymentRead]:
    """Reads for a page of deployments, with versions, creators and request counts in
    one query each."""
    if not rows:
        return []
    ids = [row.id for row in rows]
    version_ids = {row.model_version_id for row in rows if row.model_version_id}
    versions = {
        version.id: (version, name)
        for version, name in session.execute(
            select(ModelVersion, RegisteredModel.name)
            .join(RegisteredModel, RegisteredModel.id == ModelVersion.model_id)
            .where(ModelVersion.id.in_(version_ids))
        )
    }
    since = utcnow() - timedelta(hours=24)
    counts = dict(
        session.execute(
            select(DeploymentMinute.deployment_id, func.sum(DeploymentMinute.request_count))
            .where(DeploymentMinute.deployment_id.in_(ids), DeploymentMinute.minute >= since)
            .group_by(DeploymentMinute.deployment_id)
        ).all()
    )
    creator_ids = {row.created_by_id for row in rows if row.created_by_id}
    creators = (
        {user.id: user for user in session.scalars(select(User).where(User.id.in_(creator_ids)))}
        if creator_ids
        else {}
    )
    public_url = serving.settings.public_url
    reads = []
    for row in rows:
        version_ref = None
        if row.model_version_id in versions:
            version, model_name = versions[row.model_version_id]
            version_ref = ModelVersionRef(
                id=version.id, model_id=version.model_id, model_name=model_name, version=version.version
            )
        status = effective_status(row)
        reads.append(
            DeploymentRead(
                id=row.id,
                name=row.name,
                project_id=row.project_id,
                environment=Environment(row.environment),
                status=status,
                endpoint_url=endpoint_url(public_url, row.name),
                model_version=version_ref,
                instance_type=InstanceType(row.instance_type),
                min_instances=row.min_instances,
                max_instances=row.max_instances,
                current_instances=1 if status is DeploymentStatus.active else 0,
                auto_scaling=row.auto_scaling,
                deployment_config=config_read(row.deployment_config),
                health_status=serving.health(row.model_version_id, status),
                serving=(serving.describe(row.id) if status is DeploymentStatus.active else None)
                or row.serving,
                deployed_at=row.deployed_at,
                last_request_at=row.last_request_at,
                request_count_24h=int(counts.get(row.id) or 0),
                created_by=user_ref(creators.get(row.created_by_id or "")),
                created_at=row.created_at,
                updated_at=row.updated_at,
            )
        )
    return reads


def history(session: Session, deployment: Deployment) -> list[DeploymentRevisionRead]:
    rows = session.execute(
        select(DeploymentRevision, RegisteredModel.id, RegisteredModel.name)
        .outerjoin(ModelVersion, ModelVersion.id == DeploymentRevision.model_version_id)
        .outerjoin(RegisteredModel, RegisteredModel.id == ModelVersion.model_id)
        .where(DeploymentRevision.deployment_id == deployment.id)
        .order_by(DeploymentRevision.created_at.desc(), DeploymentRevision.id.desc())
        .limit(HISTORY_SHOWN)
    ).all()
    user_ids = {r.DeploymentRevision.actor_id for r in rows if r.DeploymentRevision.actor_type == "user"}
    users = (
        {user.id: user for user in session.scalars(select(User).where(User.id.in_(user_ids)))}
        if user_ids
        else {}
    )
    reads = []
    for revision, model_id, model_name in rows:
        user = users.get(revision.actor_id or "") if revision.actor_type == "user" else None
        reads.append(
            DeploymentRevisionRead(
                action=cast(RevisionAction, revision.action),
                model_version=ModelVersionRef(
                    id=revision.model_version_id,
                    model_id=model_id,
                    model_name=model_name,
                    version=revision.version,
                ),
                previous_version_id=revision.previous_version_id,
                reason=revision.reason,
                actor=Actor(
                    type=cast(ActorType, revision.actor_type),
                    id=revision.actor_id,
                    name=user.full_name if user is not None else None,
                ),
                created_at=revision.created_at,
            )
        )
    return reads


def deployment_detail(session: Session, serving: ServingState, deployment: Deployment) -> DeploymentDetail:
    read = deployment_reads(session, serving, [deployment])[0]
    return DeploymentDetail(**read.model_dump(), history=history(session, deployment))


def deployment_logs(
    session: Session,
    principal: Principal,
    deployment_id: str,
    *,
    since: datetime | None,
    until: datetime | None,
    level: LogLevel | None,
    limit: int,
) -> list[DeploymentLogRead]:
    """The deployment's log, newest first; ``level``: that level and more severe ones."""
    deployment = get_deployment(session, principal, deployment_id, "read")
    statement = select(DeploymentEvent).where(DeploymentEvent.deployment_id == deployment.id)
    if since is not None:
        statement = statement.where(DeploymentEvent.created_at >= since)
    if until is not None:
        statement = statement.where(DeploymentEvent.created_at <= until)
    if level is not None:
        levels = [str(name) for name, rank in LEVEL_RANK.items() if rank >= LEVEL_RANK[level]]
        statement = statement.where(DeploymentEvent.level.in_(levels))
    rows = session.scalars(
        statement.order_by(DeploymentEvent.created_at.desc(), DeploymentEvent.id.desc()).limit(limit)
    )
    return [
        DeploymentLogRead(
            id=row.id,
            timestamp=row.created_at,
            level=LogLevel(row.level),
            event=row.event,
            message=row.message,
            details=row.details or {},
        )
        for row in rows
    ]


# --- metrics -------------------------------------------------------------------------------------
class _Totals:
    __slots__ = ("buckets", "errors", "latency_max", "latency_sum", "predictions", "requests")

    def __init__(self) -> None:
        self.requests = self.errors = self.predictions = 0
        self.latency_sum = self.latency_max = 0.0
        self.buckets = [0] * (len(LATENCY_BUCKETS_MS) + 1)

    def add(self, row: DeploymentMinute) -> None:
        self.requests += row.request_count
        self.errors += row.error_count
        self.predictions += row.prediction_count
        self.latency_sum += row.latency_sum_ms
        self.latency_max = max(self.latency_max, row.latency_max_ms)
        for index, count in enumerate((row.latency_buckets or [])[: len(self.buckets)]):
            self.buckets[index] += int(count)

    def percentile(self, q: float) -> float | None:
        """Interpolated within the histogram bucket that holds it, as Prometheus does;
        never more than the slowest request seen."""
        total = sum(self.buckets)
        if total == 0:
            return None
        rank, seen = q * total, 0
        for index, count in enumerate(self.buckets):
            if count and seen + count >= rank:
                low = LATENCY_BUCKETS_MS[index - 1] if index > 0 else 0.0
                if index >= len(LATENCY_BUCKETS_MS):
                    return round(self.latency_max, 3)
                high = LATENCY_BUCKETS_MS[index]
                value = low + (high - low) * (rank - seen) / count
                return round(min(value, self.latency_max), 3)
            seen += count
        return round(self.latency_max, 3)  # pragma: no cover - the loop always returns

    def values(self, names: Sequence[str], seconds: float) -> dict[str, int | float | None]:
        known = self.requests > 0
        every: dict[str, int | float | None] = {
            "request_count": self.requests,
            "error_count": self.errors,
            "error_rate": round(self.errors / self.requests, 6) if known else None,
            "prediction_count": self.predictions,
            "latency_mean": round(self.latency_sum / self.requests, 3) if known else None,
            "latency_p50": self.percentile(0.50),
            "latency_p95": self.percentile(0.95),
            "latency_p99": self.percentile(0.99),
            "latency_max": round(self.latency_max, 3) if known else None,
            "throughput": round(self.requests / seconds, 6) if seconds > 0 else None,
        }
        return {name: every[name] for name in names}


def _epoch(value: datetime) -> float:
    return (value if value.tzinfo else value.replace(tzinfo=UTC)).timestamp()


def deployment_metrics(
    session: Session,
    principal: Principal,
    deployment_id: str,
    *,
    names: Sequence[MetricName] | None,
    start: datetime | None,
    end: datetime | None,
    granularity: Granularity,
) -> DeploymentMetrics:
    """Request metrics per interval, from the minutes every process wrote; intervals
    are aligned to multiples of the granularity (UTC), empty ones included."""
    deployment = get_deployment(session, principal, deployment_id, "read")
    step = GRANULARITY_SECONDS[granularity]
    chosen = list(dict.fromkeys(names)) if names else list(METRIC_NAMES)
    end_at = _epoch(end) if end is not None else utcnow().timestamp()
    start_at = _epoch(start) if start is not None else end_at - 60 * step
    if start_at >= end_at:
        raise ValidationFailed(
            "start_time must be before end_time", details=[("start_time", "not before end_time")]
        )
    first = math.floor(start_at / step) * step
    points = math.ceil((end_at - first) / step)
    if points > MAX_POINTS:
        raise ValidationFailed(
            f"At most {MAX_POINTS} intervals per request; widen the granularity or narrow the window",
            details=[("granularity", f"{points} intervals of {granularity}")],
        )
    window_start = datetime.fromtimestamp(first, UTC)
    window_end = datetime.fromtimestamp(end_at, UTC)
    rows = session.scalars(
        select(DeploymentMinute).where(
            and_(
                DeploymentMinute.deployment_id == deployment.id,
                DeploymentMinute.minute >= window_start,
                DeploymentMinute.minute < window_end,
            )
        )
    )
    intervals: dict[int, _Totals] = defaultdict(_Totals)
    overall = _Totals()
    for row in rows:
        index = int((row.minute.timestamp() - first) // step)
        intervals[index].add(row)
        overall.add(row)
    series = [
        MetricPoint(
            timestamp=datetime.fromtimestamp(first + index * step, UTC),
            values=intervals.get(index, _Totals()).values(chosen, step),
        )
        for index in range(points)
    ]
    return DeploymentMetrics(
        deployment_id=deployment.id,
        granularity=granularity,
        start_time=window_start,
        end_time=window_end,
        metrics=chosen,
        series=series,
        totals=overall.values(chosen, end_at - first),
    )
