"""``mlflow-artifacts`` paths: a run's artifacts (tracking's rows, written through
``tracking.service``) or a logged model's files, listed, read, recorded and deleted."""

from __future__ import annotations

import re
from collections.abc import Iterable
from dataclasses import dataclass
from typing import Any

from sqlalchemy import delete, or_, select
from sqlalchemy.orm import Session

from maestro.api.mlflow_errors import invalid, missing
from maestro.api.params import ID_MAX_LENGTH
from maestro.db import flush_unique, run_after_commit, run_after_rollback, utcnow
from maestro.errors import Conflict, ValidationFailed
from maestro.identity import audit
from maestro.identity.rbac import Action, Principal
from maestro.mlflow_compat.common import Scope, text
from maestro.mlflow_compat.logged_models import get_logged_model_row
from maestro.mlflow_compat.models import LoggedModel, LoggedModelFile
from maestro.mlflow_compat.runs import get_run_row, run_id_of, run_uri, writable_run
from maestro.storage import ArtifactStore, StoredObject, delete_after_commit
from maestro.tracking import service as tracking
from maestro.tracking.models import (
    ArtifactType,
    Experiment,
    Run,
    RunArtifact,
)


# --- artifacts -----------------------------------------------------------------------------
@dataclass(frozen=True)
class ArtifactPlace:
    """Where an ``mlflow-artifacts`` path points: a run's artifacts or a logged model's
    files, and the path inside them ("" for the root)."""

    experiment_id: str
    run_id: str | None
    model_id: str | None
    path: str


_PLACE = re.compile(
    r"^(?P<experiment>[^/]+)/(?:models/(?P<model>[^/]+)|(?P<run>[^/]+))/artifacts(?:/(?P<rest>.*))?$"
)


def artifact_place(path: str, check_path: Any) -> ArtifactPlace | None:
    """The place of ``<experiment>/<run>/artifacts/<path>`` or
    ``<experiment>/models/<model_id>/artifacts/<path>``; None for paths above them.
    ``check_path`` refuses names that could ever be read as locations."""
    stripped = path.strip("/") if not path.startswith("/") else None
    if stripped is None:
        raise invalid("Invalid path: artifact paths are relative.")
    if "\\" in path or "\x00" in path:
        raise invalid("Invalid path.")
    if any(part in ("..", ".") for part in path.split("/")):
        raise invalid("Invalid path.")
    match = _PLACE.fullmatch(stripped)
    if match is None:
        return None
    inner = match["rest"] or ""
    if inner:
        try:
            inner = check_path(inner)
        except ValidationFailed as exc:
            raise invalid(f"Invalid path: {exc.details[0].message if exc.details else exc.message}") from exc
    for part in (match["experiment"], match["model"] or match["run"]):
        if len(part) > ID_MAX_LENGTH + 10 or not re.fullmatch(r"[A-Za-z0-9_-]+", part):
            raise missing("No such artifact")
    return ArtifactPlace(match["experiment"], match["run"], match["model"], inner)


def artifact_owner(
    session: Session, principal: Principal, scope: Scope, place: ArtifactPlace, action: Action
) -> tuple[Experiment, Run | None, LoggedModel | None]:
    if place.run_id is not None:
        experiment, run = (
            writable_run(session, principal, scope, place.run_id)
            if action == "write"
            else get_run_row(session, principal, scope, place.run_id, action)
        )
        if experiment.id != place.experiment_id:
            raise missing("No such artifact")
        return experiment, run, None
    assert place.model_id is not None
    model, experiment = get_logged_model_row(session, principal, scope, place.model_id, action)
    if experiment.id != place.experiment_id:
        raise missing("No such artifact")
    return experiment, None, model


def artifacts_prefix(experiment: Experiment) -> str:
    return tracking.artifacts_prefix(experiment)


def record_artifact(
    session: Session,
    principal: Principal,
    scope: Scope,
    place: ArtifactPlace,
    stored: StoredObject,
    content_type: str | None,
    store: ArtifactStore,
) -> None:
    """Record a stored upload at its place; a file already there is replaced."""
    experiment, run, model = artifact_owner(session, principal, scope, place, "write")
    if run is not None:
        tracking.record_artifact(
            session,
            principal,
            experiment.id,
            run.id,
            path=place.path,
            artifact_type=ArtifactType.model
            if place.path.split("/")[0] in ("model", "models")
            else ArtifactType.other,
            description=None,
            stored=stored,
            content_type=content_type,
            store=store,
        )
        return
    assert model is not None
    row = session.get(LoggedModelFile, (model.id, place.path))
    replaced = None
    if row is None:
        row = LoggedModelFile(model_id=model.id, path=place.path)
        session.add(row)
    else:
        replaced = row.storage_key
        row.created_at = utcnow()
    row.storage_key, row.size, row.sha256 = stored.key, stored.size, stored.sha256
    model.updated_at = utcnow()
    flush_unique(session, Conflict("A file was uploaded to this path at the same time; try again"))
    key = stored.key
    run_after_rollback(session, lambda: store.delete(key))
    if replaced is not None:
        run_after_commit(session, lambda: store.delete(replaced))
    audit.describe(
        session,
        resource_type="mlflow_logged_models",
        resource_id=model.id,
        organization_id=model.organization_id,
        path=place.path,
        size=stored.size,
        sha256=stored.sha256,
    )


