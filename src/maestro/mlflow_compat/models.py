"""Tables of what only the MLflow API has: logged models (MLflow 3's model entity, which
``log_model`` creates before it uploads the model's files) and their files.

A logged model belongs to an experiment and usually to the run that logged it; its files
(``MLmodel``, ``model.skops``, ``requirements.txt``…) live in the artifact store under
generated keys, addressed by the path the client gave them. Registering a logged model
copies its main model file into the registry, so the registry's version owns its file
and never depends on these rows.
"""

from __future__ import annotations

import secrets
from datetime import datetime
from typing import Any

from sqlalchemy import BigInteger, ForeignKey, Index, String
from sqlalchemy.orm import Mapped, mapped_column

from maestro.db import Base, TimestampMixin, utcnow


def new_logged_model_id() -> str:
    """MLflow's own shape of a logged model id (``m-`` and 32 hex digits), which clients
    and ``models:/<model_id>`` URIs expect."""
    return f"m-{secrets.token_hex(16)}"


class LoggedModel(TimestampMixin, Base):
    __tablename__ = "mlflow_logged_models"

    id: Mapped[str] = mapped_column(String(40), primary_key=True, default=new_logged_model_id)
    organization_id: Mapped[str] = mapped_column(
        ForeignKey("organizations.id", ondelete="CASCADE"), index=True
    )
    project_id: Mapped[str] = mapped_column(ForeignKey("projects.id", ondelete="CASCADE"))
    experiment_id: Mapped[str] = mapped_column(ForeignKey("experiments.id", ondelete="CASCADE"))
    source_run_id: Mapped[str | None] = mapped_column(ForeignKey("runs.id", ondelete="SET NULL"), index=True)
    name: Mapped[str] = mapped_column(String(250))
    model_type: Mapped[str | None] = mapped_column(String(100))
    status: Mapped[str] = mapped_column(String(40), default="LOGGED_MODEL_PENDING")
    status_message: Mapped[str | None] = mapped_column(String(2000))
    params: Mapped[dict[str, Any]] = mapped_column(default=dict)
    tags: Mapped[dict[str, Any]] = mapped_column(default=dict)
    created_by_id: Mapped[str | None] = mapped_column(ForeignKey("users.id", ondelete="SET NULL"))

    __table_args__ = (
        Index("ix_mlflow_logged_models_experiment_id_created_at", "experiment_id", "created_at"),
    )


class LoggedModelFile(Base):
    """One file of a logged model, at the path the client named (``MLmodel``,
    ``model.skops``…); the file itself lives under ``storage_key``."""

    __tablename__ = "mlflow_logged_model_files"

    model_id: Mapped[str] = mapped_column(
        ForeignKey("mlflow_logged_models.id", ondelete="CASCADE"), primary_key=True
    )
    path: Mapped[str] = mapped_column(String(1000), primary_key=True)
    storage_key: Mapped[str] = mapped_column(String(500))
    size: Mapped[int] = mapped_column(BigInteger)
    sha256: Mapped[str] = mapped_column(String(64))
    created_at: Mapped[datetime] = mapped_column(default=utcnow)
