"""Small factories that create users, organisations, API keys and projects directly
through the services, so tests spend their time on the behaviour under test; and the
one builder of who is who in a test: ``Org`` (an organisation and its admin) and
``World`` (the usual two organisations, one person per role, their projects)."""

from __future__ import annotations

import itertools
from dataclasses import dataclass, field
from typing import Any, Self

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


# --- who is who --------------------------------------------------------------------------------
@dataclass
class Org:
    """An organisation as a test sees it: its id and its admin, and methods that add
    members, projects and API keys to it."""

    id: str
    admin: Actor
    factory: Factory = field(repr=False)

    @classmethod
    def new(cls, factory: Factory, name: str | None = None, plan: str = "enterprise") -> Org:
        organization_id = factory.organization(name, plan=plan)
        return cls(organization_id, factory.user(organization_id, "admin"), factory)

    def user(self, role: str = "developer") -> Actor:
        """A new member with ``role`` in the organisation."""
        return self.factory.user(self.id, role)

    def project(
        self,
        visibility: str = "organization",
        *,
        name: str | None = None,
        creator: Actor | None = None,
        members: dict[str, Actor] | None = None,
    ) -> str:
        """A project created by ``creator`` (the admin by default); ``members`` maps a
        project role to each person added as a project member (nobody by default)."""
        project_id = self.factory.project(self.id, creator or self.admin, visibility, name=name)
        for role, actor in (members or {}).items():
            self.add_to_project(project_id, actor, role)
        return project_id

    def add_to_project(self, project_id: str, actor: Actor, role: str) -> None:
        """Make ``actor`` a member of one of the organisation's projects with ``role``."""
        self.factory.add_project_member(project_id, actor, role)

    def api_key(self, permissions: dict[str, list[str]], **values: Any) -> str:
        return self.factory.api_key(self.id, permissions, **values)


@dataclass
class World:
    """The usual cast: Acme, where the test acts, with one person per organisation role,
    a project the whole organisation sees ("Fraud"), a private project with no members
    but its creator, the admin ("Secret"), and an API key that may only run inference;
    and Globex, another organisation, with its admin (the outsider) and its own project.

    ``World.build(factory)`` makes one; a test area that needs more people or projects
    subclasses it and adds them in ``extend`` with the ``acme``/``globex`` methods."""

    acme: Org
    globex: Org
    developer: Actor
    viewer: Actor
    project: str  # visibility "organization"
    private: str  # visibility "private", no members
    other_project: str  # Globex's, visibility "organization"
    inference_key: str  # an Acme API key with inference read only

    @classmethod
    def build(cls, factory: Factory) -> Self:
        acme, globex = Org.new(factory, "Acme"), Org.new(factory, "Globex")
        world = cls(
            acme=acme,
            globex=globex,
            developer=acme.user("developer"),
            viewer=acme.user("viewer"),
            project=acme.project("organization", name="Fraud"),
            private=acme.project("private", name="Secret"),
            other_project=globex.project("organization", name="Globex models"),
            inference_key=acme.api_key({"inference": ["read"]}),
        )
        world.extend()
        return world

    def extend(self) -> None:
        """Add what a test area needs beyond the usual cast (nothing here)."""

    @property
    def org(self) -> str:
        return self.acme.id

    @property
    def admin(self) -> Actor:
        return self.acme.admin

    @property
    def other_org(self) -> str:
        return self.globex.id

    @property
    def outsider(self) -> Actor:
        """Globex's admin: signed in, and a stranger to everything of Acme's."""
        return self.globex.admin

    @property
    def key_headers(self) -> dict[str, str]:
        return api_key_headers(self.inference_key)


def api_key_headers(key: str) -> dict[str, str]:
    return {"X-API-Key": key}
