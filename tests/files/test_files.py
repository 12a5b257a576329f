"""Uploading, recognising, listing, downloading and deleting model files and datasets."""

from __future__ import annotations

import hashlib
import io
import json
import pickle
import zipfile
from collections.abc import Callable, Iterator
from pathlib import Path
from typing import Any

import polars as pl
import pytest
from fastapi.testclient import TestClient
from httpx import Response
from sqlalchemy import func, select

from maestro.app import create_app
from maestro.config import Settings
from maestro.files.models import StoredFile
from maestro.identity.models import AuditLog
from tests.factories import Factory, World, api_key_headers
from tests.registry.conftest import stored_files

CSV = b"age,income,churn\n34,52000.5,0\n51,61000,1\n"


def send(
    client: TestClient,
    kind: str,
    headers: dict[str, str],
    content: bytes = CSV,
    *,
    filename: str = "data.csv",
    content_type: str = "application/octet-stream",
    query: str = "",
    **fields: str,
) -> Response:
    """POST a file to /upload/{kind}; form fields go before the file part."""
    return client.post(
        f"/api/v1/upload/{kind}{query}",
        data=fields,
        files={"file": (filename, content, content_type)},
        headers=headers,
    )


def uploaded(client: TestClient, kind: str, headers: dict[str, str], project: str, **kwargs: Any) -> dict:
    response = send(client, kind, headers, project_id=project, **kwargs)
    assert response.status_code == 201, response.text
    return response.json()["data"]


def parquet_bytes() -> bytes:
    buffer = io.BytesIO()
    pl.DataFrame({"age": [34, 51], "churn": [0, 1]}).write_parquet(buffer)
    return buffer.getvalue()


def workbook(extra: dict[str, bytes] | None = None) -> bytes:
    """The parts of an XLSX workbook that say it is one."""
    buffer = io.BytesIO()
    with zipfile.ZipFile(buffer, "w", zipfile.ZIP_DEFLATED) as archive:
        archive.writestr("[Content_Types].xml", '<?xml version="1.0"?><Types/>')
        archive.writestr("xl/workbook.xml", '<?xml version="1.0"?><workbook/>')
        archive.writestr("xl/worksheets/sheet1.xml", '<?xml version="1.0"?><worksheet/>')
        for name, data in (extra or {}).items():
            archive.writestr(name, data)
    return buffer.getvalue()


def file_rows(factory: Factory) -> int:
    with factory.database.session(write=False) as session:
        return session.scalar(select(func.count(StoredFile.id))) or 0


class Payload:
    """Unpickling this would create ``path``: it must never happen."""

    def __init__(self, path: Path) -> None:
        self.path = path

    def __reduce__(self) -> tuple[Callable[..., object], tuple[str, str]]:
        return (open, (str(self.path), "w"))


@pytest.fixture
def root(app: Any) -> Path:
    return Path(app.state.store.root)


