from __future__ import annotations

import random
from typing import Any

import pytest
from fastapi.testclient import TestClient
from sqlalchemy import insert, text

from maestro.db import new_id, utcnow
from maestro.tracking import search
from maestro.tracking.models import LatestMetric, Run, RunParam
from maestro.tracking.schemas import RunSearch
from maestro.tracking.service import search_statement_for_plan
from tests.factories import Factory
from tests.tracking.conftest import (
    World,
    error_of,
    log_metrics,
    new_experiment,
    new_run,
    ok,
    run_url,
    set_status,
)


# --- the language, without a database ------------------------------------------------------
class TestParser:
    def test_the_spec_example(self) -> None:
        node = search.parse_filter(
            "metrics.accuracy > 0.9 and params.optimizer = 'adam' and tags.team != 'x' "
            "and attributes.status = 'completed'"
        )
        assert isinstance(node, search.Junction) and node.kind == "AND"
        assert [(c.entity, c.key, c.operator, c.value) for c in node.parts] == [  # type: ignore[union-attr]
            ("metric", "accuracy", ">", 0.9),
            ("param", "optimizer", "=", "adam"),
            ("tag", "team", "!=", "x"),
            ("attribute", "status", "=", "completed"),
        ]

    def test_precedence_and_parentheses(self) -> None:
        node = search.parse_filter("metrics.a > 1 or metrics.b > 2 and metrics.c > 3")
        assert isinstance(node, search.Junction) and node.kind == "OR"
        assert isinstance(node.parts[1], search.Junction) and node.parts[1].kind == "AND"
        grouped = search.parse_filter("(metrics.a > 1 or metrics.b > 2) and metrics.c > 3")
        assert isinstance(grouped, search.Junction) and grouped.kind == "AND"

    @pytest.mark.parametrize(
        ("text", "key"),
        [
            ("metrics.`val loss` < 1", "val loss"),
            ('metrics."val.loss" < 1', "val.loss"),
            ("metrics.train/loss < 1", "train/loss"),
            ("metrics.model.depth < 1", "model.depth"),
            ("metrics.`weird``name` < 1", "weird`name"),
        ],
    )
    def test_keys(self, text: str, key: str) -> None:
        node = search.parse_filter(text)
        assert isinstance(node, search.Condition) and node.key == key

    def test_values(self) -> None:
        node = search.parse_filter("params.name = 'it''s' and metrics.x >= -1.5e3 and tags.t IN ('a', \"b\")")
        assert isinstance(node, search.Junction)
        assert [c.value for c in node.parts] == ["it's", -1500.0, ("a", "b")]  # type: ignore[union-attr]

    def test_times_and_statuses(self) -> None:
        node = search.parse_filter(
            "attributes.start_time >= '2024-01-01T00:00:00Z' and attributes.end_time < 1704067200000 "
            "and attributes.status = 'FINISHED'"
        )
        assert isinstance(node, search.Junction)
        assert [c.value for c in node.parts] == [1704067200000, 1704067200000, "completed"]  # type: ignore[union-attr]

    def test_empty_filter(self) -> None:
        assert search.parse_filter("") is None
        assert search.parse_filter("   ") is None

    @pytest.mark.parametrize(
        ("text", "position", "words"),
        [
            ("metrics.accuracy >", 18, "expected a value"),
            ("metrics.accuracy 0.9", 17, "comparison operator"),
            ("accuracy > 0.9", 0, "keys start with"),
            ("metric.a > 1 and", 16, "expected a key"),
            ("metrics.a > 1 metrics.b > 2", 14, "expected AND, OR"),
            ("(metrics.a > 1", 14, "expected ')'"),
            ("metrics.a > 1)", 13, "expected AND, OR"),
            ("params.p = 'open", 11, "unterminated string"),
            ("params.p = 1", 11, "quoted string"),
            ("metrics.m = 'x'", 12, "expected a number"),
            ("metrics.m LIKE 1", 10, "LIKE does not apply"),
            ("params.p > 'a'", 9, "> does not apply"),
            ("attributes.colour = 'red'", 0, "unknown attribute"),
            ("attributes.status = 'sleeping'", 20, "unknown status"),
            ("attributes.start_time > 'yesterday'", 24, "ISO 8601"),
            ("attributes.start_time > 1.5", 24, "whole epoch milliseconds"),
            ("foo.bar = 1", 0, "unknown prefix"),
            ("metrics.a IN 1", 13, "'('"),
            ("metrics.a NOT 1", 14, "LIKE, ILIKE or IN after NOT"),
            ("metrics.a # 1", 10, "unexpected character"),
            ("`a` = 1", 0, "needs a prefix"),
            ("metrics. > 1", 8, "expected a key"),
        ],
    )
    def test_errors_point_at_the_position(self, text: str, position: int, words: str) -> None:
        with pytest.raises(search.SearchError) as caught:
            search.parse_filter(text)
        assert caught.value.position == position, str(caught.value)
        assert words in caught.value.message

    @pytest.mark.parametrize(
        "text",
        [
            "' or 1=1 --",
            "metrics.a > 1; drop table runs",
            "metrics.a > 1 -- comment",
            "params.p = 'x' or '1'='1'",
            "params.p = 'x'' or ''1''=''1'",  # escaped quotes stay inside the string
            "metrics.a > 1 " + "and metrics.a > 1 " * 10_000,
            "(" * 100 + "metrics.a > 1" + ")" * 100,
            "metrics.a > 1" + "0" * 5000,
            "metrics.a > 1e999999",
            "params.p IN (" + ",".join(["'x'"] * 500) + ")",
            "params.p = '\x00'",
            "metrics.`unclosed > 1",
        ],
    )
    def test_hostile_filters_fail_cleanly_or_stay_data(self, text: str) -> None:
        error: search.SearchError | None = None
        try:
            node = search.parse_filter(text)
        except search.SearchError as caught:
            error = caught
        if error is not None:
            assert 0 <= error.position <= len(text)
        else:
            # what parses is data: values are bound, never spliced into SQL
            assert node is not None
            search.filter_sql(node, "sqlite")

    def test_order_by(self) -> None:
        keys = search.parse_order_by(["metrics.accuracy DESC", "attributes.start_time", "params.`a b` asc"])
        assert [(k.entity, k.key, k.descending) for k in keys] == [
            ("metric", "accuracy", True),
            ("attribute", "start_time", False),
            ("param", "a b", False),
        ]
        for bad in (
            ["metrics.a sideways"],
            ["accuracy"],
            ["metrics.a DESC extra"],
            ["attributes.colour"],
            ["x"] * 6,
        ):
            with pytest.raises(search.SearchError):
                search.parse_order_by(bad)

    def test_like_becomes_a_case_sensitive_glob_on_sqlite(self) -> None:
        assert search._glob("ad_m%") == "ad?m*"
        assert search._glob("a*b?[c") == "a[*]b[?][[]c"


