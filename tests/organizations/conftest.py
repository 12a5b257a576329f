"""Helpers shared by the organisation tests: reading the audit log and the database."""

from __future__ import annotations

from collections.abc import Callable
from typing import Any

import pytest
from fastapi import FastAPI
from sqlalchemy import select

from maestro.identity.models import AuditLog


@pytest.fixture
def audit_rows(app: FastAPI) -> Callable[..., list[AuditLog]]:
    """Audit rows matching the given column values, oldest first."""

    def rows(**filters: Any) -> list[AuditLog]:
        statement = select(AuditLog).order_by(AuditLog.created_at, AuditLog.id)
        for column, value in filters.items():
            statement = statement.where(getattr(AuditLog, column) == value)
        with app.state.database.session(write=False) as session:
            return list(session.scalars(statement))

    return rows
