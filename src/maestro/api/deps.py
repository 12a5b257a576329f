"""Dependencies shared by every router, declared once as ``Annotated`` aliases so a
route's signature says what it uses."""

from __future__ import annotations

import logging
from collections.abc import Iterator
from contextlib import contextmanager
from typing import Annotated

from anyio.to_thread import run_sync
from fastapi import Depends, Request
from fastapi.dependencies.models import Dependant
from sqlalchemy.orm import Session

from maestro.api.ratelimit import RateLimiter
from maestro.config import Settings
from maestro.db import Database
from maestro.errors import AuthenticationRequired, MaestroError, PermissionDenied
from maestro.identity import audit
from maestro.identity.authn import authenticate, cached_principal
from maestro.identity.rbac import Principal, api_key_lacks, route_scope
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


@contextmanager
def request_transaction(request: Request, *, write: bool) -> Iterator[Session]:
    """The one place a request's transaction is opened and closed: a session for the
    request (a writer or a reader), committed when the work returns, rolled back when
    it raises. Committing also runs what waits for the commit (jobs to enqueue, files
    to delete, an API key's last use: ``db.run_after_commit``); rolling back runs what
    waits for a rollback instead. A change is recorded in the audit log in the same
    transaction; a refusal's denied authorisations are written after the rollback, so
    the attempt is on record even though nothing changed. Used by ``get_session`` for
    Maestro's routes and by the MLflow facade, which runs its work in a worker thread
    of its own."""
    database: Database = request.app.state.database
    session = database.request_session(write=write)
    try:
        yield session
        if write:
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


def get_session(request: Request) -> Iterator[Session]:
    """One request, one transaction: commit when the route returns, roll back when it
    raises. Services flush but never commit, so a change, its audit row and its
    outbox rows land together or not at all. Denied authorisations are written
    after the rollback, so the attempt is on record even though nothing changed.

    A state-changing request gets a writer, whose transaction (and on SQLite the
    database-wide write lock) begins at the route's first query, never earlier: the
    caller is authenticated on a session of its own, and a route that streams a body
    commits before reading it."""
    with request_transaction(request, write=request.method not in _READ_ONLY_METHODS) as session:
        yield session


def get_read_session(request: Request) -> Iterator[Session]:
    """For a POST that only reads (a search, a validation, a rendering): a reader, so
    however long it takes it holds no write lock, and no audit row, since nothing
    changes. Denied authorisations are still recorded, as for any read."""
    with request_transaction(request, write=False) as session:
        yield session


async def get_rate_limiter(request: Request) -> RateLimiter:
    return request.app.state.rate_limiter


def _authenticate_reading(request: Request) -> Principal | None:
    database: Database = request.app.state.database
    session = database.request_session(write=False)
    try:
        principal = authenticate(
            request, session, request.app.state.settings, getattr(request.app.state, "credential_cache", None)
        )
        session.commit()  # runs what waits for the commit (an API key's last use)
        return principal
    finally:
        session.close()


async def get_principal(request: Request) -> Principal:
    """The authenticated caller, rate limited by their organisation's plan. The
    credential is checked on a short reader session of its own (the database is asked
    only when the credential cache does not know it, then in a worker thread), never
    inside the request's write transaction: authenticating takes no lock, whatever the
    request does next. The limit headers are attached to the response by the request
    middleware, so error responses carry them too."""
    principal = cached_principal(request, getattr(request.app.state, "credential_cache", None))
    if principal is None:
        principal = await run_sync(_authenticate_reading, request)
    if principal is None:
        raise AuthenticationRequired()
    return _admitted(request, principal)


def _admitted(request: Request, principal: Principal) -> Principal:
    request.state.principal = principal
    request.state.rate_limit_headers = {}
    request.state.rate_limit_headers = request.app.state.rate_limiter.for_plan(
        principal.plan, principal.organization_id, principal.id
    )
    return principal


# The caller of a route that changes nothing even though it is a POST (inference, the
# MLflow facade's own transactions): the same dependency, named for what it is used for.
get_reading_principal = get_principal


def route_requires_principal(dependant: Dependant) -> bool:
    """Whether a route's dependencies include authentication (at any depth)."""
    return any(dep.call is get_principal or route_requires_principal(dep) for dep in dependant.dependencies)


def reads_only(dependant: Dependant) -> bool:
    """Whether the route only reads (it takes a read-only session), whatever its method."""
    return any(dep.call is get_read_session or reads_only(dep) for dep in dependant.dependencies)


async def refusal_before_validation(request: Request) -> MaestroError | None:
    """Why a request whose input is invalid must be refused anyway, before it is told
    what is wrong with the input: no valid credentials (401), or an API key without
    the permission the route needs (403, derived from the route's path and method by
    ``rbac.route_scope``). None when the input's errors are the answer. Authorisation
    thus never depends on a body being well formed."""
    context = request.scope.get("effective_route_context") or request.scope.get("route")
    dependant = getattr(context, "dependant", None)
    path = getattr(context, "path_format", None)
    if dependant is None or path is None or not route_requires_principal(dependant):
        return None
    principal: Principal | None = getattr(request.state, "principal", None)
    if principal is None:
        try:
            principal = await get_principal(request)
        except MaestroError as refused:
            return refused
    scope = route_scope(path, request.method, reads_only=reads_only(dependant))
    reason = api_key_lacks(principal, scope) if scope is not None else None
    return PermissionDenied(reason) if reason else None


async def get_store(request: Request) -> ArtifactStore:
    return request.app.state.store


async def get_queue(request: Request) -> JobQueue:
    return request.app.state.queue


SettingsDep = Annotated[Settings, Depends(get_settings)]
DatabaseDep = Annotated[Database, Depends(get_database)]
# scope="function": the commit happens before the response is sent, so a client that
# reads right after a write sees it, and a failed commit is reported as an error.
SessionDep = Annotated[Session, Depends(get_session, scope="function")]
ReadSessionDep = Annotated[Session, Depends(get_read_session, scope="function")]
StoreDep = Annotated[ArtifactStore, Depends(get_store)]
QueueDep = Annotated[JobQueue, Depends(get_queue)]
RateLimiterDep = Annotated[RateLimiter, Depends(get_rate_limiter)]
CurrentPrincipal = Annotated[Principal, Depends(get_principal)]
ReadingPrincipal = Annotated[Principal, Depends(get_reading_principal)]
