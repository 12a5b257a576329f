"""The OpenAPI document is the contract: exact enough for generated clients."""

from __future__ import annotations

import re

import yaml
from fastapi.testclient import TestClient


def operations(spec: dict) -> list[tuple[str, str, dict]]:
    return [(path, method, op) for path, item in spec["paths"].items() for method, op in item.items()]


class TestDocument:
    def test_json_and_yaml_describe_the_same_api(self, client: TestClient) -> None:
        as_json = client.get("/api/v1/openapi.json")
        as_yaml = client.get("/api/v1/openapi.yaml")
        assert as_json.status_code == as_yaml.status_code == 200
        assert as_yaml.headers["content-type"].startswith("application/yaml")
        assert yaml.safe_load(as_yaml.text) == as_json.json()

    def test_interactive_docs_are_served(self, client: TestClient) -> None:
        assert "swagger-ui" in client.get("/docs").text.lower()
        assert "redoc" in client.get("/redoc").text.lower()

    def test_every_operation_is_named_tag_colon_function(self, client: TestClient) -> None:
        spec = client.get("/api/v1/openapi.json").json()
        ids = []
        for path, method, op in operations(spec):
            assert op.get("tags"), f"{method} {path} has no tag"
            assert re.fullmatch(r"[a-z_]+:[a-z_]+", op["operationId"]), op["operationId"]
            assert op["operationId"].split(":")[0] == op["tags"][0]
            ids.append(op["operationId"])
        assert len(ids) == len(set(ids))

    def test_every_operation_documents_a_typed_success_response(self, client: TestClient) -> None:
        spec = client.get("/api/v1/openapi.json").json()
        for path, method, op in operations(spec):
            success = [code for code in op["responses"] if code.startswith("2")]
            assert success, f"{method} {path}"
            if success[0] == "204":
                assert "content" not in op["responses"]["204"], f"{method} {path}: 204 with a body"
                continue
            content = op["responses"][success[0]].get("content", {})
            # JSON everywhere, except downloads (files, PDF documents), which are documented as binary.
            schema = (
                content.get("application/json")
                or content.get("application/octet-stream")
                or content.get("application/pdf")
                or {}
            ).get("schema", {})
            assert schema.get("$ref") or schema.get("type"), f"{method} {path} has an untyped response"

    def test_documented_errors_use_the_error_shape(self, client: TestClient) -> None:
        spec = client.get("/api/v1/openapi.json").json()
        for path, method, op in operations(spec):
            for code, response in op["responses"].items():
                if code.startswith(("4", "5")):
                    ref = response["content"]["application/json"]["schema"]["$ref"]
                    assert ref == "#/components/schemas/ErrorResponse", f"{method} {path} {code}: {ref}"
        assert "HTTPValidationError" not in spec["components"]["schemas"]
