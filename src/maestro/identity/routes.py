from __future__ import annotations

from fastapi import APIRouter, Request

from maestro.api.deps import CurrentPrincipal, DatabaseDep, RateLimiterDep, SessionDep, SettingsDep
from maestro.api.envelope import Envelope
from maestro.api.errors import error_responses
from maestro.errors import AuthenticationRequired
from maestro.identity import audit, service
from maestro.identity.schemas import (
    LoginRequest,
    MeUpdate,
    RefreshRequest,
    RegisterRequest,
    TokenPair,
    UserRead,
)

router = APIRouter(prefix="/api/v1/auth", tags=["auth"])

INVALID_REFRESH_TOKEN = "Invalid or expired refresh token"  # noqa: S105 - a message, not a secret


def _client_ip(request: Request) -> str:
    return request.client.host if request.client else "unknown"


@router.post(
    "/register",
    status_code=201,
    response_model=Envelope[TokenPair],
    responses=error_responses(403, 409, 422, 429),
)
def register(
    body: RegisterRequest,
    request: Request,
    session: SessionDep,
    settings: SettingsDep,
    limiter: RateLimiterDep,
) -> Envelope[TokenPair]:
    """Create an account. The first organisation is created with you as its admin.
    Closed when the server sets MAESTRO_ALLOW_REGISTRATION=false."""
    limiter.login(_client_ip(request), body.email)
    return Envelope(data=service.register(session, settings, body, ip=_client_ip(request)))


@router.post("/login", response_model=Envelope[TokenPair], responses=error_responses(401, 422, 429))
def login(
    body: LoginRequest,
    request: Request,
    database: DatabaseDep,
    settings: SettingsDep,
    limiter: RateLimiterDep,
) -> Envelope[TokenPair]:
    """Exchange email and password for an access token and a refresh token.
    Attempts are limited per client address and per account."""
    limiter.login(_client_ip(request), body.email)
    # The password is checked on a reader: failed attempts write nothing and never
    # hold the write lock.
    with database.session(write=False, for_request=True) as reader:
        user_id = service.check_password(reader, settings, email=body.email, password=body.password)
    with database.session(for_request=True) as session:
        tokens = service.login(
            session,
            settings,
            user_id=user_id,
            password=body.password,
            ip=_client_ip(request),
            user_agent=request.headers.get("user-agent"),
        )
        audit.record_success(session, request, 200)
    return Envelope(data=tokens)


@router.post("/refresh", response_model=Envelope[TokenPair], responses=error_responses(401, 422, 429))
def refresh(
    body: RefreshRequest,
    request: Request,
    database: DatabaseDep,
    settings: SettingsDep,
    limiter: RateLimiterDep,
) -> Envelope[TokenPair]:
    """Rotate a refresh token: it is spent, and a new pair is returned. Presenting a
    spent token again ends the whole session, unless it was spent a moment ago
    (MAESTRO_REFRESH_REUSE_GRACE_SECONDS). Attempts are limited per client address."""
    request.state.rate_limit_headers = limiter.refresh(_client_ip(request))
    # Unknown and dead tokens are answered from a reader: nothing is written for them,
    # and they never wait for (or hold) the write lock.
    with database.session(write=False, for_request=True) as reader:
        live = service.refresh_token_is_live(reader, body.refresh_token)
    if not live:
        raise AuthenticationRequired(INVALID_REFRESH_TOKEN)
    with database.session(for_request=True) as session:
        outcome = service.refresh(session, settings, body.refresh_token)
        if outcome.tokens is not None or outcome.reused:
            audit.record_success(session, request, 200)  # a reuse says 401 itself
    if outcome.tokens is None:
        # The revoked session is committed above; only the answer is an error.
        raise AuthenticationRequired(
            "Refresh token reused: the session has been ended, sign in again"
            if outcome.reused
            else INVALID_REFRESH_TOKEN
        )
    return Envelope(data=outcome.tokens)


@router.post("/logout", status_code=204, responses=error_responses(401, 422))
def logout(principal: CurrentPrincipal, session: SessionDep) -> None:
    """End the current session: its access and refresh tokens stop working at once."""
    if principal.session_id is None:
        raise AuthenticationRequired("API keys have no session to end")
    service.logout(session, principal.session_id)


@router.get("/me", response_model=Envelope[UserRead], responses=error_responses(401))
def me(principal: CurrentPrincipal, session: SessionDep) -> Envelope[UserRead]:
    """The signed-in user and the organisation they are acting in, with their role."""
    if principal.user_id is None:
        raise AuthenticationRequired("API keys have no user; use a user's access token")
    user = service.get_user(session, principal.user_id)
    return Envelope(data=service.user_read(session, user, principal.organization_id))


@router.put("/me", response_model=Envelope[UserRead], responses=error_responses(401, 404, 422))
def update_me(body: MeUpdate, principal: CurrentPrincipal, session: SessionDep) -> Envelope[UserRead]:
    """Change your name, avatar, or the organisation you act in by default."""
    if principal.user_id is None:
        raise AuthenticationRequired("API keys have no user; use a user's access token")
    user = service.update_me(session, service.get_user(session, principal.user_id), body)
    return Envelope(data=service.user_read(session, user, user.current_organization_id))
