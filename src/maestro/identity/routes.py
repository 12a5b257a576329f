from __future__ import annotations

from fastapi import APIRouter, Request

from maestro.api.deps import CurrentPrincipal, DatabaseDep, RateLimiterDep, SessionDep, SettingsDep
from maestro.api.envelope import Envelope
from maestro.api.errors import error_responses
from maestro.errors import AuthenticationRequired, PermissionDenied
from maestro.identity import administration, audit, security, service
from maestro.identity.schemas import (
    LoginRequest,
    MeUpdate,
    PasswordChange,
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
    # The password is checked on a reader, so a wrong one never holds the write lock;
    # a refusal is then kept, in a transaction of its own, for administrators to read.
    try:
        with database.session(write=False, for_request=True) as reader:
            user_id = service.check_password(reader, settings, email=body.email, password=body.password)
    except service.SignInRefused as refused:
        with database.session(for_request=True) as session:
            administration.record_failed_sign_in(
                session, email=body.email, ip=_client_ip(request), reason=refused.reason
            )
        raise
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


@router.post("/logout", status_code=204, responses=error_responses(401, 422, 429))
def logout(principal: CurrentPrincipal, session: SessionDep) -> None:
    """End the current session: its access and refresh tokens stop working at once."""
    if principal.session_id is None:
        raise AuthenticationRequired("API keys have no session to end")
    service.logout(session, principal.session_id)


@router.get("/me", response_model=Envelope[UserRead], responses=error_responses(401, 429))
def me(principal: CurrentPrincipal, session: SessionDep) -> Envelope[UserRead]:
    """The signed-in user and the organisation they are acting in, with their role."""
    if principal.user_id is None:
        raise AuthenticationRequired("API keys have no user; use a user's access token")
    user = service.get_user(session, principal.user_id)
    return Envelope(data=service.user_read(session, user, principal.organization_id))


@router.put("/me", response_model=Envelope[UserRead], responses=error_responses(401, 404, 422, 429))
def update_me(body: MeUpdate, principal: CurrentPrincipal, session: SessionDep) -> Envelope[UserRead]:
    """Change your name, avatar, or the organisation you act in by default."""
    if principal.user_id is None:
        raise AuthenticationRequired("API keys have no user; use a user's access token")
    user = service.update_me(session, service.get_user(session, principal.user_id), body)
    return Envelope(data=service.user_read(session, user, user.current_organization_id))


@router.put("/me/password", status_code=204, responses=error_responses(401, 403, 409, 422, 429))
def change_password(
    body: PasswordChange,
    principal: CurrentPrincipal,
    request: Request,
    database: DatabaseDep,
    settings: SettingsDep,
    limiter: RateLimiterDep,
) -> None:
    """Change your password: give the current one. Every other session of yours ends;
    this one goes on. A wrong current password answers 403 and changes nothing; tries
    count against the sign-in limits of your address and account."""
    if principal.user_id is None or principal.session_id is None:
        raise AuthenticationRequired("API keys have no password; use a user's access token")
    # Both hashes are computed outside any write transaction.
    with database.session(write=False, for_request=True) as reader:
        user = service.get_user(reader, principal.user_id)
        email, known_hash = user.email, user.password_hash or ""
    limiter.login(_client_ip(request), email)
    if not security.verify_password(settings, known_hash or None, body.current_password):
        raise PermissionDenied(
            "The current password is wrong", details=[("current_password", "does not match")]
        )
    new_hash = security.hash_password(settings, body.new_password)
    with database.session(for_request=True) as session:
        service.change_password(session, settings, principal, known_hash=known_hash, new_hash=new_hash)
        audit.record_success(session, request, 204)
