"""Deployment environment variables are write-only secrets: sealed in the database, masked
in every answer (get, list, history, rollback), absent from logs, events and audit rows;
an update that leaves them out, or sends the mask back, keeps them."""

from __future__ import annotations

import json
from datetime import UTC, datetime
from pathlib import Path
from typing import Any

import pytest
import sqlalchemy as sa
from fastapi.testclient import TestClient

from maestro.config import Settings
from maestro.deployments import service
from maestro.deployments.models import Deployment
from maestro.deployments.secrets import MASK, unseal
from maestro.migrations import upgrade
from tests.deployments.platform import SCHEMA, Tiny, onnx_file
from tests.factories import Factory, World

SECRETS = {"DB_PASSWORD": "hunter2-d0nt-leak", "STRIPE_KEY": "sk_live_1234567890abcdef"}
MASKED = dict.fromkeys(SECRETS, MASK)


def public_model(client: TestClient, factory: Factory, world: World, tiny: Tiny) -> tuple[str, list[str]]:
    """A public project (every signed-in user reads it) with a model of two versions."""
    project = factory.project(world.org, world.admin, "public", name="Open")
    created = client.post(
        f"/api/v1/projects/{project}/models",
        json={"name": "Fraud", "model_type": "classification"},
        headers=world.developer.headers,
    )
    assert created.status_code == 201, created.text
    versions = []
    for model in (tiny.first, tiny.second):
        uploaded = client.post(
            f"/api/v1/models/{created.json()['data']['id']}/versions",
            data={"model_schema": json.dumps(SCHEMA)},
            files={"model_file": ("m.onnx", onnx_file(model), "application/octet-stream")},
            headers=world.developer.headers,
        )
        assert uploaded.status_code == 201, uploaded.text
        versions.append(uploaded.json()["data"]["id"])
    return project, versions


def data(response: Any, status: int = 200) -> Any:
    assert response.status_code == status, response.text
    return response.json()["data"]


def stored(factory: Factory, deployment_id: str) -> dict[str, str]:
    """The values as whatever runs the deployment would read them."""
    with factory.database.session(write=False) as session:
        deployment = session.get(Deployment, deployment_id)
        assert deployment is not None
        return service.deployment_env_vars(factory.settings, deployment)


def every_row(database_url: str) -> str:
    """Every row of every table, as text."""
    engine = sa.create_engine(database_url)
    metadata = sa.MetaData()
    metadata.reflect(engine)
    with engine.connect() as connection:
        text = "\n".join(
            str(row) for table in metadata.sorted_tables for row in connection.execute(sa.select(table))
        )
    engine.dispose()
    return text


def test_env_vars_are_never_read_back_in_clear(
    client: TestClient, factory: Factory, settings: Settings, world: World, tiny: Tiny, database_url: str
) -> None:
    project, (v1, v2) = public_model(client, factory, world, tiny)
    created = data(
        client.post(
            f"/api/v1/projects/{project}/deployments",
            json={
                "name": "open-api",
                "model_version_id": v1,
                "deployment_config": {"env_vars": SECRETS, "resource_limits": {"memory": "2Gi"}},
            },
            headers=world.developer.headers,
        ),
        201,
    )
    deployment = created["id"]
    assert created["deployment_config"] == {
        "env_vars": MASKED,
        "resource_limits": {"memory": "2Gi", "cpu": None},
    }

    # Whoever reads: an outsider (the project is public), a viewer, the admin; get, list, logs.
    for headers in (world.outsider.headers, world.viewer.headers, world.admin.headers):
        assert (
            data(client.get(f"/api/v1/deployments/{deployment}", headers=headers))["deployment_config"][
                "env_vars"
            ]
            == MASKED
        )
        listed = client.get(f"/api/v1/projects/{project}/deployments", headers=headers)
        assert [d["deployment_config"]["env_vars"] for d in data(listed)] == [MASKED]
        assert (
            SECRETS["DB_PASSWORD"]
            not in client.get(f"/api/v1/deployments/{deployment}/logs", headers=headers).text
        )

    # Changes that leave env_vars out keep them; a value sent back as the mask keeps its value.
    put = f"/api/v1/deployments/{deployment}"
    data(client.put(put, json={"min_instances": 0}, headers=world.developer.headers))
    updated = data(
        client.put(
            put,
            json={"deployment_config": {"resource_limits": {"memory": "4Gi"}}},
            headers=world.developer.headers,
        )
    )
    assert updated["deployment_config"]["env_vars"] == MASKED
    assert stored(factory, deployment) == SECRETS
    edited = data(
        client.put(
            put,
            json={"deployment_config": {"env_vars": {"DB_PASSWORD": MASK, "REGION": "eu-west-1"}}},
            headers=world.developer.headers,
        )
    )
    assert edited["deployment_config"] == {
        "env_vars": {"DB_PASSWORD": MASK, "REGION": MASK},
        "resource_limits": {"memory": "4Gi", "cpu": None},
    }
    assert stored(factory, deployment) == {"DB_PASSWORD": SECRETS["DB_PASSWORD"], "REGION": "eu-west-1"}
    unknown = client.put(
        put, json={"deployment_config": {"env_vars": {"NEVER_SET": MASK}}}, headers=world.developer.headers
    )
    assert unknown.status_code == 422, unknown.text
    assert unknown.json()["error"]["details"][0]["field"] == "deployment_config.env_vars.NEVER_SET"

    # Deploying and rolling back answer masked too.
    deployed = data(client.put(put, json={"model_version_id": v2}, headers=world.developer.headers))
    rolled = data(client.post(f"{put}/rollback", json={}, headers=world.developer.headers))
    for answer in (deployed, rolled):
        assert answer["deployment_config"]["env_vars"] == {"DB_PASSWORD": MASK, "REGION": MASK}
        assert SECRETS["DB_PASSWORD"] not in json.dumps(answer)

    # Nowhere in the database in clear: not the deployment, its log, events, audit rows.
    rows = every_row(database_url)
    assert deployment in rows
    for value in (*SECRETS.values(), "eu-west-1"):
        assert value not in rows
    with factory.database.session(write=False) as session:
        sealed = session.get(Deployment, deployment).env_vars_encrypted  # type: ignore[union-attr]
    assert sealed is not None
    assert unseal(settings, sealed)["REGION"] == "eu-west-1"
    if database_url.startswith("sqlite"):
        path = Path(database_url.removeprefix("sqlite:///"))
        for file in (path, path.with_name(path.name + "-wal")):
            if file.exists():
                assert SECRETS["DB_PASSWORD"].encode() not in file.read_bytes()


