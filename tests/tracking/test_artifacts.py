from __future__ import annotations

from pathlib import Path
from typing import Any

import pytest
from fastapi.testclient import TestClient
from httpx import Response

from maestro.app import create_app
from tests.factories import Factory
from tests.registry.conftest import stored_files
from tests.tracking.conftest import World, error_of, new_experiment, new_run, ok, run_url

PNG = b"\x89PNG\r\n\x1a\n" + bytes(range(256)) * 4


@pytest.fixture
def run(client: TestClient, world: World) -> dict:
    experiment = new_experiment(client, world.project, world.admin.headers)
    return new_run(client, experiment["id"], world.admin.headers)


def upload(
    client: TestClient,
    run: dict,
    headers: dict[str, str],
    content: bytes = PNG,
    filename: str = "roc.png",
    **fields: Any,
) -> Response:
    return client.post(
        f"{run_url(run['experiment_id'], run['id'])}/artifacts",
        data=fields,
        files={"file": (filename, content, "image/png")},
        headers=headers,
    )


def files_in(factory: Factory) -> list[Path]:
    return stored_files(Path(factory.app.state.store.root))


class TestUpload:
    def test_upload_list_and_download(
        self, client: TestClient, factory: Factory, world: World, run: dict
    ) -> None:
        data = ok(
            upload(
                client,
                run,
                world.developer.headers,
                path="plots/roc.png",
                artifact_type="plot",
                description="Confusion matrix visualization",
            ),
            201,
        )
        assert data["id"].startswith("artifact_")
        assert (data["path"], data["artifact_type"], data["size_bytes"]) == (
            "plots/roc.png",
            "plot",
            len(PNG),
        )
        assert data["description"] == "Confusion matrix visualization"
        assert data["content_type"] == "image/png"
        assert len(data["sha256"]) == 64
        # stored under a generated key: the user's path is nowhere on disk
        [stored] = [path for path in files_in(factory) if ".tmp" not in path.parts]
        assert "roc" not in str(stored) and "plots" not in str(stored)

        base = run_url(run["experiment_id"], run["id"])
        listed = ok(client.get(f"{base}/artifacts", headers=world.viewer.headers))
        assert [item["id"] for item in listed] == [data["id"]]
        download = client.get(f"{base}/artifacts/{data['id']}/download", headers=world.viewer.headers)
        assert download.status_code == 200
        assert download.content == PNG
        assert download.headers["content-type"] == "application/octet-stream"
        assert download.headers["x-content-type-options"] == "nosniff"
        assert 'filename="roc.png"' in download.headers["content-disposition"]

    def test_path_defaults_to_the_file_name_and_type_to_other(
        self, client: TestClient, world: World, run: dict
    ) -> None:
        data = ok(upload(client, run, world.admin.headers, filename="model.pkl"), 201)
        assert (data["path"], data["artifact_type"]) == ("model.pkl", "other")

    def test_same_path_replaces_the_artifact_and_its_file(
        self, client: TestClient, factory: Factory, world: World, run: dict
    ) -> None:
        first = ok(upload(client, run, world.admin.headers, content=b"first", path="data/x.csv"), 201)
        second = ok(upload(client, run, world.admin.headers, content=b"second!", path="data/x.csv"), 201)
        assert second["id"] == first["id"]
        assert second["size_bytes"] == 7
        assert len([path for path in files_in(factory) if ".tmp" not in path.parts]) == 1
        base = run_url(run["experiment_id"], run["id"])
        assert (
            client.get(f"{base}/artifacts/{first['id']}/download", headers=world.admin.headers).content
            == b"second!"
        )

    def test_list_by_prefix_in_path_order(self, client: TestClient, world: World, run: dict) -> None:
        for path in ("plots/b.png", "data/x.csv", "plots/a.png", "plots_extra/c.png"):
            ok(upload(client, run, world.admin.headers, path=path), 201)
        base = run_url(run["experiment_id"], run["id"])
        every = ok(client.get(f"{base}/artifacts", headers=world.admin.headers))
        assert [item["path"] for item in every] == [
            "data/x.csv",
            "plots/a.png",
            "plots/b.png",
            "plots_extra/c.png",
        ]
        plots = ok(client.get(f"{base}/artifacts", params={"prefix": "plots/"}, headers=world.admin.headers))
        assert [item["path"] for item in plots] == ["plots/a.png", "plots/b.png"]
        underscore = ok(
            client.get(f"{base}/artifacts", params={"prefix": "plots_"}, headers=world.admin.headers)
        )
        assert [item["path"] for item in underscore] == ["plots_extra/c.png"]

    def test_unicode_names_download_with_an_encoded_name(
        self, client: TestClient, world: World, run: dict
    ) -> None:
        data = ok(upload(client, run, world.admin.headers, path='résumé "final".txt'), 201)
        base = run_url(run["experiment_id"], run["id"])
        download = client.get(f"{base}/artifacts/{data['id']}/download", headers=world.admin.headers)
        disposition = download.headers["content-disposition"]
        assert "filename*=UTF-8''r%C3%A9sum%C3%A9%20%22final%22.txt" in disposition
        assert 'filename="r_sum_ _final_.txt"' in disposition


