"""Who may call the model server, and what they may do there.

Two kinds of caller:

- **operators**, holding a key from ``MAESTRO_MODEL_SERVER_API_KEYS``: everything on
  this server (load from the registry or the models directory, unload, predict). The
  keys are kept only as SHA-256 digests, so a lookup reveals nothing about them. An
  operator request acts on the server's own names, or on one organisation's names when
  it sends ``X-Organization-ID``.
- **platform principals** (``MAESTRO_MODEL_SERVER_PLATFORM_AUTH``), a Maestro API key or
  access token checked against the platform database exactly as the platform checks it
  (``identity.authn``). They predict with the models of projects whose inference they
  may read; they load and unload registry models of their organisation where they may
  write deployments; files of the models directory are the operator's, so they may
  predict with them but not load or unload them.

Nothing on the prediction path touches the database: a checked credential, and each
decision about it, is remembered for ``MAESTRO_MODEL_SERVER_AUTH_CACHE_SECONDS`` (1 s by
default) and never past the credential's own expiry, so a revoked key or an ended
session stops working within that time, and an expired one at its expiry.
"""

from __future__ import annotations

import hashlib
import logging
import os
from collections.abc import Callable
from dataclasses import dataclass
from typing import TYPE_CHECKING, Literal

from sqlalchemy.exc import SQLAlchemyError
from starlette.requests import Request

from maestro.errors import AuthenticationRequired, ServiceUnavailable
from maestro.identity.authn import ORGANIZATION_HEADER, CredentialCache, authenticate, credentials
from maestro.identity.credential_cache import ShortMemory
from maestro.identity.rbac import Action, Principal, Target, can

if TYPE_CHECKING:
    from maestro.config import Settings
    from maestro.db import Database

PURPOSE = "to check this credential"  # what the platform database was asked for
logger = logging.getLogger("maestro.model_server")


def platform_unavailable(database: Database, purpose: str) -> str:
    """What a caller is told when the platform database fails. The log names the database
    (its URL, password hidden) for the operator; the caller, who may not even be
    authenticated yet, learns no path or host."""
    if database.file is not None and not os.path.exists(database.file):
        logger.warning(
            "the platform database %s does not exist (the model server opens it, never creates it); "
            "set MAESTRO_DATABASE_URL or MAESTRO_DATA_DIR to the platform's",
            database.url,
        )
        return (
            "The platform database does not exist (the model server opens it, never creates it); "
            "the model server's log names the database it looked for"
        )
    logger.warning("the platform database %s cannot be reached %s", database.url, purpose)
    return f"The platform database cannot be reached {purpose}; try again later"


def _digest(value: str) -> str:
    return hashlib.sha256(value.encode("utf-8", "surrogatepass")).hexdigest()


def _credentials(request: Request) -> tuple[str, str] | None:
    """``identity.authn.credentials``, with its query-string check skipped when there
    is no query string (the common case on the prediction path)."""
    if request.scope.get("query_string"):
        return credentials(request)
    headers = request.headers
    api_key = headers.get("x-api-key")
    if api_key:
        return "api_key", api_key.strip()
    if headers.get("authorization") is None:
        return None
    return credentials(request)


@dataclass(frozen=True)
class Caller:
    """An authenticated caller of the model server."""

    kind: Literal["operator", "platform"]
    id: str  # what rate limits and job ownership are keyed by
    platform: Principal | None = None
    acting_for: str | None = None  # an operator's X-Organization-ID

    @property
    def is_operator(self) -> bool:
        return self.kind == "operator"

    @property
    def organization_id(self) -> str | None:
        """The organisation whose served names the caller addresses: a platform
        principal's own; for an operator, the one it named (None: the operator's names)."""
        return self.platform.organization_id if self.platform else self.acting_for


