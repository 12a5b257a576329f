from __future__ import annotations

import bz2
import gzip
import hashlib
import io
import lzma
import pickle
import random
import zipfile
import zlib
from collections.abc import Callable, Iterator
from concurrent.futures import ThreadPoolExecutor
from pathlib import Path

import numpy as np
import pytest
import skops.io as sio
import xgboost
from fastapi.testclient import TestClient
from skl2onnx import to_onnx
from sklearn.linear_model import LinearRegression
from sqlalchemy import func, select

from maestro.app import create_app
from maestro.config import Settings
from maestro.registry.models import ModelVersion, StageTransition
from maestro.runtimes.formats import ModelFormat, detect_format
from tests.factories import Factory, World, api_key_headers
from tests.registry.conftest import (
    add_version,
    new_model,
    new_version,
    outbox,
    stored_files,
    upload,
)
from tests.runtimes import crafted

VERSION_FIELDS = {
    "id",
    "model_id",
    "version",
    "stage",
    "description",
    "model_file_path",
    "model_size_bytes",
    "sha256",
    "format",
    "trusted",
    "performance_metrics",
    "training_metrics",
    "model_schema",
    "requirements",
    "load_check",
    "created_by",
    "created_at",
}


# --- real small files of each format --------------------------------------------------------
def a_pickle() -> bytes:
    return pickle.dumps({"weights": [0.1, 0.2], "bias": 0.5}, protocol=4)


def a_joblib() -> bytes:
    # joblib names its array wrapper class in the pickle stream
    return pickle.dumps({"joblib.numpy_pickle.NumpyArrayWrapper": [1, 2, 3]}, protocol=4)


# Uploads are loaded before they are kept, so the files of loadable formats are real models.
def _regression() -> LinearRegression:
    rows = np.arange(12, dtype=float).reshape(6, 2)
    return LinearRegression().fit(rows, rows.sum(axis=1))


def a_skops() -> bytes:
    return sio.dumps(_regression())


def an_onnx() -> bytes:
    return to_onnx(_regression(), np.zeros((1, 2), dtype=np.float32)).SerializeToString()


def an_xgboost() -> bytes:
    rows = np.arange(40, dtype=float).reshape(20, 2)
    model = xgboost.XGBRegressor(n_estimators=2, max_depth=2, n_jobs=1).fit(rows, rows[:, 0])
    return bytes(model.get_booster().save_raw(raw_format="json"))


def a_lightgbm() -> bytes:
    return crafted.lightgbm_text().encode()


def random_bytes() -> bytes:
    return random.Random(7).randbytes(4096)


class Payload:
    """Unpickling this would create ``path``: it must never happen."""

    def __init__(self, path: Path) -> None:
        self.path = path

    def __reduce__(self) -> tuple[Callable[..., object], tuple[str, str]]:
        return (open, (str(self.path), "w"))


class TestFormatDetection:
    @pytest.mark.parametrize(
        ("content", "expected"),
        [
            (a_pickle, ModelFormat.pickle),
            (a_joblib, ModelFormat.joblib),
            (lambda: zlib.compress(a_pickle()), ModelFormat.joblib),
            (lambda: gzip.compress(a_pickle()), ModelFormat.joblib),
            (lambda: bz2.compress(a_pickle()), ModelFormat.joblib),
            (lambda: lzma.compress(a_pickle()), ModelFormat.joblib),
            (a_skops, ModelFormat.skops),
            (an_onnx, ModelFormat.onnx),
            (an_xgboost, ModelFormat.xgboost_json),
            (a_lightgbm, ModelFormat.lightgbm_txt),
            (random_bytes, ModelFormat.other),
            (lambda: pickle.dumps({"a": 1}, protocol=0), ModelFormat.other),
            (lambda: b'{"version": [2, 0], "learner": {}}', ModelFormat.other),
            (lambda: an_onnx()[:-1], ModelFormat.other),  # truncated: the walk misses the end
            (lambda: b"\x08\x08" + b"\xff" * 20, ModelFormat.other),
            (lambda: zlib.compress(b"plain text, no pickle"), ModelFormat.other),
        ],
    )
    def test_recognises_formats_from_bytes(self, content: Callable[[], bytes], expected: ModelFormat) -> None:
        data = content()
        assert detect_format(data[:4096], io.BytesIO(data), len(data)) == expected

    def test_a_zip_without_schema_is_other(self) -> None:
        buffer = io.BytesIO()
        with zipfile.ZipFile(buffer, "w") as archive:
            archive.writestr("model.pkl", a_pickle())
        data = buffer.getvalue()
        assert detect_format(data[:4096], io.BytesIO(data), len(data)) == ModelFormat.other

    @pytest.mark.parametrize(
        ("content", "expected"),
        [
            (a_pickle, "pickle"),
            (a_skops, "skops"),
            (an_onnx, "onnx"),
            (an_xgboost, "xgboost-json"),
            (a_lightgbm, "lightgbm-txt"),
            (random_bytes, "other"),
        ],
    )
    def test_uploads_record_the_detected_format(
        self, client: TestClient, world: World, content: Callable[[], bytes], expected: str
    ) -> None:
        model = new_model(client, world.project, world.developer.headers)
        data = content()
        version = new_version(
            client, model["id"], world.developer.headers, content=data, filename="model.onnx"
        )
        assert version["format"] == expected
        assert version["model_size_bytes"] == len(data)
        assert version["sha256"] == hashlib.sha256(data).hexdigest()
        assert version["trusted"] is False

    def test_a_claimed_format_must_match_the_bytes(self, client: TestClient, world: World, app) -> None:
        model = new_model(client, world.project, world.developer.headers)
        root = Path(app.state.store.root)
        before = stored_files(root)
        response = upload(client, model["id"], world.developer.headers, content=a_pickle(), format="onnx")
        assert response.status_code == 422
        assert response.json()["error"]["details"][0]["field"] == "format"
        assert stored_files(root) == before
        ok = upload(client, model["id"], world.developer.headers, content=an_onnx(), format="onnx")
        assert ok.status_code == 201, ok.text