class TestUploadDataset:
    def test_upload_then_read_download_list_and_delete(
        self, client: TestClient, world: World, root: Path
    ) -> None:
        data = uploaded(
            client, "datasets", world.developer.headers, world.project, description="Churn sample"
        )
        assert data["id"].startswith("file_")
        assert data["kind"] == "dataset" and data["format"] == "csv"
        assert data["content_type"] == "text/csv"
        assert data["size_bytes"] == len(CSV) and data["sha256"] == hashlib.sha256(CSV).hexdigest()
        assert data["filename"] == "data.csv" and data["description"] == "Churn sample"
        assert data["project_id"] == world.project
        assert data["created_by"]["id"] == world.developer.user_id

        headers = world.viewer.headers
        assert client.get(f"/api/v1/files/{data['id']}", headers=headers).json()["data"] == data
        download = client.get(data["download_url"], headers=headers)
        assert download.status_code == 200 and download.content == CSV
        assert download.headers["content-type"].startswith("text/csv")
        assert download.headers["content-disposition"] == 'attachment; filename="data.csv"'
        assert download.headers["x-content-type-options"] == "nosniff"

        model = uploaded(client, "models", world.developer.headers, world.project, content=b"weights")
        listing = client.get(f"/api/v1/projects/{world.project}/files", headers=headers).json()
        assert [item["id"] for item in listing["data"]] == [model["id"], data["id"]]
        datasets = client.get(f"/api/v1/projects/{world.project}/files?kind=dataset", headers=headers).json()
        assert [item["id"] for item in datasets["data"]] == [data["id"]]

        assert (
            client.delete(f"/api/v1/files/{data['id']}", headers=world.developer.headers).status_code == 204
        )
        assert client.get(f"/api/v1/files/{data['id']}", headers=headers).status_code == 404
        assert client.get(data["download_url"], headers=headers).status_code == 404
        assert [path.read_bytes() for path in stored_files(root)] == [b"weights"]

    def test_project_as_a_query_parameter(self, client: TestClient, world: World) -> None:
        response = send(client, "datasets", world.developer.headers, query=f"?project_id={world.project}")
        assert response.status_code == 201, response.text
        assert response.json()["data"]["project_id"] == world.project

    def test_the_project_must_be_named_before_the_file(
        self, client: TestClient, world: World, root: Path, factory: Factory
    ) -> None:
        response = send(client, "datasets", world.developer.headers)
        assert response.status_code == 422
        assert response.json()["error"]["details"][0]["field"] == "project_id"
        boundary = "b0undary"
        body = (
            f'--{boundary}\r\nContent-Disposition: form-data; name="file"; filename="d.csv"\r\n\r\n'
            f"a,b\n1,2\n\r\n--{boundary}\r\n"
            f'Content-Disposition: form-data; name="project_id"\r\n\r\n{world.project}\r\n--{boundary}--\r\n'
        ).encode()
        late = client.post(
            "/api/v1/upload/datasets",
            content=body,
            headers={**world.developer.headers, "Content-Type": f"multipart/form-data; boundary={boundary}"},
        )
        assert late.status_code == 422
        mismatch = send(
            client,
            "datasets",
            world.developer.headers,
            query=f"?project_id={world.private}",
            project_id=world.project,
        )
        assert mismatch.status_code == 422
        assert stored_files(root) == [] and file_rows(factory) == 0

    @pytest.mark.parametrize(
        ("content", "filename", "expected"),
        [
            (CSV, "data.csv", "csv"),
            (b"age\tincome\n34\t52000\n", "data.tsv", "csv"),
            (b"\xef\xbb\xbfa;b\n1,5;2\n", "export.txt", "csv"),
            (json.dumps([{"age": 34}, {"age": 51}]).encode(), "rows.json", "json"),
            (b'{"age": 34}\n{"age": 51}\n', "rows.jsonl", "jsonl"),
            (b'{\n  "rows": [1, 2]\n}\n', "doc.json", "json"),
            (parquet_bytes(), "data.parquet", "parquet"),
            (workbook(), "book.xlsx", "xlsx"),
        ],
        ids=["csv", "tsv", "semicolon-csv", "json", "jsonl", "json-document", "parquet", "xlsx"],
    )
    def test_recognises_dataset_formats(
        self, client: TestClient, world: World, content: bytes, filename: str, expected: str
    ) -> None:
        data = uploaded(
            client, "datasets", world.developer.headers, world.project, content=content, filename=filename
        )
        assert data["format"] == expected
        download = client.get(data["download_url"], headers=world.developer.headers)
        assert download.content == content

    @pytest.mark.parametrize(
        ("content", "filename", "content_type"),
        [
            (CSV, "data.parquet", "application/octet-stream"),  # the name claims parquet
            (parquet_bytes(), "data.csv", "application/octet-stream"),  # the name claims csv
            (parquet_bytes(), "data", "text/csv"),  # the content type claims csv
            (CSV, "data", "image/png"),  # not a dataset content type at all
            (b"\x7fELF\x02\x01\x01\x00" + b"\x00" * 64, "data.bin", "application/octet-stream"),
            (b"PAR1 truncated parquet", "data.parquet", "application/octet-stream"),
            (b"PK\x03\x04 not really a zip", "book.xlsx", "application/octet-stream"),
            (workbook()[:40], "book.xlsx", "application/octet-stream"),
        ],
        ids=[
            "csv-named-parquet",
            "parquet-named-csv",
            "parquet-typed-csv",
            "csv-typed-png",
            "elf-binary",
            "truncated-parquet",
            "fake-zip-xlsx",
            "truncated-xlsx",
        ],
    )
    def test_contents_must_match_what_they_claim(
        self,
        client: TestClient,
        world: World,
        root: Path,
        factory: Factory,
        content: bytes,
        filename: str,
        content_type: str,
    ) -> None:
        response = send(
            client,
            "datasets",
            world.developer.headers,
            content,
            filename=filename,
            content_type=content_type,
            project_id=world.project,
        )
        assert response.status_code == 422, response.text
        assert response.json()["error"]["code"] == "VALIDATION_ERROR"
        assert stored_files(root) == [] and file_rows(factory) == 0

    def test_a_plain_zip_is_not_a_workbook(self, client: TestClient, world: World, root: Path) -> None:
        buffer = io.BytesIO()
        with zipfile.ZipFile(buffer, "w") as archive:
            archive.writestr("notes.txt", "hello")
        response = send(
            client,
            "datasets",
            world.developer.headers,
            buffer.getvalue(),
            filename="x.zip",
            project_id=world.project,
        )
        assert response.status_code == 422
        assert "not an Excel workbook" in response.json()["error"]["details"][0]["message"]
        assert stored_files(root) == []

    def test_a_workbook_zip_bomb_is_refused(self, client: TestClient, world: World, root: Path) -> None:
        bomb = workbook({"xl/worksheets/sheet2.xml": b"\x00" * (30 * 1024 * 1024)})
        assert len(bomb) < 100_000
        response = send(
            client, "datasets", world.developer.headers, bomb, filename="book.xlsx", project_id=world.project
        )
        assert response.status_code == 422
        assert "inflate" in response.json()["error"]["details"][0]["message"]
        assert stored_files(root) == []

    def test_a_hostile_file_name_is_metadata_only(self, client: TestClient, world: World, root: Path) -> None:
        body = (
            (
                f'--bnd\r\nContent-Disposition: form-data; name="project_id"\r\n\r\n{world.project}\r\n'
                '--bnd\r\nContent-Disposition: form-data; name="file"; filename="../../x\x07\x1b.csv"\r\n\r\n'
            ).encode()
            + CSV
            + b"\r\n--bnd--\r\n"
        )
        response = client.post(
            "/api/v1/upload/datasets",
            content=body,
            headers={**world.developer.headers, "Content-Type": "multipart/form-data; boundary=bnd"},
        )
        assert response.status_code == 201, response.text
        data = response.json()["data"]
        assert data["filename"] == "../../x.csv"
        (stored,) = stored_files(root)
        assert stored.resolve().is_relative_to(root.resolve())
        assert "x.csv" not in stored.name and ".." not in stored.relative_to(root).parts
        download = client.get(data["download_url"], headers=world.developer.headers)
        assert download.headers["content-disposition"] == 'attachment; filename="x.csv"'
        assert not (root.parent.parent / "x.csv").exists()

    def test_unicode_file_names_download_under_a_plain_name(self, client: TestClient, world: World) -> None:
        data = uploaded(client, "datasets", world.developer.headers, world.project, filename="données.csv")
        assert data["filename"] == "données.csv"
        download = client.get(data["download_url"], headers=world.developer.headers)
        assert download.headers["content-disposition"] == (
            "attachment; filename=\"donn_es.csv\"; filename*=UTF-8''donn%C3%A9es.csv"
        )

    def test_malformed_requests(self, client: TestClient, world: World, root: Path) -> None:
        headers = world.developer.headers
        as_json = client.post(f"/api/v1/upload/datasets?project_id={world.project}", json={}, headers=headers)
        assert as_json.status_code == 415
        assert as_json.json()["error"]["code"] == "UNSUPPORTED_MEDIA_TYPE"
        empty = send(client, "datasets", headers, b"", project_id=world.project)
        assert empty.status_code == 422
        unknown = send(client, "datasets", headers, project_id=world.project, stage="production")
        assert unknown.status_code == 422
        bad_id = send(client, "datasets", headers, project_id="../../etc")
        assert bad_id.status_code == 422
        control = send(client, "datasets", headers, project_id=world.project, description="a\x00b")
        assert control.status_code == 422
        assert stored_files(root) == []


