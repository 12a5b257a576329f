from __future__ import annotations

from collections.abc import Callable

from fastapi.testclient import TestClient

from maestro import __version__
from maestro.app import create_app
from maestro.config import Settings

CLOSED_PORT = 1  # nothing listens on 127.0.0.1:1


class TestServerInfo:
    def test_root_names_the_server(self, client: TestClient) -> None:
        body = client.get("/").json()
        assert body == {
            "name": "Maestro",
            "version": __version__,
            "docs_url": "/docs",
            "openapi_url": "/api/v1/openapi.json",
        }


class TestLiveness:
    def test_healthy_with_version(self, client: TestClient) -> None:
        response = client.get("/health")
        assert response.status_code == 200
        assert response.json()["status"] == "healthy"
        assert response.json()["version"] == __version__

    def test_liveness_ignores_dependencies(self, make_settings: Callable[..., Settings]) -> None:
        """A slow or broken database must not make the load balancer kill the process."""
        settings = make_settings(redis_url=f"redis://127.0.0.1:{CLOSED_PORT}/0")
        with TestClient(create_app(settings)) as client:
            assert client.get("/health").status_code == 200


class TestReadiness:
    def test_all_dependencies_up(self, client: TestClient, settings: Settings) -> None:
        response = client.get("/api/v1/health")
        assert response.status_code == 200
        data = response.json()["data"]
        assert data["status"] == "healthy"
        assert set(data["checks"]) == {"database", "storage", "queue", "deployments"}
        for check in data["checks"].values():
            assert check["status"] == "up"
            assert check["latency_ms"] >= 0
        expected_backend = "sqlite" if settings.uses_embedded_database else "postgresql"
        assert data["checks"]["database"]["backend"] == expected_backend
        assert data["checks"]["queue"]["detail"] == "0 pending"

    def test_unreachable_queue_is_503_naming_it(self, make_settings: Callable[..., Settings]) -> None:
        settings = make_settings(redis_url=f"redis://127.0.0.1:{CLOSED_PORT}/0")
        with TestClient(create_app(settings)) as client:
            response = client.get("/api/v1/health")
        assert response.status_code == 503
        body = response.json()
        assert body["error"]["code"] == "SERVICE_UNAVAILABLE"
        assert [d["field"] for d in body["error"]["details"]] == ["queue"]
        assert "queue" in body["error"]["message"]

    def test_unreachable_database_is_503_naming_it(self, make_settings: Callable[..., Settings]) -> None:
        settings = make_settings(database_url=f"postgresql+psycopg://nobody@127.0.0.1:{CLOSED_PORT}/none")
        with TestClient(create_app(settings)) as client:
            response = client.get("/api/v1/health")
        assert response.status_code == 503
        assert [d["field"] for d in response.json()["error"]["details"]] == ["database"]

    def test_redis_queue_is_checked_when_configured(
        self, make_settings: Callable[..., Settings], redis_url: str
    ) -> None:
        with TestClient(create_app(make_settings(redis_url=redis_url))) as client:
            data = client.get("/api/v1/health").json()["data"]
        assert data["checks"]["queue"] == {**data["checks"]["queue"], "status": "up", "backend": "redis"}
