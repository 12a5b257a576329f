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

from collections.abc import Callable
from typing import Any

from sqlalchemy import select
from sqlalchemy.orm import Session

from maestro.config import Settings
from maestro.db import (
    Database,
    UniqueName,
    release_write_lock,
    run_after_commit,
    run_after_rollback,
    utcnow,
)
from maestro.deployments.models import (
    Deployment,
    DeploymentEvent,
    DeploymentRevision,
    DeploymentStatus,
    LogLevel,
    ServingGeneration,
)
from maestro.deployments.schemas import (
    DeploymentConfig,
    DeploymentCreate,
    DeploymentUpdate,
    RollbackRequest,
)
from maestro.deployments.secrets import MASK, SecretsUnreadable, masked, seal, unseal
from maestro.deployments.state import GENERATION_ROW, ServingState
from maestro.errors import Conflict, NotFound, ValidationFailed
from maestro.events import service as events
from maestro.identity import audit
from maestro.identity.actors import who
from maestro.identity.rbac import Action, Principal, Target, authorize
from maestro.projects import service as projects_service
from maestro.projects.models import Project
from maestro.projects.sources import register_counter
from maestro.registry.models import ModelVersion, RegisteredModel
from maestro.runtimes.errors import ModelLoadError, ServingError

NO_SUCH_DEPLOYMENT = "No such deployment"
NO_SUCH_VERSION = "No such model version in this project"
DUPLICATE_NAME = "A deployment with this name already exists in the organisation"
HISTORY_SHOWN = 50
GRANULARITY_SECONDS = {"1m": 60, "5m": 300, "1h": 3600, "1d": 86_400}
MAX_POINTS = 1500
CONFIG_FIELDS = ("environment", "instance_type", "min_instances", "max_instances", "auto_scaling")


# --- access ------------------------------------------------------------------------------------


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
    projects_service.authorize_in_project(
        session, principal, "deployments", action, project, missing=NO_SUCH_DEPLOYMENT
    )
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


_NAMES = UniqueName(Deployment, "organization_id", DUPLICATE_NAME, "already used in this organisation")


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
    project = projects_service.project_for(session, principal, "deployments", project_id, "write")
    authorize_deploying(session, principal, project)
    version = deployable_version(session, project.id, body.model_version_id, "model_version_id")
    _NAMES.check(session, project.organization_id, body.name)
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
    project = projects_service.project_for(session, principal, "deployments", project_id, "write")
    version = deployable_version(session, project.id, body.model_version_id, "model_version_id")
    _NAMES.check(session, project.organization_id, body.name)
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
    _NAMES.flush(session)
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
    by = who(session, principal)
    _event(
        session,
        deployment,
        LogLevel.info,
        "created",
        f"Created by {by}, serving version {version.version} as {described.get('serving')}",
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
        _NAMES.check(session, deployment.organization_id, body.name, but=deployment.id)
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
        f"{verb} version {version.version}{was} by {who(session, principal)}{because}",
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
        _NAMES.check(session, deployment.organization_id, changes["name"], but=deployment.id)
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
        _event(session, deployment, LogLevel.info, verb.lower(), f"{verb} by {who(session, principal)}")
    config_changes = [field for field in changed if field not in ("model_version_id", "status")]
    if config_changes:
        _event(
            session,
            deployment,
            LogLevel.info,
            "updated",
            f"Configuration changed by {who(session, principal)}: {', '.join(config_changes)}",
            changed=config_changes,
        )
    if changed:
        deployment.updated_at = utcnow()
        bump_generation(session)
    _NAMES.flush(session)
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


def refused(exc: ModelLoadError, version: ModelVersion, field: str) -> ServingError:
    """The load failure, naming the version, with the status its reason calls for."""
    return ServingError(
        exc.reason,
        f"Version {version.version} cannot be deployed: {exc.message}",
        status=exc.status_code,
        details=[(field, exc.reason)],
    )


def deploy_version(
    session: Session,
    serving: ServingState,
    version: ModelVersion,
    field: str,
    write: Callable[[dict[str, Any]], Deployment],
    *,
    serving_now: Deployment | None = None,
) -> Deployment:
    """The one way a version reaches traffic, for creating, redeploying and rolling back.

    With the checks done, the database is released (``release_write_lock``) while the
    version loads and warms up; a version that cannot be loaded is refused naming
    ``field`` and, for an existing deployment (``serving_now``), noted in its log while it
    keeps serving. ``write(description)`` then records the change in the request's
    transaction. The loaded model is kept only when the change commits and the deployment
    serves it; otherwise it is let go at once."""
    release_write_lock(session)
    try:
        runtime = serving.prepare(version.id)
    except ModelLoadError as exc:
        load_failed(serving.database, serving_now, version, exc.message, exc.reason)
        raise refused(exc, version, field) from exc
    version_id = version.id
    try:
        deployment = write(runtime.describe())
    except BaseException:
        serving.discard(version_id)
        raise
    if deployment.model_version_id == version_id and deployment.status == DeploymentStatus.active:
        run_after_rollback(session, lambda: serving.discard(version_id))
    else:
        serving.discard(version_id)
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


register_counter("deployments", organization=Deployment.organization_id, project=Deployment.project_id)