class TestUploadModelFile:
    def test_model_files_are_recognised_and_served_as_bytes(self, client: TestClient, world: World) -> None:
        buffer = io.BytesIO()
        with zipfile.ZipFile(buffer, "w") as archive:
            archive.writestr("schema.json", "{}")
        data = uploaded(
            client,
            "models",
            world.developer.headers,
            world.project,
            content=buffer.getvalue(),
            filename="clf.skops",
            format="skops",
        )
        assert data["kind"] == "model" and data["format"] == "skops"
        assert data["content_type"] == "application/octet-stream"
        download = client.get(data["download_url"], headers=world.viewer.headers)
        assert download.content == buffer.getvalue()
        assert download.headers["content-type"] == "application/octet-stream"

    def test_a_pickle_payload_is_stored_and_never_executed(
        self, client: TestClient, world: World, tmp_path: Path
    ) -> None:
        marker = tmp_path / "pwned"
        payload = pickle.dumps(Payload(marker), protocol=4)
        data = uploaded(
            client, "models", world.developer.headers, world.project, content=payload, filename="model.pkl"
        )
        assert data["format"] == "pickle"
        headers = world.admin.headers
        assert client.get(f"/api/v1/files/{data['id']}", headers=headers).status_code == 200
        assert client.get(data["download_url"], headers=headers).content == payload
        assert client.get(f"/api/v1/projects/{world.project}/files", headers=headers).status_code == 200
        assert client.delete(f"/api/v1/files/{data['id']}", headers=headers).status_code == 204
        assert not marker.exists()

    @pytest.mark.parametrize(
        ("filename", "fields"),
        [
            ("model.onnx", {}),
            ("model.skops", {}),
            ("model.bin", {"format": "onnx"}),
            ("m", {"format": "nope"}),
        ],
    )
    def test_wrong_magic_for_the_claimed_format_is_422(
        self, client: TestClient, world: World, root: Path, filename: str, fields: dict[str, str]
    ) -> None:
        payload = pickle.dumps({"weights": [1, 2, 3]}, protocol=4)
        response = send(
            client,
            "models",
            world.developer.headers,
            payload,
            filename=filename,
            project_id=world.project,
            **fields,
        )
        assert response.status_code == 422, response.text
        assert stored_files(root) == []

    def test_a_joblib_file_may_be_called_pkl(self, client: TestClient, world: World) -> None:
        content = b"\x80\x04\x95" + b"joblib.numpy_pickle NumpyArrayWrapper" + b"\x00" * 32
        data = uploaded(
            client, "models", world.developer.headers, world.project, content=content, filename="m.pkl"
        )
        assert data["format"] == "joblib"

    def test_image_content_type_is_not_a_model(self, client: TestClient, world: World) -> None:
        response = send(
            client,
            "models",
            world.developer.headers,
            b"\x89PNG",
            content_type="image/png",
            project_id=world.project,
        )
        assert response.status_code == 422


