"""Who created or changed something: a person, or an API key, named by its name and
visible prefix (rows keep both ids, or a kind and an id; reads load them a page at a
time). The registry, deployments and their histories all name actors this way."""

from __future__ import annotations

from collections.abc import Iterable
from dataclasses import dataclass

from sqlalchemy.orm import Session

from maestro.identity.api_keys import api_keys_by_id
from maestro.identity.models import ApiKey, User
from maestro.identity.rbac import Principal
from maestro.identity.schemas import ActorRef
from maestro.identity.service import users_by_id


def acting(principal: Principal) -> tuple[str | None, str | None]:
    """(user id, API key id) of whoever acts, for the rows that record it."""
    return principal.user_id, principal.id if principal.kind == "api_key" else None


@dataclass
class Actors:
    """The people and API keys named by a page of rows, loaded once."""

    users: dict[str, User]
    keys: dict[str, ApiKey]

    def ref(self, user_id: str | None, key_id: str | None) -> ActorRef | None:
        user = self.users.get(user_id or "")
        if user is not None:
            return ActorRef(id=user.id, name=user.full_name)
        key = self.keys.get(key_id or "")
        if key is not None:
            return ActorRef(id=key.id, name=key.name, kind="api_key", prefix=key.prefix)
        return None


def who(session: Session, principal: Principal) -> str:
    """How a message names whoever acts: "API key <name> (<prefix>)", or "a user"."""
    if principal.kind != "api_key":
        return "a user"
    key = api_keys_by_id(session, [principal.id]).get(principal.id)
    return "an API key" if key is None else f"API key {key.name} ({key.prefix})"


def actors(session: Session, pairs: Iterable[tuple[str | None, str | None]]) -> Actors:
    """Actors for (user id, API key id) pairs, in one query each."""
    pairs = list(pairs)
    return Actors(
        users_by_id(session, (user_id for user_id, _ in pairs)),
        api_keys_by_id(session, (key_id for _, key_id in pairs)),
    )
