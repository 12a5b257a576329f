"""Deleting a project or an organisation takes its files out of the artifact store:
model versions, uploaded datasets and run artifacts, and nothing of anyone else's."""

from __future__ import annotations

from pathlib import Path

from fastapi.testclient import TestClient

from tests.factories import Factory
from tests.registry.conftest import new_model, stored_files
from tests.tracking.conftest import World, new_experiment, new_run, ok, run_url

PNG = b"\x89PNG\r\n\x1a\n" + bytes(range(256))
CSV = b"age,income\n34,52000\n51,61000\n"


def files_in(factory: Factory) -> set[Path]:
    return set(stored_files(Path(factory.app.state.store.root)))


def fill(client: TestClient, project: str, headers: dict[str, str]) -> None:
    """A model version, a dataset and a run artifact in ``project``."""
    model = new_model(client, project, headers)
    ok(
        client.post(
            f"/api/v1/models/{model['id']}/versions",
            files={"model_file": ("model.bin", b"model bytes " * 10, "application/octet-stream")},
            headers=headers,
        ),
        201,
    )
    ok(
        client.post(
            "/api/v1/upload/datasets",
            data={"project_id": project},
            files={"file": ("data.csv", CSV, "text/csv")},
            headers=headers,
        ),
        201,
    )
    run = new_run(client, new_experiment(client, project, headers)["id"], headers)
    ok(
        client.post(
            f"{run_url(run['experiment_id'], run['id'])}/artifacts",
            files={"file": ("roc.png", PNG, "image/png")},
            headers=headers,
        ),
        201,
    )


def test_deleting_a_project_removes_its_files(client: TestClient, factory: Factory, world: World) -> None:
    before = files_in(factory)
    fill(client, world.project, world.admin.headers)
    theirs = files_in(factory) - before
    assert len(theirs) == 3
    fill(client, world.private, world.admin.headers)
    kept = files_in(factory) - before - theirs

    assert client.delete(f"/api/v1/projects/{world.project}", headers=world.admin.headers).status_code == 204
    assert files_in(factory) == before | kept  # the other project's files and the other org's stay


def test_a_refused_deletion_removes_nothing(client: TestClient, factory: Factory, world: World) -> None:
    fill(client, world.project, world.admin.headers)
    before = files_in(factory)
    # A developer of the organisation may not delete its project; another organisation's
    # admin is told it does not exist.
    for headers, status in ((world.developer.headers, 403), (world.outsider.headers, 404)):
        assert client.delete(f"/api/v1/projects/{world.project}", headers=headers).status_code == status
    assert (
        client.delete(f"/api/v1/organizations/{world.org}", headers=world.outsider.headers).status_code == 404
    )
    assert files_in(factory) == before


def test_deleting_an_organization_removes_its_files(
    client: TestClient, factory: Factory, world: World
) -> None:
    others = files_in(factory)  # the other organisation's run artifacts, if any
    fill(client, world.project, world.admin.headers)
    fill(client, world.private, world.admin.headers)
    assert len(files_in(factory) - others) == 6

    assert client.delete(f"/api/v1/organizations/{world.org}", headers=world.admin.headers).status_code == 204
    assert files_in(factory) == others


def test_deleting_a_model_removes_its_versions_files(
    client: TestClient, factory: Factory, world: World
) -> None:
    before = files_in(factory)
    fill(client, world.project, world.admin.headers)
    model = new_model(client, world.project, world.admin.headers, "second")
    for _ in range(2):
        ok(
            client.post(
                f"/api/v1/models/{model['id']}/versions",
                files={"model_file": ("model.bin", b"other bytes " * 10, "application/octet-stream")},
                headers=world.admin.headers,
            ),
            201,
        )
    everything = files_in(factory)
    assert len(everything - before) == 5

    assert client.delete(f"/api/v1/models/{model['id']}", headers=world.admin.headers).status_code == 204
    assert len(everything - files_in(factory)) == 2  # the first model, the dataset and the artifact stay