def test_a_mask_is_not_a_value(client: TestClient, factory: Factory, world: World, tiny: Tiny) -> None:
    project, (v1, _) = public_model(client, factory, world, tiny)
    refused = client.post(
        f"/api/v1/projects/{project}/deployments",
        json={"name": "open-api", "model_version_id": v1, "deployment_config": {"env_vars": {"A": MASK}}},
        headers=world.developer.headers,
    )
    assert refused.status_code == 422, refused.text
    assert data(client.get(f"/api/v1/projects/{project}/deployments", headers=world.admin.headers)) == []


def test_the_upgrade_seals_values_stored_in_clear(tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    """A database written before values were sealed: the migration seals them with the
    installation's key (the settings ``maestro db upgrade`` runs with)."""
    url = f"sqlite:///{tmp_path / 'old.db'}"
    upgrade(url, "b2e4f6a8c012")
    engine = sa.create_engine(url)
    with engine.begin() as connection:
        _insert(connection, "organizations", id="org_old", name="Old", slug="old")
        _insert(connection, "projects", id="proj_old", organization_id="org_old", name="Old", slug="old")
        _insert(
            connection,
            "deployments",
            id="deploy_old",
            organization_id="org_old",
            project_id="proj_old",
            name="old-api",
            deployment_config={"env_vars": SECRETS, "resource_limits": {}},
        )
    engine.dispose()
    key = "k" * 48
    monkeypatch.setenv("MAESTRO_SECRET_KEY", key)
    monkeypatch.setenv("MAESTRO_ENVIRONMENT", "test")
    monkeypatch.setenv("MAESTRO_DATA_DIR", str(tmp_path / "data"))
    upgrade(url)
    engine = sa.create_engine(url)
    with engine.connect() as connection:
        config, sealed = connection.execute(
            sa.text("SELECT deployment_config, env_vars_encrypted FROM deployments")
        ).one()
    engine.dispose()
    assert json.loads(config)["env_vars"] == MASKED
    assert unseal(Settings(_env_file=None, secret_key=key, environment="test"), sealed) == SECRETS  # type: ignore[call-arg]


def _insert(connection: sa.Connection, table_name: str, **values: Any) -> None:
    """A row with ``values`` and a plain value in every other required column."""
    table = sa.Table(table_name, sa.MetaData(), autoload_with=connection)
    row = dict(values)
    for column in table.columns:
        if column.name in row or column.nullable or column.server_default is not None:
            continue
        if isinstance(column.type, sa.JSON):
            row[column.name] = {}
            continue
        filler: Any = {str: "x", int: 0, bool: False, float: 0.0, datetime: datetime.now(UTC)}[
            column.type.python_type
        ]
        row[column.name] = filler
    connection.execute(table.insert().values(**row))
