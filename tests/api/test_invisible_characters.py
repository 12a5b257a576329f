"""Invisible and direction-changing characters (bidi overrides, isolates and marks,
zero-width characters) are refused in every name, label, path and description a client
sends, with a 422 naming the field and nothing stored; an uploaded file's name is kept
without them; and what shows user text to a person (download names, Markdown and PDF
model cards) drops them, even from text stored before they were refused."""

from __future__ import annotations

from typing import Any

import pytest
from fastapi.testclient import TestClient
from sqlalchemy import func, select, update

from maestro.api.downloads import attachment
from maestro.files.models import StoredFile
from maestro.identity.models import ApiKey
from maestro.organizations.models import Organization
from maestro.projects.models import Project
from maestro.registry import card_documents
from maestro.registry.models import ModelVersion, RegisteredModel
from maestro.schemas import find_invisible, strip_invisible
from maestro.tracking.models import Experiment, Run, RunArtifact
from tests.factories import Factory, World
from tests.registry.conftest import new_model, new_version, upload
from tests.tracking.conftest import new_experiment, new_run

RLO = "\u202e"  # RIGHT-TO-LEFT OVERRIDE: "\u202egnp.exe" displays as "exe.png"
HIDDEN = [
    "\u202a",
    "\u202b",
    "\u202c",
    "\u202d",
    RLO,
    "\u2066",
    "\u2067",
    "\u2068",
    "\u2069",
    "\u200e",
    "\u200f",
    "\u061c",
    "\u200b",
    "\u200c",
    "\u200d",
    "\u2060",
    "\ufeff",
]


def refused(response: Any, field: str) -> None:
    assert response.status_code == 422, response.text
    body = response.json()
    assert body["success"] is False
    assert body["error"]["code"] == "VALIDATION_ERROR"
    details = {detail["field"]: detail["message"] for detail in body["error"]["details"]}
    assert field in details, body
    assert "invisible or direction-changing" in details[field]


def rows(factory: Factory, model: type) -> int:
    with factory.database.session(write=False) as session:
        return session.scalar(select(func.count()).select_from(model)) or 0


def test_every_character_of_the_rule_is_found_and_ordinary_text_is_not() -> None:
    for char in HIDDEN:
        assert find_invisible(f"model{char}name") == char
        assert strip_invisible(f"{char}gnp.exe{char}") == "gnp.exe"
    for text in ("Modèle de fraude", "模型", "نموذج الاحتيال", "Модель", "a\tb", "emoji 🚀"):
        assert find_invisible(text) is None


@pytest.mark.parametrize("char", [RLO, "\u200b", "\u200d", "\ufeff", "\u2066", "\u200f", "\u061c"])
def test_names_and_descriptions_of_organisations_and_projects(
    client: TestClient, factory: Factory, world: World, char: str
) -> None:
    headers = world.admin.headers
    organizations, projects = rows(factory, Organization), rows(factory, Project)
    refused(client.post("/api/v1/organizations", json={"name": f"Acme{char}"}, headers=headers), "name")
    refused(
        client.post("/api/v1/organizations", json={"name": "Acme 2", "description": char}, headers=headers),
        "description",
    )
    refused(
        client.put(f"/api/v1/organizations/{world.org}", json={"name": f"{char}Acme"}, headers=headers),
        "name",
    )
    refused(
        client.post(
            f"/api/v1/organizations/{world.org}/projects", json={"name": f"Fraud{char}"}, headers=headers
        ),
        "name",
    )
    refused(
        client.post(
            f"/api/v1/organizations/{world.org}/projects",
            json={"name": "Fraud 2", "description": f"a{char}b"},
            headers=headers,
        ),
        "description",
    )
    refused(
        client.put(f"/api/v1/projects/{world.project}", json={"name": f"x{char}"}, headers=headers), "name"
    )
    registered = client.post(
        "/api/v1/auth/register",
        json={
            "email": "new@example.com",
            "password": "long enough pw",
            "organization_name": f"Evil{char}Corp",
        },
    )
    refused(registered, "organization_name")
    refused(
        client.post(
            "/api/v1/auth/register",
            json={"email": "new@example.com", "password": "long enough pw", "first_name": f"{char}nimda"},
        ),
        "first_name",
    )
    keys = rows(factory, ApiKey)
    refused(
        client.post(
            f"/api/v1/organizations/{world.org}/api-keys",
            json={"name": f"CI{char}", "permissions": {"projects": ["read"]}},
            headers=headers,
        ),
        "name",
    )
    assert (rows(factory, Organization), rows(factory, Project)) == (organizations, projects)
    assert rows(factory, ApiKey) == keys
    with factory.database.session(write=False) as session:
        assert session.get(Organization, world.org).name == "Acme"  # type: ignore[union-attr]


