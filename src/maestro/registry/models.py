"""Tables of the model registry: registered models, their versions, tags on both,
the stage history of versions and aliases that name a version of a model."""

from __future__ import annotations

from datetime import datetime
from enum import StrEnum
from typing import Any

from sqlalchemy import (
    BigInteger,
    ForeignKey,
    Index,
    Integer,
    String,
    Text,
    UniqueConstraint,
    column,
    func,
    select,
    table,
)
from sqlalchemy.orm import Mapped, mapped_column

from maestro.db import Base, IdMixin, TimestampMixin, utcnow


class ModelType(StrEnum):
    classification = "classification"
    regression = "regression"
    llm = "llm"
    clustering = "clustering"
    other = "other"


class Stage(StrEnum):
    development = "development"
    staging = "staging"
    production = "production"
    archived = "archived"


class RegisteredModel(IdMixin, TimestampMixin, Base):
    """A named model in a project; its name is unique within the project."""

    __tablename__ = "registered_models"
    id_prefix = "model"

    organization_id: Mapped[str] = mapped_column(
        ForeignKey("organizations.id", ondelete="CASCADE"), index=True
    )
    project_id: Mapped[str] = mapped_column(ForeignKey("projects.id", ondelete="CASCADE"))
    name: Mapped[str] = mapped_column(String(200))
    description: Mapped[str | None] = mapped_column(String(2000))
    model_type: Mapped[str] = mapped_column(String(20))
    framework: Mapped[str | None] = mapped_column(String(50))
    task_type: Mapped[str | None] = mapped_column(String(50))
    created_by_id: Mapped[str | None] = mapped_column(ForeignKey("users.id", ondelete="SET NULL"))
    # The API key that created it, when no person did: its name and prefix show who acted.
    created_by_key_id: Mapped[str | None] = mapped_column(ForeignKey("api_keys.id", ondelete="SET NULL"))

    __table_args__ = (
        UniqueConstraint("project_id", "name"),
        Index("ix_registered_models_project_id_created_at", "project_id", "created_at"),
        Index("ix_registered_models_project_id_updated_at", "project_id", "updated_at"),
    )


class ModelTag(IdMixin, Base):
    """A key/value tag on a model; a tag without a value is a plain label."""

    __tablename__ = "model_tags"
    id_prefix = "mtag"

    model_id: Mapped[str] = mapped_column(ForeignKey("registered_models.id", ondelete="CASCADE"))
    key: Mapped[str] = mapped_column(String(100))
    value: Mapped[str] = mapped_column(String(500), default="")

    __table_args__ = (UniqueConstraint("model_id", "key"),)


def _next_number(context: Any) -> int:
    """The next number for a version of the model being inserted."""
    model_id = context.get_current_parameters()["model_id"]
    highest = context.connection.scalar(
        select(func.max(column("number")))
        .select_from(table("model_versions"))
        .where(column("model_id") == model_id)
    )
    return (highest or 0) + 1


class ModelVersion(IdMixin, Base):
    """One version of a model: its file, metrics, schema and lifecycle stage."""

    __tablename__ = "model_versions"
    id_prefix = "version"

    model_id: Mapped[str] = mapped_column(ForeignKey("registered_models.id", ondelete="CASCADE"))
    organization_id: Mapped[str] = mapped_column(
        ForeignKey("organizations.id", ondelete="CASCADE"), index=True
    )
    version: Mapped[str] = mapped_column(String(50))  # a semantic version, such as 1.2.0
    stage: Mapped[str] = mapped_column(String(20), default=Stage.development)
    description: Mapped[str | None] = mapped_column(String(2000))
    file_key: Mapped[str | None] = mapped_column(String(500))  # generated key in the artifact store
    file_size: Mapped[int | None] = mapped_column(BigInteger)
    sha256: Mapped[str | None] = mapped_column(String(64))
    format: Mapped[str | None] = mapped_column(String(30))  # skops, onnx, joblib, pickle, …
    trusted: Mapped[bool] = mapped_column(default=False)  # set by an organisation admin only
    # The file's load check (``serving.isolation.LoadCheck``): loaded in an isolated process at
    # upload, with the memory it took; None until a loadable file has been checked.
    load_check: Mapped[dict[str, Any] | None]
    performance_metrics: Mapped[dict[str, Any]] = mapped_column(default=dict)
    training_metrics: Mapped[dict[str, Any]] = mapped_column(default=dict)
    model_schema: Mapped[dict[str, Any] | None]
    requirements: Mapped[str | None] = mapped_column(Text)
    run_id: Mapped[str | None] = mapped_column(String(40))  # the training run, once tracked
    # The version's number among the model's versions (1, 2, 3…, in creation order): what the
    # MLflow API calls the version. Assigned by the registry, or by ``_next_number`` for rows
    # inserted one at a time elsewhere.
    number: Mapped[int] = mapped_column(Integer, default=_next_number)
    source: Mapped[str | None] = mapped_column(String(1000))  # where MLflow registered it from
    logged_model_id: Mapped[str | None] = mapped_column(String(40))  # MLflow's logged model, if any
    # Narrative sections of the model card that people write (intended use, limitations…).
    card_sections: Mapped[dict[str, Any] | None]
    created_by_id: Mapped[str | None] = mapped_column(ForeignKey("users.id", ondelete="SET NULL"))
    created_by_key_id: Mapped[str | None] = mapped_column(ForeignKey("api_keys.id", ondelete="SET NULL"))
    created_at: Mapped[datetime] = mapped_column(default=utcnow)

    __table_args__ = (
        UniqueConstraint("model_id", "version"),
        UniqueConstraint("model_id", "number"),
        Index("ix_model_versions_model_id_created_at", "model_id", "created_at"),
    )


class VersionTag(IdMixin, Base):
    __tablename__ = "version_tags"
    id_prefix = "vtag"

    version_id: Mapped[str] = mapped_column(ForeignKey("model_versions.id", ondelete="CASCADE"))
    key: Mapped[str] = mapped_column(String(100))
    value: Mapped[str] = mapped_column(String(500), default="")

    __table_args__ = (UniqueConstraint("version_id", "key"),)


class StageTransition(IdMixin, Base):
    """One change of a version's stage, for the stage history and the model card."""

    __tablename__ = "stage_transitions"
    id_prefix = "stx"

    version_id: Mapped[str] = mapped_column(ForeignKey("model_versions.id", ondelete="CASCADE"))
    from_stage: Mapped[str | None] = mapped_column(String(20))
    to_stage: Mapped[str] = mapped_column(String(20))
    description: Mapped[str | None] = mapped_column(String(2000))
    changed_by_id: Mapped[str | None] = mapped_column(ForeignKey("users.id", ondelete="SET NULL"))
    changed_by_key_id: Mapped[str | None] = mapped_column(ForeignKey("api_keys.id", ondelete="SET NULL"))
    created_at: Mapped[datetime] = mapped_column(default=utcnow)

    __table_args__ = (Index("ix_stage_transitions_version_id_created_at", "version_id", "created_at"),)


class ModelAlias(IdMixin, TimestampMixin, Base):
    """A name such as `champion` pointing at one version of a model."""

    __tablename__ = "model_aliases"
    id_prefix = "alias"

    model_id: Mapped[str] = mapped_column(ForeignKey("registered_models.id", ondelete="CASCADE"))
    alias: Mapped[str] = mapped_column(String(50))
    version_id: Mapped[str] = mapped_column(ForeignKey("model_versions.id", ondelete="CASCADE"), index=True)

    __table_args__ = (UniqueConstraint("model_id", "alias"),)