class TestHostileUploads:
    @pytest.mark.parametrize(
        "path",
        [
            "../../etc/passwd",
            "plots/../../secret",
            "./roc.png",
            "/etc/passwd",
            "C:\\Windows\\win.ini",
            "C:secret",
            "plots\\roc.png",
            "plots//roc.png",
            "plots/",
            "line\nbreak.png",
            "tab\there",
            "bell\x07",
            "nul\x00.png",
            "del\x7f",
            " leading-space",
            "x" * 501,
            ("y" * 256) + "/z",
            "",
        ],
    )
    def test_bad_paths_are_422_and_leave_nothing(
        self, client: TestClient, factory: Factory, world: World, run: dict, path: str
    ) -> None:
        response = upload(client, run, world.admin.headers, path=path)
        assert response.status_code == 422, response.text
        assert error_of(response)["code"] == "VALIDATION_ERROR"
        assert files_in(factory) == []
        base = run_url(run["experiment_id"], run["id"])
        assert ok(client.get(f"{base}/artifacts", headers=world.admin.headers)) == []

    @pytest.mark.parametrize(
        "filename", ["../../../etc/passwd", "..\\..\\boot.ini", "/abs.png", "C:evil.png"]
    )
    def test_bad_file_names_are_422(
        self, client: TestClient, factory: Factory, world: World, run: dict, filename: str
    ) -> None:
        response = upload(client, run, world.admin.headers, filename=filename)
        assert response.status_code == 422
        assert files_in(factory) == []

    @pytest.mark.parametrize(
        "fields",
        [{"artifact_type": "executable"}, {"description": "d" * 2001}, {"description": "bad\x00"}],
    )
    def test_bad_fields_are_422(
        self, client: TestClient, factory: Factory, world: World, run: dict, fields: dict
    ) -> None:
        assert upload(client, run, world.admin.headers, **fields).status_code == 422
        assert files_in(factory) == []

    def test_over_the_size_limit_is_413_with_no_file_left(self, make_settings, world: World) -> None:  # type: ignore[no-untyped-def]
        app = create_app(make_settings(max_artifact_bytes=1024))
        factory = Factory(app)
        with TestClient(app) as client:
            experiment = new_experiment(client, world.project, world.admin.headers)
            run = new_run(client, experiment["id"], world.admin.headers)
            response = upload(client, run, world.admin.headers, content=b"x" * 5000, path="big.bin")
            assert response.status_code == 413
            assert error_of(response)["code"] == "PAYLOAD_TOO_LARGE"
            assert files_in(factory) == []
            assert ok(upload(client, run, world.admin.headers, content=b"x" * 1024, path="fits.bin"), 201)

    def test_not_multipart_is_415(self, client: TestClient, world: World, run: dict) -> None:
        response = client.post(
            f"{run_url(run['experiment_id'], run['id'])}/artifacts",
            json={"file": "x"},
            headers=world.admin.headers,
        )
        assert response.status_code == 415

    def test_unknown_fields_and_missing_or_empty_files(
        self, client: TestClient, factory: Factory, world: World, run: dict
    ) -> None:
        url = f"{run_url(run['experiment_id'], run['id'])}/artifacts"
        assert upload(client, run, world.admin.headers, storage_key="../x").status_code == 422
        no_file = client.post(
            url, data={"path": "a.txt"}, files={"other": ("a", b"x")}, headers=world.admin.headers
        )
        assert no_file.status_code == 422
        empty = upload(client, run, world.admin.headers, content=b"", path="empty.txt")
        assert empty.status_code == 422
        assert files_in(factory) == []


class TestArtifactAccess:
    def test_viewer_downloads_but_cannot_upload(self, client: TestClient, world: World, run: dict) -> None:
        artifact = ok(upload(client, run, world.admin.headers), 201)
        assert upload(client, run, world.viewer.headers).status_code == 403
        base = run_url(run["experiment_id"], run["id"])
        assert (
            client.get(
                f"{base}/artifacts/{artifact['id']}/download", headers=world.viewer.headers
            ).status_code
            == 200
        )

    def test_other_tenants_artifact_answers_like_a_missing_one(
        self, client: TestClient, factory: Factory, world: World, run: dict
    ) -> None:
        theirs = ok(
            client.post(
                f"{run_url(world.other_experiment, world.other_run)}/artifacts",
                files={"file": ("secret.txt", b"secret")},
                headers=world.outsider.headers,
            ),
            201,
        )
        ours = run_url(run["experiment_id"], run["id"])
        # their artifact id through our run, and through their own run
        for path in (
            f"{ours}/artifacts/{theirs['id']}/download",
            f"{run_url(world.other_experiment, world.other_run)}/artifacts/{theirs['id']}/download",
        ):
            foreign = client.get(path, headers=world.admin.headers)
            missing = client.get(
                path.replace(theirs["id"], "artifact_missing").replace(world.other_experiment, "exp_missing"),
                headers=world.admin.headers,
            )
            assert foreign.status_code == missing.status_code == 404
            assert error_of(foreign) == error_of(missing)
        # and no upload into their run
        assert (
            upload(
                client, {"experiment_id": world.other_experiment, "id": world.other_run}, world.admin.headers
            ).status_code
            == 404
        )
        assert len([p for p in files_in(factory) if ".tmp" not in p.parts]) == 1
