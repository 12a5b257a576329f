"""The migration that numbers model versions numbers the versions already there per
model, in the order they were created."""

from __future__ import annotations

from pathlib import Path

from alembic import command
from sqlalchemy import create_engine, text

from maestro.migrations import alembic_config

BEFORE = "7f1b4777df49"  # the revision just before model versions had numbers


def test_existing_versions_are_numbered_in_creation_order(tmp_path: Path) -> None:
    url = f"sqlite:///{tmp_path / 'old.db'}"
    config = alembic_config(url)
    command.upgrade(config, BEFORE)
    engine = create_engine(url)
    with engine.begin() as connection:  # foreign keys are not enforced on this bare connection
        for version_id, model, version, created in (
            ("version_3", "model_a", "2.0.0", "2026-03-01"),
            ("version_1", "model_a", "1.0.0", "2026-01-01"),
            ("version_2", "model_a", "1.1.0", "2026-02-01"),
            ("version_4", "model_b", "1.0.0", "2026-01-15"),
        ):
            connection.execute(
                text(
                    "INSERT INTO model_versions (id, model_id, organization_id, version, stage, trusted, "
                    "performance_metrics, training_metrics, created_at) VALUES (:id, :model, 'org_1', "
                    ":version, 'development', 0, '{}', '{}', :created)"
                ),
                {"id": version_id, "model": model, "version": version, "created": created},
            )
    command.upgrade(config, "head")
    with engine.connect() as connection:
        numbers = connection.execute(
            text("SELECT model_id, version, number FROM model_versions ORDER BY model_id, number")
        ).all()
    engine.dispose()
    assert [tuple(row) for row in numbers] == [
        ("model_a", "1.0.0", 1),
        ("model_a", "1.1.0", 2),
        ("model_a", "2.0.0", 3),
        ("model_b", "1.0.0", 1),
    ]