class TestCreateVersion:
    def test_uploads_a_version_with_the_spec_shape(
        self, client: TestClient, factory: Factory, world: World
    ) -> None:
        model = new_model(client, world.project, world.developer.headers)
        response = upload(
            client,
            model["id"],
            world.developer.headers,
            content=a_pickle(),
            version="1.3.0",
            stage="staging",
            description="Improved feature engineering",
            performance_metrics={"accuracy": 0.951},
            training_metrics={"epochs": 100},
            model_schema={"inputs": [{"name": "amount", "type": "float"}]},
            requirements="scikit-learn==1.3.0\npandas==2.0.0",
        )
        assert response.status_code == 201, response.text
        data = response.json()["data"]
        assert set(data) == VERSION_FIELDS
        assert data["version"] == "1.3.0"
        assert data["stage"] == "staging"
        assert data["performance_metrics"] == {"accuracy": 0.951}
        assert data["training_metrics"] == {"epochs": 100}
        assert data["model_schema"] == {"inputs": [{"name": "amount", "type": "float"}]}
        assert data["requirements"] == "scikit-learn==1.3.0\npandas==2.0.0"
        assert data["created_by"]["id"] == world.developer.user_id
        assert data["format"] == "pickle"
        events = [e for e in outbox(factory) if e.type == "model.version.created"]
        assert [e.payload["version"] for e in events] == ["1.3.0"]
        with factory.database.session(write=False) as session:
            history = session.scalars(select(StageTransition).where(StageTransition.version_id == data["id"]))
            assert [(t.from_stage, t.to_stage) for t in history] == [(None, "staging")]

    def test_versions_are_assigned_when_omitted(self, client: TestClient, world: World) -> None:
        model = new_model(client, world.project, world.developer.headers)
        assert new_version(client, model["id"], world.developer.headers)["version"] == "1.0.0"
        assert new_version(client, model["id"], world.developer.headers)["version"] == "1.0.1"
        new_version(client, model["id"], world.developer.headers, version="2.4.0-rc.1")
        assert new_version(client, model["id"], world.developer.headers, version="")["version"] == "2.4.1"

    def test_concurrent_uploads_each_get_their_own_version(self, client: TestClient, world: World) -> None:
        model = new_model(client, world.project, world.developer.headers)
        with ThreadPoolExecutor(max_workers=6) as pool:
            responses = list(
                pool.map(
                    lambda n: upload(client, model["id"], world.developer.headers, content=b"m%d" % n),
                    range(6),
                )
            )
        assert [response.status_code for response in responses] == [201] * 6
        versions = sorted(response.json()["data"]["version"] for response in responses)
        assert versions == [f"1.0.{n}" for n in range(6)]

    def test_duplicate_version_is_a_conflict_and_leaves_no_file(
        self, client: TestClient, world: World, app
    ) -> None:
        model = new_model(client, world.project, world.developer.headers)
        new_version(client, model["id"], world.developer.headers, version="1.0.0")
        root = Path(app.state.store.root)
        before = stored_files(root)
        response = upload(client, model["id"], world.developer.headers, version="1.0.0")
        assert response.status_code == 409
        assert stored_files(root) == before

    def test_api_key_with_models_write(self, client: TestClient, factory: Factory, world: World) -> None:
        model = new_model(client, world.project, world.developer.headers)
        key = factory.api_key(world.org, {"models": ["write"]})
        data = new_version(client, model["id"], api_key_headers(key))
        assert data["created_by"]["kind"] == "api_key"
        assert data["created_by"]["prefix"] == key[: len(data["created_by"]["prefix"])]

    def test_viewer_cannot_upload(self, client: TestClient, factory: Factory, world: World, app) -> None:
        model = new_model(client, world.project, world.developer.headers)
        root = Path(app.state.store.root)
        before = stored_files(root)
        assert upload(client, model["id"], world.viewer.headers).status_code == 403
        read_only = factory.api_key(world.org, {"models": ["read"]})
        assert upload(client, model["id"], api_key_headers(read_only)).status_code == 403
        assert stored_files(root) == before

    def test_anonymous(self, client: TestClient, world: World) -> None:
        model = new_model(client, world.project, world.developer.headers)
        assert upload(client, model["id"], {}).status_code == 401

    def test_other_organization(self, client: TestClient, world: World) -> None:
        model = new_model(client, world.project, world.developer.headers)
        assert upload(client, model["id"], world.outsider.headers).status_code == 404
        assert upload(client, "model_missing", world.admin.headers).status_code == 404

    @pytest.mark.parametrize(
        ("fields", "field"),
        [
            ({"version": "1.0"}, "version"),
            ({"version": "v1.0.0"}, "version"),
            ({"version": "01.0.0"}, "version"),
            ({"version": "1.0.0/../x"}, "version"),
            ({"stage": "live"}, "stage"),
            ({"performance_metrics": "{not json"}, "performance_metrics"),
            ({"training_metrics": "[1, 2]"}, "training_metrics"),
            ({"model_schema": "nan-sense"}, "model_schema"),
            ({"performance_metrics": '{"accuracy": NaN}'}, "performance_metrics"),
            ({"training_metrics": '{"loss": [1.0, Infinity]}'}, "training_metrics"),
            ({"model_schema": '{"inputs": [{"max": -Infinity}]}'}, "model_schema"),
            ({"performance_metrics": "[" * 100_000 + "]" * 100_000}, "performance_metrics"),
            ({"description": "d" * 2001}, "description"),
            ({"organization_id": "org_x"}, "organization_id"),
            ({"trusted": "true"}, "trusted"),
        ],
    )
    def test_malformed_fields(
        self, client: TestClient, world: World, app, fields: dict[str, str], field: str
    ) -> None:
        model = new_model(client, world.project, world.developer.headers)
        root = Path(app.state.store.root)
        before = stored_files(root)
        response = upload(client, model["id"], world.developer.headers, **fields)
        assert response.status_code == 422, response.text
        assert field in [detail["field"] for detail in response.json()["error"]["details"]]
        assert stored_files(root) == before

    def test_missing_or_empty_file_and_wrong_content_type(self, client: TestClient, world: World) -> None:
        model = new_model(client, world.project, world.developer.headers)
        url = f"/api/v1/models/{model['id']}/versions"
        headers = world.developer.headers
        assert (
            client.post(url, data={"version": "1.0.0"}, files={"x": ("a", b"b")}, headers=headers).status_code
            == 422
        )
        empty = client.post(url, files={"model_file": ("a", b"")}, headers=headers)
        assert empty.status_code == 422
        assert client.post(url, json={"version": "1.0.0"}, headers=headers).status_code == 415
        garbage = client.post(
            url,
            content=b"--b\r\nnonsense",
            headers={**headers, "Content-Type": "multipart/form-data; boundary=b"},
        )
        assert garbage.status_code == 422
        two = client.post(
            url, files=[("model_file", ("a", b"1")), ("model_file", ("b", b"2"))], headers=headers
        )
        assert two.status_code == 422

    def test_client_file_name_never_becomes_a_path(self, client: TestClient, world: World, app) -> None:
        model = new_model(client, world.project, world.developer.headers)
        root = Path(app.state.store.root)
        for name in ("../../x", "..\\..\\x", "a\x01b", "n" * 300, "/etc/passwd"):
            data = new_version(client, model["id"], world.developer.headers, filename=name)
            key = data["model_file_path"]
            assert ".." not in key and key.rsplit("/", 1)[-1] != "x" and "passwd" not in key
            assert key.startswith("models/")
            assert (root / key).resolve().is_relative_to(root.resolve())
        assert not (root.parent / "x").exists() and not (root.parent.parent / "x").exists()
        assert not any(path.name == "x" for path in root.parent.parent.rglob("x"))