class TestAccess:
    def test_viewer_cannot_upload_and_nothing_is_stored(
        self, client: TestClient, world: World, root: Path, factory: Factory
    ) -> None:
        for kind in ("datasets", "models"):
            response = send(client, kind, world.viewer.headers, project_id=world.project)
            assert response.status_code == 403
            assert response.json()["error"]["code"] == "INSUFFICIENT_PERMISSIONS"
        assert stored_files(root) == [] and file_rows(factory) == 0

    def test_a_viewer_cannot_delete(self, client: TestClient, world: World) -> None:
        data = uploaded(client, "datasets", world.developer.headers, world.project)
        assert client.delete(f"/api/v1/files/{data['id']}", headers=world.viewer.headers).status_code == 403
        assert client.get(data["download_url"], headers=world.viewer.headers).status_code == 200

    def test_anonymous(self, client: TestClient, world: World) -> None:
        assert send(client, "datasets", {}, project_id=world.project).status_code == 401
        assert client.get("/api/v1/files/file_missing").status_code == 401

    def test_another_organization_sees_nothing(
        self, client: TestClient, world: World, root: Path, factory: Factory
    ) -> None:
        data = uploaded(client, "datasets", world.developer.headers, world.project)
        outsider = world.outsider.headers
        missing = client.get("/api/v1/files/file_doesnotexist", headers=outsider)
        for response in (
            client.get(f"/api/v1/files/{data['id']}", headers=outsider),
            client.get(data["download_url"], headers=outsider),
            client.delete(f"/api/v1/files/{data['id']}", headers=outsider),
        ):
            assert response.status_code == 404
            assert response.json()["error"] == missing.json()["error"]
        assert client.get(f"/api/v1/projects/{world.project}/files", headers=outsider).status_code == 404
        refused = send(client, "datasets", outsider, project_id=world.project)
        assert refused.status_code == 404
        assert len(stored_files(root)) == 1 and file_rows(factory) == 1

    def test_a_private_project_is_invisible_to_other_members(self, client: TestClient, world: World) -> None:
        assert send(client, "datasets", world.developer.headers, project_id=world.private).status_code == 404

    def test_api_keys_need_the_files_scope(self, client: TestClient, factory: Factory, world: World) -> None:
        writer = factory.api_key(world.org, {"files": ["read", "write"]})
        reader = factory.api_key(world.org, {"files": ["read"]})
        data = uploaded(client, "datasets", api_key_headers(writer), world.project)
        assert data["created_by"] is None
        assert send(client, "datasets", api_key_headers(reader), project_id=world.project).status_code == 403
        assert client.get(data["download_url"], headers=api_key_headers(reader)).content == CSV
        assert (
            client.delete(f"/api/v1/files/{data['id']}", headers=api_key_headers(reader)).status_code == 403
        )

    def test_uploads_and_deletions_are_audited(
        self, client: TestClient, world: World, factory: Factory
    ) -> None:
        data = uploaded(client, "datasets", world.developer.headers, world.project)
        client.delete(f"/api/v1/files/{data['id']}", headers=world.developer.headers)
        with factory.database.session(write=False) as session:
            rows = session.scalars(
                select(AuditLog).where(AuditLog.resource_id == data["id"]).order_by(AuditLog.created_at)
            ).all()
        assert [row.outcome for row in rows] == ["success", "success"]
        assert rows[0].details["sha256"] == data["sha256"]