# --- through the API -----------------------------------------------------------------------
@pytest.fixture
def lab(client: TestClient, world: World) -> dict[str, Any]:
    """Six runs with varied parameters, metrics, tags and statuses."""
    experiment = new_experiment(client, world.project, world.admin.headers)
    eid = experiment["id"]
    specs = [
        ("alpha", "adam", 0.95, 0.10, "vision", "completed"),
        ("beta", "sgd", 0.91, 0.30, "vision", "completed"),
        ("gamma", "adam", 0.85, 0.50, "nlp", "failed"),
        ("delta", "Adam", 0.97, 0.05, "nlp", "running"),
        ("epsilon", "rmsprop", None, 0.70, "x", "killed"),
        ("zeta", "adam", "NaN", 0.20, "vision", "completed"),
    ]
    runs = {}
    for name, optimizer, accuracy, loss, team, status in specs:
        run = new_run(
            client,
            eid,
            world.admin.headers,
            run_name=name,
            parameters={"optimizer": optimizer},
            tags={"team": team},
        )
        points = [{"name": "loss", "value": loss}]
        if accuracy is not None:
            points.append({"name": "accuracy", "value": accuracy})
        ok(log_metrics(client, eid, run["id"], world.admin.headers, points))
        if status != "running":
            ok(set_status(client, eid, run["id"], world.admin.headers, status))
        runs[name] = run["id"]
    return {"experiment": eid, "runs": runs}


