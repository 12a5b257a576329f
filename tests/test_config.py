from __future__ import annotations

import re
from pathlib import Path

import pytest
from pydantic import ValidationError

from maestro.config import DEFAULT_SECRET_KEY, Settings, generate_secret_key

README = Path(__file__).resolve().parents[1] / "README.md"


def make(**values: object) -> Settings:
    return Settings(_env_file=None, **values)  # type: ignore[call-arg]


class TestProductionSafety:
    def test_production_refuses_the_builtin_secret_key(self) -> None:
        with pytest.raises(ValidationError, match="MAESTRO_SECRET_KEY must be set"):
            make(environment="production")

    def test_production_refuses_a_short_secret_key(self) -> None:
        with pytest.raises(ValidationError, match="at least 32 characters"):
            make(environment="production", secret_key="short-but-not-default")

    def test_production_accepts_a_generated_key(self) -> None:
        settings = make(environment="production", secret_key=generate_secret_key())
        assert settings.secret_key != DEFAULT_SECRET_KEY

    def test_development_runs_on_the_default_key(self) -> None:
        assert make().secret_key == DEFAULT_SECRET_KEY

    def test_heartbeat_timeout_must_exceed_interval(self) -> None:
        with pytest.raises(ValidationError, match="HEARTBEAT_TIMEOUT"):
            make(job_heartbeat_interval=10, job_heartbeat_timeout=5)


class TestEnvironment:
    def test_values_come_from_prefixed_environment(self, monkeypatch: pytest.MonkeyPatch) -> None:
        monkeypatch.setenv("MAESTRO_PORT", "9123")
        monkeypatch.setenv("MAESTRO_CORS_ORIGINS", "https://a.example, https://b.example")
        settings = make()
        assert settings.port == 9123
        assert settings.cors_origins == ["https://a.example", "https://b.example"]

    def test_dotenv_file_is_read(self, tmp_path: Path) -> None:
        env_file = tmp_path / ".env"
        env_file.write_text("MAESTRO_WORKERS=3\nMAESTRO_LOG_LEVEL=debug\n")
        settings = Settings(_env_file=env_file)  # type: ignore[call-arg]
        assert settings.workers == 3
        assert settings.log_level == "DEBUG"

    def test_unknown_log_level_is_refused(self) -> None:
        with pytest.raises(ValidationError, match="log_level"):
            make(log_level="LOUD")


class TestDerivedLocations:
    def test_embedded_defaults_live_under_the_data_dir(self, tmp_path: Path) -> None:
        settings = make(data_dir=tmp_path)
        assert settings.resolved_database_url == f"sqlite:///{tmp_path / 'maestro.db'}"
        assert settings.uses_embedded_database
        assert settings.resolved_storage_url == str(tmp_path / "artifacts")
        assert settings.queue_file == tmp_path / "queue.db"

    @pytest.mark.parametrize("scheme", ["postgresql", "postgres"])
    def test_plain_postgres_urls_use_psycopg3(self, scheme: str) -> None:
        settings = make(database_url=f"{scheme}://u@db.example:5432/maestro")
        assert settings.resolved_database_url == "postgresql+psycopg://u@db.example:5432/maestro"
        assert not settings.uses_embedded_database


def test_readme_documents_every_setting() -> None:
    """Every knob is documented where users look first."""
    text = README.read_text()
    missing = [name for name in Settings.model_fields if f"MAESTRO_{name.upper()}" not in text]
    assert not missing, f"README.md lacks {missing}"
    assert re.search(r"make serve", text)
    assert re.search(r"make test", text)