class TestUploadLimit:
    @pytest.fixture
    def small(self, make_settings: Callable[..., Settings]) -> Iterator[tuple[TestClient, Factory, Path]]:
        app = create_app(make_settings(max_model_bytes=1024))
        with TestClient(app, raise_server_exceptions=False) as client:
            yield client, Factory(app), Path(app.state.store.root)

    def _rows(self, factory: Factory) -> int:
        with factory.database.session(write=False) as session:
            return session.scalar(select(func.count(ModelVersion.id))) or 0

    def test_over_the_limit_is_413_and_leaves_nothing(self, small: tuple[TestClient, Factory, Path]) -> None:
        client, factory, root = small
        org = factory.organization()
        admin = factory.user(org, "admin")
        project = factory.project(org, admin, "organization")
        model = new_model(client, project, admin.headers)
        assert upload(client, model["id"], admin.headers, content=b"x" * 1024).status_code == 201
        before = stored_files(root)
        response = upload(client, model["id"], admin.headers, content=b"x" * 1025)
        assert response.status_code == 413
        assert response.json()["error"]["code"] == "PAYLOAD_TOO_LARGE"
        assert stored_files(root) == before
        assert self._rows(factory) == 1

    def test_a_chunked_body_is_cut_off_as_it_streams(self, small: tuple[TestClient, Factory, Path]) -> None:
        client, factory, root = small
        org = factory.organization()
        admin = factory.user(org, "admin")
        model = new_model(client, factory.project(org, admin, "organization"), admin.headers)
        sent = 0

        def body() -> Iterator[bytes]:
            nonlocal sent
            yield b'--bnd\r\nContent-Disposition: form-data; name="model_file"; filename="m"\r\n\r\n'
            for _ in range(2000):  # 128 MB if it were all read
                sent += 1
                yield b"y" * 65536
            yield b"\r\n--bnd--\r\n"

        response = client.post(
            f"/api/v1/models/{model['id']}/versions",
            content=body(),
            headers={**admin.headers, "Content-Type": "multipart/form-data; boundary=bnd"},
        )
        assert response.status_code == 413
        assert stored_files(root) == []
        assert self._rows(factory) == 0