def files_of(
    session: Session, run: Run | None, model: LoggedModel | None, prefix: str
) -> list[tuple[str, int, str]]:
    """(path, size, storage key) of the files at or under ``prefix``."""
    if run is not None:
        statement = select(RunArtifact.path, RunArtifact.size, RunArtifact.storage_key).where(
            RunArtifact.run_id == run.id
        )
        column = RunArtifact.path
    else:
        assert model is not None
        statement = select(LoggedModelFile.path, LoggedModelFile.size, LoggedModelFile.storage_key).where(
            LoggedModelFile.model_id == model.id
        )
        column = LoggedModelFile.path
    if prefix:
        statement = statement.where(or_(column == prefix, column.startswith(f"{prefix}/", autoescape=True)))
    return [(path, size, key) for path, size, key in session.execute(statement.order_by(column))]


def listing(files: Iterable[tuple[str, int, str]], prefix: str) -> list[dict[str, Any]]:
    """The immediate children of ``prefix``: files with their sizes, then directories,
    by name; a prefix naming a file lists nothing, as in MLflow."""
    children: dict[str, dict[str, Any]] = {}
    start = f"{prefix}/" if prefix else ""
    for path, size, _ in files:
        if path == prefix:
            return []
        rest = path[len(start) :]
        head, _, tail = rest.partition("/")
        if tail:
            children.setdefault(head, {"path": head, "is_dir": True})
        else:
            children[head] = {"path": head, "is_dir": False, "file_size": size}
    return [children[name] for name in sorted(children)]


def list_artifacts(
    session: Session, principal: Principal, scope: Scope, place: ArtifactPlace | None
) -> dict[str, Any]:
    if place is None:
        return {}
    _, run, model = artifact_owner(session, principal, scope, place, "read")
    files = listing(files_of(session, run, model, place.path), place.path)
    return {"files": files} if files else {}


def list_run_artifacts(
    session: Session, principal: Principal, scope: Scope, body: dict[str, Any], check_path: Any
) -> dict:
    """The older ``artifacts/list`` of a run: paths relative to the run's root."""
    experiment, run = get_run_row(session, principal, scope, run_id_of(body), "read")
    path = text(body, "path", required=False, max_length=1000) or ""
    place = artifact_place(f"{experiment.id}/{run.id}/artifacts/{path}".rstrip("/"), check_path)
    assert place is not None
    files = listing(files_of(session, run, None, place.path), place.path)
    for item in files:
        item["path"] = f"{place.path}/{item['path']}" if place.path else item["path"]
    answer: dict[str, Any] = {"root_uri": run_uri(experiment.id, run.id)}
    if files:
        answer["files"] = files
    return answer


def artifact_file(
    session: Session, principal: Principal, scope: Scope, place: ArtifactPlace
) -> tuple[str, int]:
    """(storage key, size) of the file at ``place``."""
    _, run, model = artifact_owner(session, principal, scope, place, "read")
    for path, size, key in files_of(session, run, model, place.path):
        if path == place.path:
            return key, size
    raise missing(f"No such artifact: '{place.path[:200]}'")


def delete_artifacts(
    session: Session, principal: Principal, scope: Scope, place: ArtifactPlace, store: ArtifactStore
) -> dict:
    experiment, run, model = artifact_owner(session, principal, scope, place, "write")
    files = files_of(session, run, model, place.path)
    paths = [path for path, _, _ in files]
    keys = [key for _, _, key in files]
    if run is not None:
        tracking.delete_run_artifacts(session, run, paths)
    else:
        assert model is not None
        session.execute(
            delete(LoggedModelFile).where(
                LoggedModelFile.model_id == model.id, LoggedModelFile.path.in_(paths)
            )
        )
    delete_after_commit(session, store, keys)
    audit.describe(
        session,
        resource_type="run_artifacts" if run is not None else "mlflow_logged_models",
        resource_id=run.id if run is not None else model.id if model is not None else None,
        organization_id=experiment.organization_id,
        deleted=len(paths),
        path=place.path,
    )
    return {}
