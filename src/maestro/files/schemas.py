"""Shapes of uploaded files as the API shows them."""

from __future__ import annotations

from datetime import datetime

from pydantic import BaseModel, Field

from maestro.files.models import FileKind
from maestro.identity.schemas import UserRef


class FileRead(BaseModel):
    id: str = Field(examples=["file_01jd8x6q2v0000000000000000"])
    project_id: str
    kind: FileKind
    filename: str | None = Field(description="The name the file was uploaded with; metadata only.")
    description: str | None = None
    format: str = Field(
        description="Recognised from the file's bytes: csv, json, jsonl, parquet or xlsx for datasets; "
        "skops, onnx, joblib, pickle, xgboost-json, lightgbm-txt or other for model files."
    )
    content_type: str = Field(description="The media type downloads are served with.")
    size_bytes: int
    sha256: str
    download_url: str
    created_by: UserRef | None = Field(None, description="Null when uploaded with an API key.")
    created_at: datetime
