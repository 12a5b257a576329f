"""Where the model server's models come from: a version in the platform's registry, or
a file in the operator's models directory.

A models-directory name is never a path the caller chooses: it must be a relative name
of plain segments (letters, digits, ``.``, ``_``, ``-``; no ``..``, no leading dot, no
NUL, no backslash), and once every symlink is resolved the file must still be inside
the directory. Anything else is refused before a byte is read.
"""

from __future__ import annotations

import hashlib
import os
import re
import stat
from collections.abc import Mapping
from dataclasses import dataclass, field
from pathlib import Path
from typing import TYPE_CHECKING, Any, Literal

from sqlalchemy import select

from maestro.errors import Conflict, NotFound, PayloadTooLarge, PermissionDenied, ValidationFailed
from maestro.identity.rbac import Target, authorize
from maestro.runtimes.errors import ModelLoadError

if TYPE_CHECKING:
    from sqlalchemy.orm import Session

    from maestro.model_server.auth import Caller

SERVED_NAME = re.compile(r"^[A-Za-z0-9][A-Za-z0-9._-]{0,127}$")
_SEGMENT = re.compile(r"^[A-Za-z0-9][A-Za-z0-9._-]{0,254}$")
MAX_FILE_NAME = 1000
SERVED_NAME_RULE = "1 to 128 letters, digits, '.', '_' or '-', starting with a letter or digit"


@dataclass(frozen=True)
class Source:
    """What a served model is: its cache key, the version it answers as, and where it
    came from (the registry's model, version and project, or a file)."""

    kind: Literal["registry", "file"]
    key: str
    version: str
    suggested_name: str
    organization_id: str | None = None
    project_id: str | None = None
    details: dict[str, Any] = field(default_factory=dict)
    model_schema: Mapping[str, Any] | None = None


def check_served_name(name: Any, field_name: str = "model_name") -> str:
    if not isinstance(name, str) or not SERVED_NAME.match(name):
        raise ValidationFailed(
            f"A served model's name must be {SERVED_NAME_RULE}",
            details=[(field_name, SERVED_NAME_RULE)],
        )
    return name


def suggest_name(text: str) -> str:
    """A served name made from a registry model's name ("Fraud Detector" → "fraud-detector")."""
    slug = re.sub(r"[^a-z0-9._-]+", "-", text.lower()).strip("-._")[:128]
    return slug or "model"


# --- the models directory -------------------------------------------------------------------
def _refuse(message: str) -> ValidationFailed:
    return ValidationFailed(message, details=[("model_path", message)])


def resolve_model_file(models_dir: Path | None, name: Any) -> tuple[Path, str]:
    """The file ``name`` names inside ``models_dir`` and its normalised relative name."""
    if models_dir is None:
        raise Conflict(
            "This model server has no models directory; set MAESTRO_MODEL_SERVER_MODELS_DIR "
            "or load a model from the registry"
        )
    if not isinstance(name, str) or not name:
        raise _refuse("model_path must be the name of a file in the models directory")
    if "\x00" in name:
        raise _refuse("model_path may not contain NUL characters")
    if len(name) > MAX_FILE_NAME:
        raise _refuse(f"model_path may have at most {MAX_FILE_NAME} characters")
    if name.startswith(("/", "~")) or "\\" in name or re.match(r"^[A-Za-z]:", name):
        raise _refuse("model_path must be relative to the models directory, not an absolute path")
    parts = name.split("/")
    if any(part in ("", ".", "..") for part in parts):
        raise _refuse("model_path may not contain '..', '.' or empty segments")
    if not all(_SEGMENT.match(part) for part in parts):
        raise _refuse(
            "model_path segments may hold letters, digits, '.', '_' and '-' only, "
            "and may not start with a dot"
        )
    try:
        root = models_dir.resolve(strict=True)
    except OSError:
        raise Conflict("The models directory does not exist") from None
    candidate = (root / name).resolve(strict=False)
    if not candidate.is_relative_to(root) or candidate == root:
        raise _refuse("model_path leads outside the models directory")
    if not candidate.is_file():
        raise NotFound(f"No model file {name!r} in the models directory")
    return candidate, candidate.relative_to(root).as_posix()


def read_model_file(path: Path, limit: int) -> bytes:
    """The file's bytes, opened without following a symlink swapped in since it was
    resolved, and refused past ``limit`` before reading."""
    flags = os.O_RDONLY | getattr(os, "O_NOFOLLOW", 0) | getattr(os, "O_CLOEXEC", 0)
    try:
        descriptor = os.open(path, flags)
    except OSError:
        raise NotFound("The model file cannot be opened") from None
    with os.fdopen(descriptor, "rb") as handle:
        info = os.fstat(handle.fileno())
        if not stat.S_ISREG(info.st_mode):
            raise _refuse("model_path must name a regular file")
        if info.st_size > limit:
            raise PayloadTooLarge(
                f"The model file is {info.st_size:,} bytes; at most {limit:,} can be loaded"
            )
        data = handle.read(limit + 1)
    if len(data) > limit:
        raise PayloadTooLarge(f"The model file is larger than {limit:,} bytes")
    return data


def file_source(relative: str, data: bytes) -> Source:
    digest = hashlib.sha256(data).hexdigest()
    stem = relative.rsplit("/", 1)[-1].split(".", 1)[0]
    return Source(
        kind="file",
        key=f"file:{relative}:{digest[:16]}",
        version=digest[:12],
        suggested_name=suggest_name(stem),
        details={"file": relative, "sha256": digest, "size": len(data)},
    )


