"""The files table: an uploaded model file or dataset, owned by a project."""

from __future__ import annotations

from datetime import datetime
from enum import StrEnum

from sqlalchemy import BigInteger, ForeignKey, Index, String
from sqlalchemy.orm import Mapped, mapped_column

from maestro.db import Base, IdMixin, utcnow


class FileKind(StrEnum):
    model = "model"
    dataset = "dataset"


class StoredFile(IdMixin, Base):
    """A file in the artifact store under a generated key. ``filename`` is what the
    client called it: metadata for display and downloads, never part of a path."""

    __tablename__ = "files"
    id_prefix = "file"

    organization_id: Mapped[str] = mapped_column(
        ForeignKey("organizations.id", ondelete="CASCADE"), index=True
    )
    project_id: Mapped[str] = mapped_column(ForeignKey("projects.id", ondelete="CASCADE"))
    kind: Mapped[str] = mapped_column(String(20))
    filename: Mapped[str | None] = mapped_column(String(255))
    description: Mapped[str | None] = mapped_column(String(2000))
    format: Mapped[str] = mapped_column(String(30))  # recognised from the bytes
    content_type: Mapped[str] = mapped_column(String(100))  # what downloads are served as
    storage_key: Mapped[str] = mapped_column(String(500))
    size: Mapped[int] = mapped_column(BigInteger)
    sha256: Mapped[str] = mapped_column(String(64))
    created_by_id: Mapped[str | None] = mapped_column(ForeignKey("users.id", ondelete="SET NULL"))
    created_at: Mapped[datetime] = mapped_column(default=utcnow)

    __table_args__ = (Index("ix_files_project_id_kind_created_at", "project_id", "kind", "created_at"),)