class Authenticator:
    """Turns request headers into a ``Caller`` and answers what a caller may do with
    a served model. ``database`` is called only when the platform must be asked."""

    def __init__(self, settings: Settings, database: Callable[[], Database]) -> None:
        self.settings = settings
        self._database = database
        self._operators = {
            _digest(key): f"operator_{_digest(key)[:12]}" for key in settings.model_server_api_keys
        }
        # Capped at each credential's own expiry, as on the platform.
        self.callers = CredentialCache(settings.model_server_auth_cache_seconds)
        self._decisions = ShortMemory(settings.model_server_auth_cache_seconds)

    @property
    def modes(self) -> list[str]:
        modes = ["operator keys"] if self._operators else []
        if self.settings.model_server_platform_auth:
            modes.append("platform credentials")
        return modes

    def cached(self, request: Request) -> Caller | None:
        """The caller when the credential is an operator key or was checked recently;
        None when the platform must be asked (``check_platform``). Raises 401 for a
        request without credentials."""
        found = _credentials(request)
        if found is None:
            raise AuthenticationRequired(
                "Send a Maestro API key or access token (Authorization: Bearer … or X-API-Key)"
            )
        value = found[1]
        operator = self._operators.get(_digest(value))
        if operator is not None:
            return Caller("operator", operator, acting_for=request.headers.get(ORGANIZATION_HEADER) or None)
        if not self.settings.model_server_platform_auth:
            raise AuthenticationRequired("Unknown key")
        principal = self.callers.peek(self.callers.key(value, request.headers.get(ORGANIZATION_HEADER)))
        return None if principal is None else Caller("platform", principal.id, principal)

    def check_platform(self, request: Request) -> Caller:
        """Ask the platform database (blocking: run it in a worker thread); the
        principal is remembered until the TTL or the credential's expiry."""
        try:
            with self._database().session(write=False) as session:
                principal = authenticate(request, session, self.settings, self.callers)
        except SQLAlchemyError as exc:
            raise ServiceUnavailable(platform_unavailable(self._database(), PURPOSE)) from exc
        if principal is None:  # pragma: no cover - credentials() said there were some
            raise AuthenticationRequired()
        return Caller("platform", principal.id, principal)

    def may(
        self,
        caller: Caller,
        action: Action,
        *,
        kind: str,
        organization_id: str | None,
        project_id: str | None,
    ) -> bool:
        """Whether ``caller`` may ``action`` ``kind`` ("inference" or "deployments") in a
        registry model's project; ``organization_id`` None means a models-directory file."""
        if caller.is_operator:
            return True
        if organization_id is None or project_id is None:
            return action == "read"
        principal = caller.platform
        assert principal is not None
        if principal.organization_id != organization_id and principal.kind == "api_key":
            return False
        key = (caller.id, principal.organization_id, action, kind, project_id)
        decision = self._decisions.get(key)
        if decision is None:
            decision = self._decide(principal, action, kind, organization_id, project_id)
            self._decisions.put(key, decision)
        return decision

    def decided(
        self,
        caller: Caller,
        action: Action,
        *,
        kind: str,
        organization_id: str | None,
        project_id: str | None,
    ) -> bool:
        """Whether ``may`` would answer without asking the database."""
        if caller.is_operator or organization_id is None or project_id is None:
            return True
        principal = caller.platform
        assert principal is not None
        if principal.organization_id != organization_id and principal.kind == "api_key":
            return True
        return (
            self._decisions.peek((caller.id, principal.organization_id, action, kind, project_id)) is not None
        )

    def _decide(
        self, principal: Principal, action: Action, kind: str, organization_id: str, project_id: str
    ) -> bool:
        from maestro.projects.models import Project

        try:
            with self._database().session(write=False) as session:
                project = session.get(Project, project_id)
                if project is None:
                    return False
                return can(session, principal, action, Target(kind, organization_id, project))
        except SQLAlchemyError as exc:
            raise ServiceUnavailable(platform_unavailable(self._database(), PURPOSE)) from exc

    def forget(self) -> None:
        self.callers.clear()
        self._decisions.clear()