def find(client: TestClient, world: World, lab: dict[str, Any], **body: Any) -> list[str]:
    response = client.post(
        f"/api/v1/experiments/{lab['experiment']}/runs/search", json=body, headers=world.viewer.headers
    )
    return [run["run_name"] for run in ok(response)]


class TestSearchApi:
    @pytest.mark.parametrize(
        ("filter_text", "expected"),
        [
            ("", {"alpha", "beta", "gamma", "delta", "epsilon", "zeta"}),
            ("metrics.accuracy > 0.9", {"alpha", "beta", "delta"}),
            ("metrics.accuracy >= 0.95", {"alpha", "delta"}),
            ("metrics.accuracy < 0.9", {"gamma"}),
            ("metrics.accuracy <= 0.91", {"beta", "gamma"}),
            ("metrics.accuracy = 0.95", {"alpha"}),
            ("metrics.accuracy != 0.95", {"beta", "gamma", "delta"}),  # NaN and missing never match
            ("params.optimizer = 'adam'", {"alpha", "gamma", "zeta"}),
            ("params.optimizer != 'adam'", {"beta", "delta", "epsilon"}),
            ("params.optimizer LIKE 'a%'", {"alpha", "gamma", "zeta"}),  # case-sensitive
            ("params.optimizer ILIKE 'a%'", {"alpha", "gamma", "delta", "zeta"}),
            ("params.optimizer NOT LIKE '%a%'", {"beta", "epsilon"}),
            ("params.optimizer LIKE '_gd'", {"beta"}),
            ("params.optimizer IN ('sgd', 'rmsprop')", {"beta", "epsilon"}),
            ("params.optimizer NOT IN ('adam')", {"beta", "delta", "epsilon"}),
            ("tags.team = 'vision'", {"alpha", "beta", "zeta"}),
            ("tags.team != 'x'", {"alpha", "beta", "gamma", "delta", "zeta"}),
            ("attributes.status = 'completed'", {"alpha", "beta", "zeta"}),
            ("attributes.status = 'FINISHED'", {"alpha", "beta", "zeta"}),
            ("attributes.status IN ('failed', 'killed')", {"gamma", "epsilon"}),
            ("attributes.run_name LIKE '%ta'", {"beta", "delta", "zeta"}),
            ("attributes.end_time > 0", {"alpha", "beta", "gamma", "epsilon", "zeta"}),
            (
                "attributes.start_time > '2000-01-01T00:00:00Z'",
                {"alpha", "beta", "gamma", "delta", "epsilon", "zeta"},
            ),
            (
                "metrics.accuracy > 0.9 and params.optimizer = 'adam' and tags.team != 'x' "
                "and attributes.status = 'completed'",
                {"alpha"},
            ),
            ("(params.optimizer = 'sgd' or metrics.loss < 0.1) and tags.team = 'nlp'", {"delta"}),
            ("metrics.missing > 0", set()),
        ],
    )
    def test_each_operator(
        self, client: TestClient, world: World, lab: dict[str, Any], filter_text: str, expected: set[str]
    ) -> None:
        assert set(find(client, world, lab, filter=filter_text)) == expected

    def test_created_by(self, client: TestClient, world: World, lab: dict[str, Any]) -> None:
        found = find(client, world, lab, filter=f"attributes.created_by = '{world.admin.email}'")
        assert len(found) == 6
        assert find(client, world, lab, filter="attributes.created_by = 'nobody@example.com'") == []

    def test_order_by_metric_puts_nan_then_missing_last(
        self, client: TestClient, world: World, lab: dict[str, Any]
    ) -> None:
        descending = find(client, world, lab, order_by=["metrics.accuracy DESC"])
        assert descending == ["delta", "alpha", "beta", "gamma", "zeta", "epsilon"]
        ascending = find(client, world, lab, order_by=["metrics.accuracy"])
        assert ascending == ["gamma", "beta", "alpha", "delta", "zeta", "epsilon"]

    def test_order_by_params_and_attributes(
        self, client: TestClient, world: World, lab: dict[str, Any]
    ) -> None:
        assert find(client, world, lab, order_by=["attributes.run_name"]) == [
            "alpha",
            "beta",
            "delta",
            "epsilon",
            "gamma",
            "zeta",
        ]
        by_param = find(client, world, lab, order_by=["params.optimizer DESC", "attributes.run_name"])
        assert by_param == ["beta", "epsilon", "alpha", "gamma", "zeta", "delta"]
        # the default: newest start first
        assert find(client, world, lab) == ["zeta", "epsilon", "delta", "gamma", "beta", "alpha"]

    def test_filter_and_order_together(self, client: TestClient, world: World, lab: dict[str, Any]) -> None:
        found = find(client, world, lab, filter="metrics.loss < 0.4", order_by=["metrics.loss"])
        assert found == ["delta", "alpha", "zeta", "beta"]

    def test_paging_by_page_and_by_cursor(
        self, client: TestClient, world: World, lab: dict[str, Any]
    ) -> None:
        url = f"/api/v1/experiments/{lab['experiment']}/runs/search"
        order = {"order_by": ["attributes.run_name"], "limit": 4}
        first = client.post(url, json=order, headers=world.viewer.headers).json()
        assert [run["run_name"] for run in first["data"]] == ["alpha", "beta", "delta", "epsilon"]
        assert first["pagination"] == {
            "total": 6,
            "page": 1,
            "limit": 4,
            "has_next": True,
            "has_prev": False,
            "next_cursor": first["pagination"]["next_cursor"],
        }
        second = client.post(
            url, json={**order, "cursor": first["pagination"]["next_cursor"]}, headers=world.viewer.headers
        ).json()
        assert [run["run_name"] for run in second["data"]] == ["gamma", "zeta"]
        assert second["pagination"]["has_next"] is False
        assert second["pagination"]["has_prev"] is True
        by_page = client.post(url, json={**order, "page": 2}, headers=world.viewer.headers).json()
        assert [run["run_name"] for run in by_page["data"]] == ["gamma", "zeta"]
        # a cursor only continues the search it came from
        other = client.post(
            url,
            json={"order_by": ["metrics.loss"], "limit": 4, "cursor": first["pagination"]["next_cursor"]},
            headers=world.viewer.headers,
        )
        assert other.status_code == 422
        both = client.post(url, json={**order, "page": 2, "cursor": "x"}, headers=world.viewer.headers)
        assert both.status_code == 422

    def test_results_carry_params_tags_and_metrics(
        self, client: TestClient, world: World, lab: dict[str, Any]
    ) -> None:
        response = client.post(
            f"/api/v1/experiments/{lab['experiment']}/runs/search",
            json={"filter": "attributes.run_name = 'alpha'"},
            headers=world.viewer.headers,
        )
        [run] = ok(response)
        assert run["params"] == {"optimizer": "adam"}
        assert run["tags"] == {"team": "vision"}
        assert run["metrics"] == {"accuracy": 0.95, "loss": 0.1}

    @pytest.mark.parametrize(
        ("body", "field"),
        [
            ({"filter": "metrics.accuracy >"}, "filter"),
            ({"filter": "metrics.accuracy > 0.9 andd params.x = 'y'"}, "filter"),
            ({"filter": "' or 1=1 --"}, "filter"),
            ({"filter": "metrics.a > 1; drop table runs"}, "filter"),
            ({"filter": "x" * 5000}, "filter"),
            ({"filter": "metrics.a > 1 " + "and metrics.a > 1 " * 200}, "filter"),
            ({"filter": "params.p = 'a\x00'"}, "filter"),
            ({"filter": "attributes.start_time > 99999999999999999999999"}, "filter"),
            ({"order_by": ["metrics.a upward"]}, "order_by"),
            ({"order_by": ["1; drop table runs"]}, "order_by"),
            ({"limit": 0}, "limit"),
            ({"limit": 1000}, "limit"),
            ({"run_view_type": "everything"}, "run_view_type"),
        ],
    )
    def test_malformed_searches_are_422_with_a_position(
        self, client: TestClient, world: World, lab: dict[str, Any], body: dict[str, Any], field: str
    ) -> None:
        response = client.post(
            f"/api/v1/experiments/{lab['experiment']}/runs/search", json=body, headers=world.viewer.headers
        )
        assert response.status_code == 422, response.text
        error = error_of(response)
        assert error["code"] == "VALIDATION_ERROR"
        assert error["details"][0]["field"].startswith(field)
        if field in ("filter", "order_by") and "position" in error["message"]:
            assert "position" in error["details"][0]["message"]

    def test_injection_inside_a_value_is_just_data(
        self, client: TestClient, world: World, lab: dict[str, Any]
    ) -> None:
        for value in ("x' OR '1'='1", "'; DROP TABLE runs; --", "%' OR 1=1 --", "\\'; select 1"):
            quoted = value.replace("'", "''")
            assert find(client, world, lab, filter=f"params.optimizer = '{quoted}'") == []
        # the table is still there
        assert len(find(client, world, lab)) == 6

    def test_huge_numbers_are_harmless(self, client: TestClient, world: World, lab: dict[str, Any]) -> None:
        assert find(client, world, lab, filter="metrics.accuracy > 1e308") == []
        assert len(find(client, world, lab, filter="metrics.loss < 1e999")) == 6  # infinity
        assert find(client, world, lab, filter="metrics.loss < -1e999") == []


