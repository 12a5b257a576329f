"""Dependencies shared by every router, declared once as ``Annotated`` aliases so a
route's signature says what it uses."""

from __future__ import annotations

import logging
from collections.abc import Iterator
from typing import Annotated

from anyio.to_thread import run_sync
from fastapi import Depends, Request
from fastapi.dependencies.models import Dependant
from sqlalchemy.orm import Session

from maestro.api.errors import AuthenticationRequired
from maestro.api.ratelimit import RateLimiter
from maestro.config import Settings
from maestro.db import Database
from maestro.identity import audit
from maestro.identity.authn import authenticate, cached_principal
from maestro.identity.rbac import Principal
from maestro.jobs.queue import JobQueue
from maestro.storage import ArtifactStore

logger = logging.getLogger("maestro.api")

_READ_ONLY_METHODS = frozenset({"GET", "HEAD", "OPTIONS"})

# Dependencies that only read app state are `async def`: FastAPI runs plain `def`
# dependencies in a worker thread, and each hop costs more than the lookup itself.


async def get_settings(request: Request) -> Settings:
    return request.app.state.settings


async def get_database(request: Request) -> Database:
    return request.app.state.database


def get_session(request: Request) -> Iterator[Session]:
    """One request, one transaction: commit when the route returns, roll back when it
    raises. Services flush but never commit, so a change, its audit row and its
    outbox rows land together or not at all. Denied authorisations are written
    after the rollback, so the attempt is on record even though nothing changed."""
    database: Database = request.app.state.database
    changes_state = request.method not in _READ_ONLY_METHODS
    session = database.new_session(write=changes_state)
    try:
        yield session
        if changes_state:
            route = request.scope.get("route")
            audit.record_success(session, request, getattr(route, "status_code", None) or 200)
        session.commit()
    except BaseException:
        session.rollback()
        try:
            if audit.record_denials(session, request):
                session.commit()
        except Exception:
            logger.exception("could not record denied authorisation")
            session.rollback()
        raise
    finally:
        audit.discard(session)
        session.close()


async def get_rate_limiter(request: Request) -> RateLimiter:
    return request.app.state.rate_limiter


def get_principal(
    request: Request, session: Annotated[Session, Depends(get_session, scope="function")]
) -> Principal:
    """The authenticated caller, rate limited by their organisation's plan. The
    limit headers are attached to the response by the request middleware, so error
    responses carry them too."""
    cache = getattr(request.app.state, "credential_cache", None)
    principal = authenticate(request, session, request.app.state.settings, cache)
    if principal is None:
        raise AuthenticationRequired()
    return _admitted(request, principal)


def _admitted(request: Request, principal: Principal) -> Principal:
    request.state.principal = principal
    request.state.rate_limit_headers = {}
    request.state.rate_limit_headers = request.app.state.rate_limiter.for_plan(principal.plan, principal.id)
    return principal


def _authenticate_reading(request: Request) -> Principal | None:
    database: Database = request.app.state.database
    session = database.new_session(write=False)
    try:
        principal = authenticate(
            request, session, request.app.state.settings, getattr(request.app.state, "credential_cache", None)
        )
        session.commit()  # runs what waits for the commit (an API key's last use)
        return principal
    finally:
        session.close()


async def get_reading_principal(request: Request) -> Principal:
    """The authenticated caller of a route that changes nothing even though it is a POST
    (inference): no write transaction and no audit row, and the database is asked only
    when the credential cache does not know the credential (then in a worker thread)."""
    principal = cached_principal(request, getattr(request.app.state, "credential_cache", None))
    if principal is None:
        principal = await run_sync(_authenticate_reading, request)
    if principal is None:
        raise AuthenticationRequired()
    return _admitted(request, principal)


def route_requires_principal(dependant: Dependant) -> bool:
    """Whether a route's dependencies include authentication (at any depth)."""
    return any(
        dep.call in (get_principal, get_reading_principal) or route_requires_principal(dep)
        for dep in dependant.dependencies
    )


async def get_store(request: Request) -> ArtifactStore:
    return request.app.state.store


async def get_queue(request: Request) -> JobQueue:
    return request.app.state.queue


SettingsDep = Annotated[Settings, Depends(get_settings)]
DatabaseDep = Annotated[Database, Depends(get_database)]
# scope="function": the commit happens before the response is sent, so a client that
# reads right after a write sees it, and a failed commit is reported as an error.
SessionDep = Annotated[Session, Depends(get_session, scope="function")]
StoreDep = Annotated[ArtifactStore, Depends(get_store)]
QueueDep = Annotated[JobQueue, Depends(get_queue)]
RateLimiterDep = Annotated[RateLimiter, Depends(get_rate_limiter)]
CurrentPrincipal = Annotated[Principal, Depends(get_principal)]
ReadingPrincipal = Annotated[Principal, Depends(get_reading_principal)]
