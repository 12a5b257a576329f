"""A small organisation with one user per role, a project of each visibility, and
outsiders, shared by the project tests."""

from __future__ import annotations

from dataclasses import dataclass

import pytest

from tests.factories import Actor, Factory


@dataclass
class World:
    org: str
    admin: Actor
    developer: Actor  # organisation developer, member of no project
    viewer: Actor  # organisation viewer, member of no project
    member: Actor  # organisation developer who is a `viewer` member of every project below
    other_org: str
    outsider: Actor  # admin of another organisation
    private: str
    organization: str
    public: str
    other_private: str  # projects of the other organisation
    other_public: str

    @property
    def projects(self) -> dict[str, str]:
        return {"private": self.private, "organization": self.organization, "public": self.public}


def api_key_headers(key: str) -> dict[str, str]:
    return {"X-API-Key": key}


@pytest.fixture
def world(factory: Factory) -> World:
    org = factory.organization("Acme")
    admin = factory.user(org, "admin")
    developer = factory.user(org, "developer")
    viewer = factory.user(org, "viewer")
    member = factory.user(org, "developer")
    other_org = factory.organization("Globex")
    outsider = factory.user(other_org, "admin")
    projects = {
        v: factory.project(org, admin, v, name=f"{v.title()} project")
        for v in ("private", "organization", "public")
    }
    for project_id in projects.values():
        factory.add_project_member(project_id, admin, "admin")
        factory.add_project_member(project_id, member, "viewer")
    return World(
        org=org,
        admin=admin,
        developer=developer,
        viewer=viewer,
        member=member,
        other_org=other_org,
        outsider=outsider,
        private=projects["private"],
        organization=projects["organization"],
        public=projects["public"],
        other_private=factory.project(other_org, outsider, "private", name="Globex private"),
        other_public=factory.project(other_org, outsider, "public", name="Globex public"),
    )