class TestProjectSearch:
    def test_across_experiments(self, client: TestClient, world: World) -> None:
        first = new_experiment(client, world.project, world.admin.headers, "first")
        second = new_experiment(client, world.project, world.admin.headers, "second")
        third = new_experiment(client, world.project, world.admin.headers, "third")
        for experiment, accuracy in ((first, 0.9), (second, 0.8), (third, 0.99)):
            run = new_run(client, experiment["id"], world.admin.headers, run_name=experiment["name"])
            ok(
                log_metrics(
                    client,
                    experiment["id"],
                    run["id"],
                    world.admin.headers,
                    [{"name": "acc", "value": accuracy}],
                )
            )
        url = f"/api/v1/projects/{world.project}/runs/search"
        body = {"experiment_ids": [first["id"], second["id"]], "order_by": ["metrics.acc DESC"]}
        found = ok(client.post(url, json=body, headers=world.viewer.headers))
        assert [run["run_name"] for run in found] == ["first", "second"]
        every = ok(client.post(url, json={"filter": "metrics.acc > 0.85"}, headers=world.viewer.headers))
        assert {run["run_name"] for run in every} == {"first", "third"}

    def test_foreign_or_missing_experiments_are_refused_alike(self, client: TestClient, world: World) -> None:
        url = f"/api/v1/projects/{world.project}/runs/search"
        foreign = client.post(
            url, json={"experiment_ids": [world.other_experiment]}, headers=world.admin.headers
        )
        missing = client.post(url, json={"experiment_ids": ["exp_missing"]}, headers=world.admin.headers)
        assert foreign.status_code == missing.status_code == 422
        assert error_of(foreign)["message"] == error_of(missing)["message"]
        other_project = client.post(
            f"/api/v1/projects/{world.other_project}/runs/search", json={}, headers=world.admin.headers
        )
        assert other_project.status_code == 404

    def test_other_tenants_experiment_search_is_404(self, client: TestClient, world: World) -> None:
        foreign = client.post(
            f"/api/v1/experiments/{world.other_experiment}/runs/search", json={}, headers=world.admin.headers
        )
        missing = client.post(
            "/api/v1/experiments/exp_missing/runs/search", json={}, headers=world.admin.headers
        )
        assert foreign.status_code == missing.status_code == 404
        assert error_of(foreign) == error_of(missing)


