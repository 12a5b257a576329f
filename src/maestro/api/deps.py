"""Dependencies shared by every router, declared once as ``Annotated`` aliases so a
route's signature says what it uses."""

from __future__ import annotations

from collections.abc import Iterator
from typing import Annotated

from fastapi import Depends, Request
from sqlalchemy.orm import Session

from maestro.config import Settings
from maestro.db import Database
from maestro.jobs.queue import JobQueue
from maestro.storage import ArtifactStore

_READ_ONLY_METHODS = frozenset({"GET", "HEAD", "OPTIONS"})


def get_settings(request: Request) -> Settings:
    return request.app.state.settings


def get_database(request: Request) -> Database:
    return request.app.state.database


def get_session(request: Request) -> Iterator[Session]:
    """One request, one transaction: commit when the route returns, roll back when it
    raises. Services flush but never commit, so a change and its audit or outbox rows
    land together or not at all."""
    database: Database = request.app.state.database
    with database.session(write=request.method not in _READ_ONLY_METHODS) as session:
        yield session


def get_store(request: Request) -> ArtifactStore:
    return request.app.state.store


def get_queue(request: Request) -> JobQueue:
    return request.app.state.queue


SettingsDep = Annotated[Settings, Depends(get_settings)]
DatabaseDep = Annotated[Database, Depends(get_database)]
# scope="function": the commit happens before the response is sent, so a client that
# reads right after a write sees it, and a failed commit is reported as an error.
SessionDep = Annotated[Session, Depends(get_session, scope="function")]
StoreDep = Annotated[ArtifactStore, Depends(get_store)]
QueueDep = Annotated[JobQueue, Depends(get_queue)]