def test_models_versions_tags_and_cards(client: TestClient, factory: Factory, world: World) -> None:
    headers = world.developer.headers
    models = f"/api/v1/projects/{world.project}/models"
    before = rows(factory, RegisteredModel)
    for field, value in (
        ("name", f"{RLO}rotceteD duarF"),
        ("name", "Fraud\u200bDetector"),
        ("description", f"Predicts fraud {RLO}"),
        ("framework", "scikit\u200d-learn"),
        ("task_type", "\ufeffbinary"),
    ):
        body = {"name": "Fraud Detector", "model_type": "classification", field: value}
        refused(client.post(models, json=body, headers=headers), field)
    assert rows(factory, RegisteredModel) == before

    model = new_model(client, world.project, headers)
    refused(client.put(f"/api/v1/models/{model['id']}", json={"name": f"x{RLO}"}, headers=headers), "name")
    refused(
        client.put(f"/api/v1/models/{model['id']}/tags/team", json={"value": f"a{RLO}"}, headers=headers),
        "value",
    )
    versions = rows(factory, ModelVersion)
    refused(upload(client, model["id"], headers, description=f"v1{RLO}"), "description")
    refused(upload(client, model["id"], headers, requirements=f"numpy\nevil{RLO}==1"), "requirements")
    assert rows(factory, ModelVersion) == versions

    version = new_version(client, model["id"], headers)
    card = f"/api/v1/models/{model['id']}/versions/{version['version']}/card"
    refused(client.put(card, json={"limitations": [f"Not for {RLO}EU"]}, headers=headers), "limitations.0")
    refused(
        client.put(card, json={"training_data": {"description": "zero\u200bwidth"}}, headers=headers),
        "training_data.description",
    )
    saved = client.get(card, headers=headers).json()["data"]["sections"]
    assert saved["limitations"] is None and saved["training_data"] is None
    stage = client.put(
        f"/api/v1/models/{model['id']}/versions/{version['version']}/stage",
        json={"stage": "staging", "description": f"ok{RLO}"},
        headers=headers,
    )
    refused(stage, "description")


def test_experiments_runs_keys_and_artifacts(client: TestClient, factory: Factory, world: World) -> None:
    headers = world.developer.headers
    experiments = f"/api/v1/projects/{world.project}/experiments"
    before = rows(factory, Experiment)
    refused(client.post(experiments, json={"name": f"Tuning{RLO}"}, headers=headers), "name")
    refused(
        client.post(experiments, json={"name": "T", "description": f"{RLO}x"}, headers=headers), "description"
    )
    refused(
        client.post(experiments, json={"name": "T", "tags": {"team\u200d": "a"}}, headers=headers),
        "tags.team\u200d.[key]",
    )
    refused(
        client.post(experiments, json={"name": "T", "tags": {"team": f"a{RLO}"}}, headers=headers),
        "tags.team",
    )
    assert rows(factory, Experiment) == before

    experiment = new_experiment(client, world.project, headers)["id"]
    runs = rows(factory, Run)
    refused(
        client.post(f"/api/v1/experiments/{experiment}/runs", json={"run_name": f"r{RLO}"}, headers=headers),
        "run_name",
    )
    refused(
        client.post(
            f"/api/v1/experiments/{experiment}/runs", json={"parameters": {"lr\u200c": 1}}, headers=headers
        ),
        "parameters.lr\u200c.[key]",
    )
    assert rows(factory, Run) == runs

    run = new_run(client, experiment, headers)["id"]
    artifacts = f"/api/v1/experiments/{experiment}/runs/{run}/artifacts"
    stored = rows(factory, RunArtifact)
    by_path = client.post(
        artifacts,
        data={"path": f"plots/{RLO}gnp.exe"},
        files={"file": ("roc.png", b"\x89PNG fake", "image/png")},
        headers=headers,
    )
    refused(by_path, "path")
    by_name = client.post(artifacts, files={"file": (f"{RLO}gnp.exe", b"MZ", "image/png")}, headers=headers)
    refused(by_name, "file")
    described = client.post(
        artifacts,
        data={"description": f"a{RLO}b"},
        files={"file": ("roc.png", b"\x89PNG fake", "image/png")},
        headers=headers,
    )
    refused(described, "description")
    assert rows(factory, RunArtifact) == stored
    assert client.get(artifacts, headers=headers).json()["data"] == []


