from __future__ import annotations

import logging
import re
import stat
import threading
from concurrent.futures import ThreadPoolExecutor
from pathlib import Path

import pytest
from pydantic import ValidationError

from maestro.config import DEFAULT_SECRET_KEY, SecretKeyUnavailable, Settings, generate_secret_key

README = Path(__file__).resolve().parents[1] / "README.md"


def make(**values: object) -> Settings:
    return Settings(_env_file=None, **values)  # type: ignore[call-arg]


class TestProductionSafety:
    @pytest.mark.parametrize("environment", ["development", "production"])
    def test_the_published_key_is_refused_outside_the_test_suite(self, environment: str) -> None:
        with pytest.raises(ValidationError, match="published development key"):
            make(environment=environment, secret_key=DEFAULT_SECRET_KEY)

    def test_the_test_suite_may_use_the_published_key(self) -> None:
        assert make(environment="test", secret_key=DEFAULT_SECRET_KEY).signing_key == DEFAULT_SECRET_KEY

    def test_production_refuses_a_short_secret_key(self) -> None:
        with pytest.raises(ValidationError, match="at least 32 characters"):
            make(environment="production", secret_key="short-but-not-default")

    def test_a_short_key_is_only_warned_about_elsewhere(self, caplog: pytest.LogCaptureFixture) -> None:
        with caplog.at_level(logging.WARNING, logger="maestro.config"):
            assert make(secret_key="short-but-not-default").signing_key == "short-but-not-default"
        assert "fewer than 32 characters" in caplog.text

    def test_production_accepts_a_generated_key(self) -> None:
        settings = make(environment="production", secret_key=generate_secret_key())
        assert settings.secret_key != DEFAULT_SECRET_KEY

    def test_heartbeat_timeout_must_exceed_interval(self) -> None:
        with pytest.raises(ValidationError, match="HEARTBEAT_TIMEOUT"):
            make(job_heartbeat_interval=10, job_heartbeat_timeout=5)


class TestSecretKeyFile:
    def test_without_a_key_one_is_generated_in_the_data_dir(self, tmp_path: Path) -> None:
        settings = make(data_dir=tmp_path / "data")
        key = settings.signing_key
        path = tmp_path / "data" / "secret_key"
        assert len(key) >= 32 and key != DEFAULT_SECRET_KEY
        assert path.read_text().strip() == key
        assert stat.S_IMODE(path.stat().st_mode) == 0o600
        assert [p.name for p in path.parent.iterdir()] == ["secret_key"]  # no scratch file left behind

    def test_every_later_start_reads_the_same_key(self, tmp_path: Path) -> None:
        first = make(data_dir=tmp_path).signing_key
        assert make(data_dir=tmp_path, environment="production").signing_key == first

    def test_an_empty_key_setting_means_no_key(self, tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> None:
        monkeypatch.setenv("MAESTRO_SECRET_KEY", "  ")
        settings = make(data_dir=tmp_path)
        assert settings.secret_key is None
        assert settings.signing_key == (tmp_path / "secret_key").read_text().strip()

    def test_a_configured_key_is_used_and_no_file_written(self, tmp_path: Path) -> None:
        key = generate_secret_key()
        assert make(data_dir=tmp_path, secret_key=key).signing_key == key
        assert not (tmp_path / "secret_key").exists()

    def test_concurrent_first_starts_end_with_one_key(self, tmp_path: Path) -> None:
        """Threads released together, each with its own Settings, as processes of one
        installation starting at once (tests/identity/test_secret_key.py does it with
        processes)."""
        barrier = threading.Barrier(8)

        def start() -> str:
            settings = make(data_dir=tmp_path)
            barrier.wait()
            return settings.signing_key

        with ThreadPoolExecutor(8) as pool:
            keys = set(pool.map(lambda _: start(), range(8)))
        assert keys == {(tmp_path / "secret_key").read_text().strip()}
        assert [p.name for p in tmp_path.iterdir()] == ["secret_key"]

    def test_a_data_dir_that_cannot_hold_the_key_is_a_clear_error(self, tmp_path: Path) -> None:
        blocker = tmp_path / "not-a-directory"
        blocker.write_text("")
        with pytest.raises(SecretKeyUnavailable, match="set MAESTRO_SECRET_KEY"):
            make(data_dir=blocker / "data").signing_key  # noqa: B018

    def test_a_damaged_key_file_is_refused_not_used(self, tmp_path: Path) -> None:
        (tmp_path / "secret_key").write_text("short\n")
        with pytest.raises(SecretKeyUnavailable, match="no usable key"):
            make(data_dir=tmp_path).signing_key  # noqa: B018

    def test_a_key_file_others_can_read_is_warned_about(
        self, tmp_path: Path, caplog: pytest.LogCaptureFixture
    ) -> None:
        path = tmp_path / "secret_key"
        path.write_text(generate_secret_key())
        path.chmod(0o644)
        with caplog.at_level(logging.WARNING, logger="maestro.config"):
            make(data_dir=tmp_path).signing_key  # noqa: B018
        assert "chmod 600" in caplog.text


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
