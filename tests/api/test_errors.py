"""Every error, whoever raises it, reaches the client in the platform's shape."""

from __future__ import annotations

import logging

import pytest
from fastapi import FastAPI
from fastapi.testclient import TestClient
from pydantic import BaseModel, Field

from maestro.api.errors import error_responses
from maestro.errors import Conflict


class Item(BaseModel):
    name: str = Field(min_length=1, max_length=10)
    count: int


@pytest.fixture
def app(app: FastAPI) -> FastAPI:
    """The real app with a few extra routes that fail in the ways routes can fail."""

    @app.post("/_test/items", tags=["test"], responses=error_responses(409, 422))
    def create_item(item: Item) -> Item:
        if item.name == "taken":
            raise Conflict("An item with this name exists", details=[("name", "already used")])
        return item

    @app.get("/_test/crash", tags=["test"])
    def crash() -> dict[str, str]:
        raise RuntimeError("secret internal detail /etc/passwd")

    return app


def assert_error_shape(body: dict, code: str) -> None:
    assert body["success"] is False
    assert body["error"]["code"] == code
    assert isinstance(body["error"]["message"], str) and body["error"]["message"]
    assert isinstance(body["error"]["details"], list)
    assert body["metadata"]["request_id"].startswith("req_")
    assert body["metadata"]["timestamp"].endswith("Z")


class TestErrorShape:
    def test_unknown_route_is_404_in_our_shape(self, client: TestClient) -> None:
        response = client.get("/api/v1/no-such-thing")
        assert response.status_code == 404
        assert_error_shape(response.json(), "RESOURCE_NOT_FOUND")

    def test_wrong_method_is_405_in_our_shape(self, client: TestClient) -> None:
        response = client.delete("/health")
        assert response.status_code == 405
        assert_error_shape(response.json(), "METHOD_NOT_ALLOWED")

    def test_validation_errors_name_each_field(self, client: TestClient) -> None:
        response = client.post("/_test/items", json={"name": "", "count": "many"})
        assert response.status_code == 422
        body = response.json()
        assert_error_shape(body, "VALIDATION_ERROR")
        assert {detail["field"] for detail in body["error"]["details"]} == {"name", "count"}

    def test_missing_body_field(self, client: TestClient) -> None:
        response = client.post("/_test/items", json={"name": "a"})
        assert response.status_code == 422
        assert response.json()["error"]["details"][0]["field"] == "count"

    def test_malformed_json_is_422_not_500(self, client: TestClient) -> None:
        response = client.post(
            "/_test/items", content=b'{"name": "a", ', headers={"content-type": "application/json"}
        )
        assert response.status_code == 422
        assert_error_shape(response.json(), "VALIDATION_ERROR")

    def test_service_errors_carry_code_and_details(self, client: TestClient) -> None:
        response = client.post("/_test/items", json={"name": "taken", "count": 1})
        assert response.status_code == 409
        body = response.json()
        assert_error_shape(body, "CONFLICT")
        assert body["error"]["details"] == [{"field": "name", "message": "already used"}]

    def test_unexpected_error_is_500_without_leaking_internals(
        self, client: TestClient, caplog: pytest.LogCaptureFixture
    ) -> None:
        with caplog.at_level(logging.ERROR, logger="maestro.errors"):
            response = client.get("/_test/crash")
        assert response.status_code == 500
        body = response.json()
        assert_error_shape(body, "INTERNAL_SERVER_ERROR")
        assert "secret internal detail" not in response.text
        assert "Traceback" not in response.text
        request_id = response.headers["x-request-id"]
        assert body["metadata"]["request_id"] == request_id
        assert request_id in body["error"]["message"]
        # The log line carries the same request id and the real cause.
        record = next(r for r in caplog.records if getattr(r, "request_id", None) == request_id)
        assert record.exc_info is not None


class TestRequestContext:
    def test_every_response_has_request_id_and_timing(self, client: TestClient) -> None:
        for response in (client.get("/health"), client.get("/nope"), client.get("/_test/crash")):
            assert response.headers["x-request-id"].startswith("req_")
            assert float(response.headers["x-process-time"]) >= 0

    def test_a_callers_request_id_is_echoed(self, client: TestClient) -> None:
        response = client.get("/health", headers={"X-Request-ID": "trace-42.a_b:c"})
        assert response.headers["x-request-id"] == "trace-42.a_b:c"

    @pytest.mark.parametrize("hostile", ["a b", "x" * 200, "<script>", "id\x7f"])
    def test_unsafe_request_ids_are_replaced(self, client: TestClient, hostile: str) -> None:
        response = client.get("/health", headers={"X-Request-ID": hostile})
        assert response.headers["x-request-id"].startswith("req_")

    def test_request_ids_are_unique(self, client: TestClient) -> None:
        ids = {client.get("/health").headers["x-request-id"] for _ in range(20)}
        assert len(ids) == 20


class TestCors:
    def test_no_cors_headers_by_default(self, client: TestClient) -> None:
        response = client.get("/health", headers={"Origin": "https://evil.example"})
        assert "access-control-allow-origin" not in response.headers

    def test_configured_origins_are_allowed(self, make_settings) -> None:  # type: ignore[no-untyped-def]
        from maestro.app import create_app

        app = create_app(make_settings(cors_origins=["https://ui.example"]))
        with TestClient(app) as client:
            allowed = client.options(
                "/api/v1/health",
                headers={"Origin": "https://ui.example", "Access-Control-Request-Method": "GET"},
            )
            refused = client.get("/health", headers={"Origin": "https://evil.example"})
        assert allowed.headers["access-control-allow-origin"] == "https://ui.example"
        assert "access-control-allow-origin" not in refused.headers


class TestNulCharacters:
    """PostgreSQL cannot store NUL in text; SQLite can. Either way the answer is a 422."""

    @pytest.mark.parametrize(
        "url", ["/api/v1/jobs/job_%00x", "/api/v1/jobs/job_x?cursor=%00", "/health?x=%00"]
    )
    def test_nul_in_path_or_query_is_refused(self, client: TestClient, url: str) -> None:
        response = client.get(url)
        assert response.status_code == 422
        assert_error_shape(response.json(), "VALIDATION_ERROR")
        assert response.headers["x-request-id"] == response.json()["metadata"]["request_id"]

    def test_nul_in_a_body_is_422_on_every_database(self, client: TestClient, factory) -> None:  # type: ignore[no-untyped-def]
        actor = factory.user(factory.organization())
        response = client.put("/api/v1/auth/me", headers=actor.headers, json={"first_name": "Ada\u0000"})
        assert response.status_code == 422
        assert client.get("/api/v1/auth/me", headers=actor.headers).json()["data"]["first_name"] == "User"


def test_a_body_that_is_not_utf8_is_422(client: TestClient) -> None:
    response = client.post("/_test/items", content=b"\xff\xfe", headers={"content-type": "application/json"})
    assert response.status_code == 422
    assert_error_shape(response.json(), "VALIDATION_ERROR")