class TestListVersions:
    def test_lists_newest_first_with_pagination(self, client: TestClient, world: World) -> None:
        model = new_model(client, world.project, world.developer.headers)
        for _ in range(3):
            new_version(client, model["id"], world.developer.headers)
        url = f"/api/v1/models/{model['id']}/versions"
        body = client.get(url, headers=world.viewer.headers).json()
        assert [v["version"] for v in body["data"]] == ["1.0.2", "1.0.1", "1.0.0"]
        assert set(body["data"][0]) == VERSION_FIELDS
        first = client.get(url, params={"limit": 2}, headers=world.viewer.headers).json()
        assert [v["version"] for v in first["data"]] == ["1.0.2", "1.0.1"]

    def test_other_organization_anonymous_and_malformed(self, client: TestClient, world: World) -> None:
        model = new_model(client, world.project, world.developer.headers)
        url = f"/api/v1/models/{model['id']}/versions"
        assert client.get(url, headers=world.outsider.headers).status_code == 404
        assert client.get(url).status_code == 401
        assert client.get(url, params={"limit": 1000}, headers=world.viewer.headers).status_code == 422
        assert client.get(url, headers=world.viewer.headers).status_code == 200


class TestGetVersion:
    def test_get_by_version(self, client: TestClient, world: World) -> None:
        model = new_model(client, world.project, world.developer.headers)
        created = new_version(client, model["id"], world.developer.headers, version="1.2.0")
        response = client.get(f"/api/v1/models/{model['id']}/versions/1.2.0", headers=world.viewer.headers)
        assert response.status_code == 200
        assert response.json()["data"] == created

    def test_errors(self, client: TestClient, world: World, factory: Factory) -> None:
        model = new_model(client, world.project, world.developer.headers)
        new_version(client, model["id"], world.developer.headers, version="1.2.0")
        base = f"/api/v1/models/{model['id']}/versions"
        assert client.get(f"{base}/1.2.0", headers=world.outsider.headers).status_code == 404
        assert client.get(f"{base}/9.9.9", headers=world.viewer.headers).status_code == 404
        assert client.get(f"{base}/1.2.0").status_code == 401
        # Not a version: 422; a path that leaves the route: 404, or 307 where the router
        # redirects the doubly encoded one (to a path that answers 404).
        for bad, status in (("1.2", 422), ("1.2.0;x", 422), ("%2e%2e%2fx", 404), ("%252e%252e%252f", 307)):
            response = client.get(f"{base}/{bad}", headers=world.viewer.headers, follow_redirects=False)
            assert response.status_code == status, bad
        assert client.get(f"{base}/latest", headers=world.viewer.headers).status_code == 422
        other_model = new_model(client, world.other_project, world.outsider.headers)
        add_version(factory, other_model, world.other_org, "1.0.0")
        other = f"/api/v1/models/{other_model['id']}/versions/1.0.0"
        assert client.get(other, headers=world.admin.headers).status_code == 404


