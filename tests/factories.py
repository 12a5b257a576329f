"""Small factories that create users, organisations, API keys and projects directly
through the services, so tests spend their time on the behaviour under test."""

from __future__ import annotations

import itertools
from dataclasses import dataclass
from typing import Any

from fastapi import FastAPI

from maestro.identity import security, service
from maestro.identity.models import ApiKey
from maestro.organizations.models import Membership, Organization, Role

_counter = itertools.count(1)


@dataclass
class Actor:
    user_id: str
    email: str
    password: str
    access_token: str
    refresh_token: str
    organization_id: str | None
    role: str | None

    @property
    def headers(self) -> dict[str, str]:
        return {"Authorization": f"Bearer {self.access_token}"}


class Factory:
    def __init__(self, app: FastAPI) -> None:
        self.app = app
        self.database = app.state.database
        self.settings = app.state.settings

    def organization(self, name: str | None = None, plan: str = "enterprise") -> str:
        """An organisation with no members yet (add some with ``user``)."""
        with self.database.session() as session:
            number = next(_counter)
            organization = Organization(
                name=name or f"Org {number}", slug=f"org-{number}-{id(self)}", subscription_plan=plan
            )
            session.add(organization)
            session.flush()
            return organization.id

    def user(
        self,
        organization_id: str | None = None,
        role: str = Role.admin,
        email: str | None = None,
        password: str = "correct horse battery",
    ) -> Actor:
        """A user with a live session; a member of ``organization_id`` with ``role``
        when given (a fresh organisation is created when it is None and role is set)."""
        number = next(_counter)
        email = email or f"user{number}@example.com"
        with self.database.session() as session:
            user = service.create_user(
                session,
                self.settings,
                email=email,
                password=password,
                first_name="User",
                last_name=str(number),
            )
            if organization_id is not None:
                session.add(Membership(organization_id=organization_id, user_id=user.id, role=role))
                user.current_organization_id = organization_id
                session.flush()
            tokens = service.start_session(session, self.settings, user, ip="127.0.0.1", user_agent="tests")
        return Actor(
            user.id,
            email,
            password,
            tokens.access_token,
            tokens.refresh_token,
            organization_id,
            role if organization_id else None,
        )

    def api_key(self, organization_id: str, permissions: dict[str, list[str]], **values: Any) -> str:
        new = security.generate_api_key()
        with self.database.session() as session:
            session.add(
                ApiKey(
                    organization_id=organization_id,
                    name=f"key {next(_counter)}",
                    prefix=new.prefix,
                    key_hash=new.key_hash,
                    permissions=permissions,
                    **values,
                )
            )
        return new.key

    def project(
        self, organization_id: str, creator: Actor, visibility: str = "private", name: str | None = None
    ) -> str:
        from maestro.projects.models import Project

        with self.database.session() as session:
            number = next(_counter)
            project = Project(
                organization_id=organization_id,
                name=name or f"Project {number}",
                slug=f"project-{number}",
                visibility=visibility,
                created_by_id=creator.user_id,
            )
            session.add(project)
            session.flush()
            return project.id

    def add_project_member(self, project_id: str, actor: Actor, role: str) -> None:
        from maestro.projects.models import ProjectMember

        with self.database.session() as session:
            session.add(ProjectMember(project_id=project_id, user_id=actor.user_id, role=role))
