"""Who is who for the project tests: the suite's ``World`` with a project of each
visibility in Acme, each having the admin as project admin and ``member`` as project
viewer, and a private and a public project in Globex."""

from __future__ import annotations

from dataclasses import dataclass, field

import pytest

from tests.factories import Actor, Factory, World


@dataclass
class ProjectsWorld(World):
    member: Actor = field(init=False)  # organisation developer, a `viewer` member of Acme's three projects
    public: str = field(init=False)
    other_private: str = field(init=False)  # Globex's
    other_public: str = field(init=False)

    def extend(self) -> None:
        self.member = self.acme.user("developer")
        self.public = self.acme.project("public", name="Public project")
        for project_id in self.projects.values():
            self.acme.add_to_project(project_id, self.admin, "admin")
            self.acme.add_to_project(project_id, self.member, "viewer")
        self.other_private = self.globex.project("private", name="Globex private")
        self.other_public = self.globex.project("public", name="Globex public")

    @property
    def organization(self) -> str:
        """Acme's project of visibility "organization" ("Fraud")."""
        return self.project

    @property
    def projects(self) -> dict[str, str]:
        return {"private": self.private, "organization": self.project, "public": self.public}


@pytest.fixture
def world(factory: Factory) -> ProjectsWorld:
    return ProjectsWorld.build(factory)
