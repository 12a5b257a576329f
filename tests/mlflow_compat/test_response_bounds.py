"""MLflow searches answer bounded pages: at most ``PAGE_ROWS`` items and about
``PAGE_BYTES`` of JSON, whatever ``max_results`` asks, with a ``next_page_token`` that
leads through the rest exactly once (MLflow's client follows it)."""

from __future__ import annotations

from typing import Any

import orjson
from fastapi import FastAPI
from fastapi.testclient import TestClient
from sqlalchemy import insert

from maestro.mlflow_compat.service import PAGE_BYTES, PAGE_ROWS
from maestro.tracking.models import ExperimentTag, Run, RunTag
from tests.mlflow_compat.conftest import World, mlflow_call, ok

SLACK = 1024  # the answer's own braces and token around the items


def new_experiment(client: TestClient, world: World, name: str = "big") -> str:
    return ok(mlflow_call(client, "POST", "experiments/create", world.headers(), {"name": name}))[
        "experiment_id"
    ]


def add_runs(app: FastAPI, world: World, experiment_id: str, count: int, tags: int = 0) -> list[str]:
    """Runs written straight to the tables (the API would take a request each), each
    with ``tags`` tags of 8,000 characters, the longest a tag value may be."""
    with app.state.database.session() as session:
        runs = [
            Run(experiment_id=experiment_id, organization_id=world.org, name=f"r{i}", start_time=i)
            for i in range(count)
        ]
        session.add_all(runs)
        session.flush()
        ids = [run.id for run in runs]
        if tags:
            session.execute(
                insert(RunTag),
                [
                    {"run_id": run_id, "key": f"t{i}", "value": chr(ord("a") + i % 26) * 8000}
                    for run_id in ids
                    for i in range(tags)
                ],
            )
    return ids


def all_pages(client: TestClient, world: World, path: str, body: dict[str, Any]) -> list[bytes]:
    """Every page of a search, following ``next_page_token``."""
    pages: list[bytes] = []
    token = None
    while True:
        response = mlflow_call(client, "POST", path, world.headers(), {**body, "page_token": token})
        assert response.status_code == 200, response.text
        pages.append(response.content)
        token = response.json().get("next_page_token")
        if not token:
            return pages
        assert len(pages) < 100


class TestRunSearch:
    def test_max_results_asks_for_more_than_a_page_holds(
        self, app: FastAPI, client: TestClient, world: World
    ) -> None:
        experiment_id = new_experiment(client, world)
        ids = add_runs(app, world, experiment_id, PAGE_ROWS + 1)
        body = {"experiment_ids": [experiment_id], "max_results": 50_000}
        pages = all_pages(client, world, "runs/search", body)
        found = [[run["info"]["run_id"] for run in orjson.loads(page).get("runs", [])] for page in pages]
        assert [len(page) for page in found] == [PAGE_ROWS, 1]
        assert sorted(run_id for page in found for run_id in page) == sorted(ids)
        too_many = mlflow_call(
            client, "POST", "runs/search", world.headers(), {**body, "max_results": 50_001}
        )
        assert too_many.status_code == 400 and too_many.json()["error_code"] == "INVALID_PARAMETER_VALUE"

    def test_runs_with_long_tags_fill_a_page_by_bytes(
        self, app: FastAPI, client: TestClient, world: World
    ) -> None:
        experiment_id = new_experiment(client, world)
        # 11 runs of 100 tags of 8,000 characters: 8.8 MB, more than one page may hold.
        ids = add_runs(app, world, experiment_id, 11, tags=100)
        pages = all_pages(
            client, world, "runs/search", {"experiment_ids": [experiment_id], "max_results": 1000}
        )
        assert len(pages) >= 2
        assert all(len(page) <= PAGE_BYTES + SLACK for page in pages)
        found = [run["info"]["run_id"] for page in pages for run in orjson.loads(page).get("runs", [])]
        assert sorted(found) == sorted(ids)
        assert len(found) == len(set(found))
        first = orjson.loads(pages[0])["runs"][0]
        assert len(first["data"]["tags"]) == 100  # whole runs, never cut inside one


class TestExperimentSearch:
    def test_experiments_with_long_tags_fill_a_page_by_bytes(
        self, app: FastAPI, client: TestClient, world: World
    ) -> None:
        created = [new_experiment(client, world, f"e{i}") for i in range(4)]
        with app.state.database.session() as session:
            session.execute(
                insert(ExperimentTag),
                [
                    {"experiment_id": experiment_id, "key": f"t{i}", "value": "x" * 5000}
                    for experiment_id in created
                    for i in range(500)
                ],
            )
        pages = all_pages(client, world, "experiments/search", {"max_results": 50_000})
        assert len(pages) >= 2
        assert all(len(page) <= PAGE_BYTES + SLACK for page in pages)
        found = [e["experiment_id"] for page in pages for e in orjson.loads(page)["experiments"]]
        assert sorted(found) == sorted(created)