def untrusted_file(error: ModelLoadError) -> ModelLoadError:
    """A refusal reworded for the models directory, where trust is the operator's setting."""
    if error.reason == "not_trusted":
        return ModelLoadError(
            "not_trusted",
            "This file is a pickle or joblib file, which runs code when it is loaded; files of the "
            "models directory load only when the operator sets MAESTRO_MODEL_SERVER_TRUST_MODELS_DIR=true. "
            "Prefer skops or ONNX, which load without running code.",
        )
    if error.reason == "untrusted_types":
        message = error.message.split(" An organisation admin", 1)[0]
        return ModelLoadError(
            "untrusted_types",
            f"{message} Files of the models directory with such types load only when the operator sets "
            "MAESTRO_MODEL_SERVER_TRUST_MODELS_DIR=true.",
        )
    return error


# --- the registry -------------------------------------------------------------------------------
def _visible(session: Session, caller: Caller, model: Any, project: Any) -> bool:
    """Whether the platform principal may see the model at all (a model it may see but
    not deploy answers 403 later, one it may not see answers 404)."""
    assert caller.platform is not None
    try:
        authorize(session, caller.platform, "read", Target("deployments", model.organization_id, project))
    except PermissionDenied:
        return True
    except NotFound:
        return False
    return True


def registry_source(
    session: Session,
    caller: Caller,
    *,
    model_ref: str,
    project_id: str | None,
    version: str | None,
    alias: str | None,
) -> Source:
    """The version a load request names, once ``caller`` may deploy it: a model by id
    (``model_…``) or by name (with ``project_id`` when the name is not unique), and a
    version number, an alias, or neither for the most recent version."""
    from maestro.projects.models import Project
    from maestro.registry.models import ModelAlias, ModelVersion, RegisteredModel

    if model_ref.startswith("model_"):
        candidates = [m for m in [session.get(RegisteredModel, model_ref)] if m is not None]
    else:
        statement = select(RegisteredModel).where(RegisteredModel.name == model_ref)
        if project_id is not None:
            statement = statement.where(RegisteredModel.project_id == project_id)
        candidates = list(session.scalars(statement.order_by(RegisteredModel.id).limit(50)))
    projects = {
        p.id: p
        for p in session.scalars(select(Project).where(Project.id.in_({m.project_id for m in candidates})))
    }
    if caller.platform is not None:
        candidates = [m for m in candidates if _visible(session, caller, m, projects[m.project_id])]
    if not candidates:
        raise NotFound("No such model in the registry")
    if len(candidates) > 1:
        raise Conflict(
            f"{len(candidates)} registry models are named {model_ref!r}; give project_id or the model's id"
        )
    model = candidates[0]
    project = projects[model.project_id]
    if caller.platform is not None:
        authorize(
            session,
            caller.platform,
            "write",
            Target("deployments", model.organization_id, project),
            missing="No such model in the registry",
        )
    row: ModelVersion | None
    if alias is not None:
        pointer = session.scalar(
            select(ModelAlias).where(ModelAlias.model_id == model.id, ModelAlias.alias == alias)
        )
        row = session.get(ModelVersion, pointer.version_id) if pointer else None
        if row is None:
            raise NotFound(f"The model has no alias {alias!r}")
    elif version is not None:
        row = session.scalar(
            select(ModelVersion).where(ModelVersion.model_id == model.id, ModelVersion.version == version)
        )
        if row is None:
            raise NotFound(f"The model has no version {version!r}")
    else:
        row = session.scalar(
            select(ModelVersion)
            .where(ModelVersion.model_id == model.id, ModelVersion.file_key.is_not(None))
            .order_by(ModelVersion.created_at.desc(), ModelVersion.id.desc())
            .limit(1)
        )
        if row is None:
            raise NotFound("The model has no version with a model file")
    return Source(
        kind="registry",
        key=row.id,
        version=row.version,
        suggested_name=suggest_name(model.name),
        organization_id=model.organization_id,
        project_id=model.project_id,
        details={
            "model_id": model.id,
            "model": model.name,
            "version_id": row.id,
            "alias": alias,
            "stage": row.stage,
            "format": row.format,
            "trusted": row.trusted,
        },
        model_schema=row.model_schema,
    )


def version_snapshot(session: Session, version_id: str) -> Any:
    """The version row, detached, for ``load_version`` to read outside the session."""
    from maestro.registry.models import ModelVersion

    row = session.get(ModelVersion, version_id)
    if row is None:
        raise ModelLoadError("file_missing", "The registry version no longer exists")
    session.expunge(row)
    return row


# --- preload entries ----------------------------------------------------------------------------
@dataclass(frozen=True)
class PreloadEntry:
    text: str
    served_name: str | None
    model_path: str | None = None
    model_ref: str | None = None
    version: str | None = None
    alias: str | None = None


def parse_preload(text: str) -> PreloadEntry:
    """``[serve_as=]file:NAME`` or ``[serve_as=]MODEL[:VERSION|@ALIAS]``; MODEL is a
    registry model's id or name."""
    entry = text.strip()
    served: str | None = None
    if "=" in entry:
        served, entry = (part.strip() for part in entry.split("=", 1))
        check_served_name(served, "MAESTRO_MODEL_SERVER_PRELOAD")
    if not entry:
        raise ValueError(f"empty preload entry in {text!r}")
    if entry.startswith("file:"):
        return PreloadEntry(text, served, model_path=entry[len("file:") :])
    if "@" in entry:
        model, alias = entry.rsplit("@", 1)
        return PreloadEntry(text, served, model_ref=model, alias=alias)
    if ":" in entry:
        model, version = entry.rsplit(":", 1)
        return PreloadEntry(text, served, model_ref=model, version=version)
    return PreloadEntry(text, served, model_ref=entry)