class TestDownloadVersion:
    def test_download_returns_the_exact_bytes(self, client: TestClient, world: World) -> None:
        model = new_model(client, world.project, world.developer.headers)
        data = random.Random(3).randbytes(3 * 1024 * 1024 + 17)
        new_version(client, model["id"], world.developer.headers, content=data, filename='../"evil".pkl')
        response = client.get(
            f"/api/v1/models/{model['id']}/versions/1.0.0/file", headers=world.viewer.headers
        )
        assert response.status_code == 200
        assert response.content == data
        assert response.headers["content-type"] == "application/octet-stream"
        assert response.headers["content-disposition"] == f'attachment; filename="{model["id"]}-1.0.0.bin"'

    def test_errors(self, client: TestClient, world: World, factory: Factory) -> None:
        model = new_model(client, world.project, world.developer.headers)
        new_version(client, model["id"], world.developer.headers)
        url = f"/api/v1/models/{model['id']}/versions/1.0.0/file"
        assert client.get(url, headers=world.outsider.headers).status_code == 404
        assert client.get(url).status_code == 401
        assert (
            client.get(
                f"/api/v1/models/{model['id']}/versions/x/file", headers=world.viewer.headers
            ).status_code
            == 422
        )
        without_file = add_version(factory, model, world.org, "2.0.0")
        assert without_file
        missing = client.get(
            f"/api/v1/models/{model['id']}/versions/2.0.0/file", headers=world.viewer.headers
        )
        assert missing.status_code == 404


class TestPicklePayload:
    def test_a_pickle_payload_is_stored_and_never_executed(
        self, client: TestClient, world: World, tmp_path: Path
    ) -> None:
        marker = tmp_path / "pwned"
        payload = pickle.dumps(Payload(marker), protocol=4)
        model = new_model(client, world.project, world.developer.headers)
        data = new_version(
            client, model["id"], world.developer.headers, content=payload, filename="model.pkl"
        )
        assert data["format"] == "pickle" and data["trusted"] is False
        base = f"/api/v1/models/{model['id']}"
        headers = world.admin.headers
        assert client.get(f"{base}/versions", headers=headers).status_code == 200
        assert client.get(f"{base}/versions/1.0.0", headers=headers).status_code == 200
        assert client.get(f"{base}/versions/1.0.0/file", headers=headers).content == payload
        assert client.get(base, headers=headers).status_code == 200
        assert (
            client.put(
                f"{base}/versions/1.0.0/stage", json={"stage": "production"}, headers=headers
            ).status_code
            == 200
        )
        assert (
            client.put(f"{base}/versions/1.0.0/trusted", json={"trusted": True}, headers=headers).status_code
            == 200
        )
        assert not marker.exists()


class TestDeleteVersion:
    def test_deletes_the_row_and_then_the_file(self, client: TestClient, world: World, app) -> None:
        model = new_model(client, world.project, world.developer.headers)
        data = new_version(client, model["id"], world.developer.headers)
        root = Path(app.state.store.root)
        assert (root / data["model_file_path"]).exists()
        url = f"/api/v1/models/{model['id']}/versions/1.0.0"
        assert client.delete(url, headers=world.viewer.headers).status_code == 403
        assert client.delete(url, headers=world.outsider.headers).status_code == 404
        assert client.delete(url).status_code == 401
        assert (
            client.delete(
                f"/api/v1/models/{model['id']}/versions/1..0", headers=world.admin.headers
            ).status_code
            == 422
        )
        assert (root / data["model_file_path"]).exists()
        assert client.delete(url, headers=world.developer.headers).status_code == 204
        assert not (root / data["model_file_path"]).exists()
        assert client.get(url, headers=world.viewer.headers).status_code == 404
        assert client.delete(url, headers=world.developer.headers).status_code == 404