def test_an_uploaded_files_name_is_kept_without_them_and_downloads_safely(
    client: TestClient, factory: Factory, world: World
) -> None:
    headers = world.developer.headers
    response = client.post(
        "/api/v1/upload/datasets",
        data={"project_id": world.project},
        files={"file": (f"{RLO}vsc.exe\u200b.csv", b"a,b\n1,2\n", "text/csv")},
        headers=headers,
    )
    assert response.status_code == 201, response.text
    data = response.json()["data"]
    assert data["filename"] == "vsc.exe.csv"
    download = client.get(f"/api/v1/files/{data['id']}/download", headers=headers)
    assert download.status_code == 200
    disposition = download.headers["content-disposition"]
    assert disposition == 'attachment; filename="vsc.exe.csv"'
    refused(
        client.post(
            "/api/v1/upload/datasets",
            data={"project_id": world.project, "description": f"a{RLO}b"},
            files={"file": ("d.csv", b"a,b\n1,2\n", "text/csv")},
            headers=headers,
        ),
        "description",
    )
    with factory.database.session(write=False) as session:
        assert session.scalar(select(func.count()).select_from(StoredFile)) == 1


@pytest.mark.parametrize(
    ("name", "expected"),
    [
        (f"{RLO}gnp.exe", 'attachment; filename="gnp.exe"'),
        (f"report{RLO}fdp.exe", 'attachment; filename="reportfdp.exe"'),
        ("a\u200bb\u2066c.txt", 'attachment; filename="abc.txt"'),
        (
            "evil\r\nSet-Cookie: x=1.txt",
            'attachment; filename="evilSet-Cookie_ x_1.txt"; '
            "filename*=UTF-8''evilSet-Cookie%3A%20x%3D1.txt",
        ),
        (f"Modèle{RLO}.csv", "attachment; filename=\"Mod_le.csv\"; filename*=UTF-8''Mod%C3%A8le.csv"),
        (f"{RLO}\u200b", 'attachment; filename="fallback.bin"'),
    ],
)
def test_download_names_drop_invisible_and_control_characters(name: str, expected: str) -> None:
    header = attachment(name, "fallback.bin")
    assert header == expected
    assert header.isprintable() and header.isascii()
    assert "%E2%80%AE" not in header.upper()


def test_cards_drop_them_from_text_stored_before(client: TestClient, factory: Factory, world: World) -> None:
    """Text stored before the rule (or written straight to the database) never reaches a
    reader of the Markdown or PDF card with its direction changed."""
    headers = world.developer.headers
    model = new_model(client, world.project, headers, description="Detects fraud")
    version = new_version(client, model["id"], headers, requirements="numpy")
    with factory.database.session() as session:
        session.execute(
            update(RegisteredModel)
            .where(RegisteredModel.id == model["id"])
            .values(name=f"Fraud {RLO}rotceteD", description=f"Safe\u200b to use {RLO}gnp.exe")
        )
        session.execute(
            update(ModelVersion)
            .where(ModelVersion.id == version["id"])
            .values(requirements="`\u200b`\u200b`\u200b`\nnumpy")
        )
    markdown = client.get(
        f"/api/v1/models/{model['id']}/versions/{version['version']}/card",
        params={"format": "markdown"},
        headers=headers,
    )
    assert markdown.status_code == 200
    text = markdown.text
    assert find_invisible(text) is None
    assert "Fraud rotceteD" in text and "Safe to use gnp.exe" in text
    # The backticks the zero-width spaces kept apart run together once dropped: the fence
    # around them is longer still, so they cannot close it.
    assert "`````text\n````\nnumpy\n`````" in text

    pdf = card_documents.CardPdf(None)
    assert pdf.clean(f"Safe\u200b to use {RLO}gnp.exe") == "Safe to use gnp.exe"
    assert pdf.replaced == 0
    assert card_documents.md_text(f"{RLO}gnp.exe") == "gnp.exe"