class TestUploadLimit:
    @pytest.fixture
    def small(self, make_settings: Callable[..., Settings]) -> Iterator[tuple[TestClient, Factory, Path]]:
        app = create_app(make_settings(max_dataset_bytes=1024, max_model_bytes=2048))
        with TestClient(app, raise_server_exceptions=False) as client:
            yield client, Factory(app), Path(app.state.store.root)

    def test_over_the_limit_is_413_and_leaves_nothing(self, small: tuple[TestClient, Factory, Path]) -> None:
        client, factory, root = small
        org = factory.organization()
        admin = factory.user(org, "admin")
        project = factory.project(org, admin, "organization")
        fits = b"a,b\n" + b"1,2\n" * 255
        assert len(fits) == 1024
        assert send(client, "datasets", admin.headers, fits, project_id=project).status_code == 201
        before = stored_files(root)
        response = send(client, "datasets", admin.headers, fits + b"3", project_id=project)
        assert response.status_code == 413
        assert response.json()["error"]["code"] == "PAYLOAD_TOO_LARGE"
        assert send(client, "models", admin.headers, b"m" * 2048, project_id=project).status_code == 201
        assert send(client, "models", admin.headers, b"m" * 2049, project_id=project).status_code == 413
        assert len(stored_files(root)) == len(before) + 1
        assert file_rows(factory) == 2

    def test_a_chunked_body_is_cut_off_as_it_streams(self, small: tuple[TestClient, Factory, Path]) -> None:
        client, factory, root = small
        org = factory.organization()
        admin = factory.user(org, "admin")
        project = factory.project(org, admin, "organization")

        def body() -> Iterator[bytes]:
            yield (
                f'--bnd\r\nContent-Disposition: form-data; name="project_id"\r\n\r\n{project}\r\n'
                '--bnd\r\nContent-Disposition: form-data; name="file"; filename="d.csv"\r\n\r\n'
            ).encode()
            for _ in range(2000):  # 128 MB if it were all read
                yield b"y" * 65536
            yield b"\r\n--bnd--\r\n"

        response = client.post(
            "/api/v1/upload/datasets",
            content=body(),
            headers={**admin.headers, "Content-Type": "multipart/form-data; boundary=bnd"},
        )
        assert response.status_code == 413
        assert stored_files(root) == [] and file_rows(factory) == 0
