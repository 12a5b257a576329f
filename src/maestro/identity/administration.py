"""What an instance administrator does to accounts: list them, deactivate and
reactivate them; and the record of failed sign-ins they read.

Deactivating an account ends its sessions (the person signs in again once
reactivated) and suspends the API keys it created, which work again on
reactivation: the keys belong to the organisation, whose admins may revoke them.
Every check of a credential reads the account's state, and the credential cache is
emptied by the change (see ``credential_cache``), so both stop at once."""

from __future__ import annotations

import re

from sqlalchemy import Select, select, update
from sqlalchemy.orm import Session

from maestro.db import utcnow
from maestro.errors import Conflict
from maestro.identity import audit
from maestro.identity.models import AuthSession, FailedSignIn, User
from maestro.identity.rbac import Principal
from maestro.identity.schemas import AccountRead
from maestro.identity.service import get_user

EMAIL_KEPT = 320
_UNPRINTABLE = re.compile(r"[\x00-\x1f\x7f]")


def record_failed_sign_in(session: Session, *, email: str, ip: str | None, reason: str) -> None:
    """Keep one refused sign-in. The email is kept as typed, cut to its first 320
    characters, with control characters (which no database keeps alike) replaced."""
    session.add(
        FailedSignIn(
            email=_UNPRINTABLE.sub("\ufffd", email[:EMAIL_KEPT]), ip=(ip or None) and ip[:64], reason=reason
        )
    )
    session.flush()


def failed_sign_ins_query() -> Select[FailedSignIn]:
    return select(FailedSignIn)


def accounts_query(active: bool | None) -> Select[User]:
    statement = select(User)
    if active is not None:
        statement = statement.where(User.is_active.is_(active))
    return statement


def account_read(user: User) -> AccountRead:
    return AccountRead.model_validate(user, from_attributes=True)


def set_active(session: Session, principal: Principal | None, user_id: str, active: bool) -> User:
    """Deactivate or reactivate an account. ``principal`` is None when an operator
    does it from the command line. Administrators cannot deactivate themselves, so an
    installation never loses its last one by accident."""
    user = get_user(session, user_id)
    if not active and principal is not None and principal.user_id == user.id:
        raise Conflict("You cannot deactivate your own account", details=[("user_id", "yourself")])
    user.is_active = active
    if not active:
        session.execute(
            update(AuthSession)
            .where(AuthSession.user_id == user.id, AuthSession.revoked_at.is_(None))
            .values(revoked_at=utcnow(), revoked_reason="account deactivated")
        )
    session.flush()
    audit.describe(
        session,
        resource_type="users",
        resource_id=user.id,
        organization_id=principal.organization_id if principal is not None else None,
        active=active,
    )
    return user