# --- the query plan over 2,000 runs ---------------------------------------------------------
def seed_runs(factory: Factory, experiment_id: str, organization_id: str, count: int) -> None:
    """Runs with one parameter and one metric each, written in bulk."""
    generator = random.Random(3)
    now = utcnow()
    runs, params, metrics = [], [], []
    for number in range(count):
        run_id = new_id("run")
        runs.append(
            {
                "id": run_id,
                "experiment_id": experiment_id,
                "organization_id": organization_id,
                "name": f"seeded-{number}",
                "status": "completed",
                "start_time": 1_700_000_000_000 + number,
                "lifecycle_stage": "active",
                "created_at": now,
            }
        )
        params.append({"run_id": run_id, "key": "optimizer", "value": generator.choice(["adam", "sgd"])})
        metrics.append(
            {
                "run_id": run_id,
                "key": "accuracy",
                "experiment_id": experiment_id,
                "value": generator.random(),
                "timestamp": 1,
                "step": 0,
            }
        )
    with factory.database.session() as session:
        session.execute(insert(Run), runs)
        session.execute(insert(RunParam), params)
        session.execute(insert(LatestMetric), metrics)


def test_search_over_thousands_of_runs_uses_indexes(
    client: TestClient, factory: Factory, world: World
) -> None:
    experiments = [
        new_experiment(client, world.project, world.admin.headers, f"big-{n}")["id"] for n in range(4)
    ]
    for experiment_id in experiments:
        seed_runs(factory, experiment_id, world.org, 500)
    body = RunSearch(
        filter="metrics.accuracy > 0.5 and params.optimizer = 'adam'", order_by=["metrics.accuracy DESC"]
    )
    found = client.post(
        f"/api/v1/experiments/{experiments[0]}/runs/search",
        json=body.model_dump(),
        headers=world.viewer.headers,
    ).json()
    values = [run["metrics"]["accuracy"] for run in found["data"]]
    assert len(values) == 20 and values == sorted(values, reverse=True) and min(values) > 0.5
    assert 50 < found["pagination"]["total"] < 500

    with factory.database.session(write=False) as session:
        statement = search_statement_for_plan(session, [experiments[0]], body)
        dialect = session.get_bind().dialect
        sql = str(statement.compile(dialect=dialect, compile_kwargs={"literal_binds": True}))
        if dialect.name == "sqlite":
            plan = " | ".join(row[-1] for row in session.execute(text(f"EXPLAIN QUERY PLAN {sql}")))
            assert "ix_runs_experiment_id" in plan, plan
            assert "sqlite_autoindex_run_latest_metrics_1" in plan, plan
            assert "SCAN runs" not in plan.replace("SCAN runs USING", ""), plan
        else:
            session.execute(text("ANALYZE runs; ANALYZE run_latest_metrics; ANALYZE run_params"))
            session.execute(text("SET LOCAL enable_seqscan = off"))
            plan = " | ".join(row[0] for row in session.execute(text(f"EXPLAIN {sql}")))
            assert "ix_runs_experiment_id" in plan, plan
            assert "pk_run_latest_metrics" in plan, plan
            assert "Seq Scan" not in plan, plan


def test_runs_of_a_run_page_link_back(client: TestClient, world: World) -> None:
    experiment = new_experiment(client, world.project, world.admin.headers)
    run = new_run(client, experiment["id"], world.admin.headers)
    found = ok(
        client.post(
            f"/api/v1/experiments/{experiment['id']}/runs/search", json={}, headers=world.admin.headers
        )
    )
    assert [item["id"] for item in found] == [run["id"]]
    assert (
        ok(client.get(run_url(experiment["id"], run["id"]), headers=world.admin.headers))["id"] == run["id"]
    )
