"""MLflow's search filters (experiments, logged models, registered models, model
versions): parsed in linear time, each condition typed by its field, and anything
malformed answered as MLflow's ``400 INVALID_PARAMETER_VALUE`` (never a 500), on both
databases."""

from __future__ import annotations

from datetime import UTC, datetime
from typing import Any

import pytest
from fastapi.testclient import TestClient
from hypothesis import HealthCheck, given, settings
from hypothesis import strategies as st

from maestro.mlflow_compat import filters
from maestro.mlflow_compat.filters import Condition, FilterError, parse
from tests.mlflow_compat.conftest import World, error_of, mlflow_call, ok

VERSION_FIELDS: dict[str, filters.FieldType] = {
    "name": "text",
    "run_id": "text",
    "source_path": "text",
    "version_number": "integer",
    "model_id": "text",
}
EXPERIMENT_FIELDS: dict[str, filters.FieldType] = {
    "name": "text",
    "creation_time": "time",
    "last_update_time": "time",
}


class TestParse:
    def test_conditions_of_every_kind(self) -> None:
        found = parse(
            "name LIKE 'fraud%' AND tags.`team name` = 'risk' and attributes.version_number = '2' "
            "AnD tags.\"k\" NOT ILIKE 'it''s' and run_id<>'r' and version_number>=3",
            VERSION_FIELDS,
        )
        assert found == [
            Condition("field", "name", "LIKE", "fraud%"),
            Condition("tag", "team name", "=", "risk"),
            Condition("field", "version_number", "=", 2),
            Condition("tag", "k", "NOT ILIKE", "it's"),
            Condition("field", "run_id", "!=", "r"),
            Condition("field", "version_number", ">=", 3),
        ]

    def test_no_spaces_are_needed_around_symbols(self) -> None:
        assert parse("name='a'", {"name": "text"}) == [Condition("field", "name", "=", "a")]

    def test_an_empty_filter_has_no_conditions(self) -> None:
        assert parse("", {"name": "text"}) == [] and parse("   \t", {"name": "text"}) == []

    def test_times_become_moments(self) -> None:
        [condition] = parse("creation_time > 1700000000000", EXPERIMENT_FIELDS)
        assert condition.value == datetime(2023, 11, 14, 22, 13, 20, tzinfo=UTC)
        [quoted] = parse("creation_time <= '1000'", EXPERIMENT_FIELDS)
        assert quoted.value == datetime(1970, 1, 1, 0, 0, 1, tzinfo=UTC)

    @pytest.mark.parametrize(
        ("text", "fields"),
        [
            ("version_number = 'abc'", VERSION_FIELDS),
            ("version_number = 99999999999999999999", VERSION_FIELDS),
            ("version_number = 1e300", VERSION_FIELDS),
            ("version_number = 1.5", VERSION_FIELDS),
            ("version_number = -1", VERSION_FIELDS),
            ("version_number IN ('a','b')", VERSION_FIELDS),
            ("version_number IN (1, 2)", VERSION_FIELDS),
            ("creation_time IN (1, 2)", EXPERIMENT_FIELDS),
            ("version_number LIKE '1%'", VERSION_FIELDS),
            ("name = 5", VERSION_FIELDS),
            ("name IN (1, 2)", VERSION_FIELDS),
            ("creation_time = 'yesterday'", EXPERIMENT_FIELDS),
            ("creation_time = 1e400", EXPERIMENT_FIELDS),
            ("creation_time = 'nan'", EXPERIMENT_FIELDS),
            ("creation_time = -5", EXPERIMENT_FIELDS),
            ("creation_time LIKE '1%'", EXPERIMENT_FIELDS),
            ("name = 'unterminated", EXPERIMENT_FIELDS),
            ("name = 'a' and", EXPERIMENT_FIELDS),
            ("name = 'a' or name = 'b'", EXPERIMENT_FIELDS),
            ("name = 'a' andname = 'b'", EXPERIMENT_FIELDS),
            ("name IN ()", EXPERIMENT_FIELDS),
            ("name IN ('a'", EXPERIMENT_FIELDS),
            ("name NOT = 'a'", EXPERIMENT_FIELDS),
            ("name == 'a'", EXPERIMENT_FIELDS),
            ("tags. = 'a'", EXPERIMENT_FIELDS),
            ("tags.`` = 'a'", EXPERIMENT_FIELDS),
            ("owner = 'a'", EXPERIMENT_FIELDS),
            ("= 'a'", EXPERIMENT_FIELDS),
            ("name 'a'", EXPERIMENT_FIELDS),
            ("name = 12abc", EXPERIMENT_FIELDS),
            ("name = " + "9" * 50, EXPERIMENT_FIELDS),
        ],
    )
    def test_malformed_or_ill_typed_filters_are_refused(self, text: str, fields: dict[str, Any]) -> None:
        with pytest.raises(FilterError):
            parse(text, fields)

    def test_limits(self) -> None:
        with pytest.raises(FilterError, match="longer than 4000 characters"):
            parse("name = '" + "x" * 4000 + "'", {"name": "text"})
        with pytest.raises(FilterError, match="more than 20 conditions"):
            parse(" and ".join(["name = 'a'"] * 21), {"name": "text"})
        with pytest.raises(FilterError, match="LIKE or ILIKE conditions"):
            parse(" and ".join(["name LIKE 'a%'"] * 11), {"name": "text"})
        with pytest.raises(FilterError, match="pattern longer than 250"):
            parse("name LIKE '" + "%a" * 130 + "'", {"name": "text"})
        with pytest.raises(FilterError, match="more than 100 values"):
            parse("name IN (" + ",".join(["'a'"] * 101) + ")", {"name": "text"})
        with pytest.raises(FilterError, match="no conditions on tags"):
            parse("tags.x = 'a'", {"name": "text"}, tags=False)

    def test_runs_of_spaces_cost_one_pass(self) -> None:
        """What a splitter on ``\\s+and\\s+`` and an operator pattern with ``\\s*`` on both
        sides of ``\\s+`` took quadratic time over (0.18 s for 5,000 characters): the
        scanner reads each space once and answers at once."""
        with pytest.raises(FilterError, match="longer than 4000 characters"):
            parse("a" + " " * 4998 + "x", {"a": "text"})
        with pytest.raises(FilterError, match="expected a comparison operator") as refused:
            parse("a" + " " * 3998 + "x", {"a": "text"})
        assert "position 3999" in str(refused.value)
        spaced = "name" + " " * 1300 + "=" + " " * 1300 + "'v'" + " " * 1300 + "and name = 'w'"
        assert [c.value for c in parse(spaced, {"name": "text"})] == ["v", "w"]
        quotes = "name = '" + "''" * 1990 + "'"
        assert parse(quotes, {"name": "text"})[0].value == "'" * 1990
        with pytest.raises(FilterError, match="unterminated"):
            parse("name = '" + "''" * 1990, {"name": "text"})


# --- fuzz ----------------------------------------------------------------------------------
PIECES = st.sampled_from(
    [
        " ", "  ", "\t", "'", "''", '"', "`", "(", ")", ",", ".", "=", "!=", "<>", "<", "<=", ">", ">=",
        "==", "and", "AND", " and ", "or", "not", "NOT", "like", "ILIKE", "in", "IN", "name",
        "version_number", "creation_time", "run_id", "tags.", "tag.", "attributes.", "attribute.", "tags.x",
        "`a b`", "'v'", "'%'", "0", "1", "-1", "+2", "3.5", "1e5", "1e400", "99999999999999999999",
        "nan", "'abc'", "'1'", "\x00", "\u202e", "é", "_", "x",
    ]
)  # fmt: skip
FILTERS = st.lists(st.one_of(PIECES, st.text(max_size=3)), max_size=40).map("".join)
CONDITIONS = st.builds(
    lambda key, op, value: f"{key} {op} {value}",
    st.sampled_from(["name", "version_number", "creation_time", "tags.t", "run_id", "tags.`x y`"]),
    st.sampled_from(["=", "!=", "<", ">=", "LIKE", "NOT ILIKE", "IN", "NOT IN"]),
    st.sampled_from(["'a%'", "3", "'3'", "1e3", "(1, 2)", "('a', 'b')", "()", "'it''s'", "1700000000000"]),
)
GRAMMAR = st.lists(CONDITIONS, min_size=1, max_size=4).map(" and ".join)


class TestFuzz:
    @settings(max_examples=400, deadline=None, derandomize=True, database=None)
    @given(text=st.one_of(FILTERS, GRAMMAR), tags=st.booleans())
    def test_only_the_parse_error_escapes(self, text: str, tags: bool) -> None:
        for fields in (VERSION_FIELDS, EXPERIMENT_FIELDS):
            try:
                found = parse(text, fields, tags=tags)
            except FilterError:
                continue
            for condition in found:
                kind = "text" if condition.kind == "tag" else fields[condition.key]
                assert condition.operator in filters.OPERATORS_FOR[kind]
                values = condition.value if isinstance(condition.value, tuple) else (condition.value,)
                expected = {"text": str, "time": datetime, "integer": int}[kind]
                assert values and all(isinstance(value, expected) for value in values)


# --- over HTTP -----------------------------------------------------------------------------
def registered(client: TestClient, world: World) -> None:
    ok(mlflow_call(client, "POST", "registered-models/create", world.headers(), {"name": "Fraud"}))
    for _ in range(2):
        ok(mlflow_call(client, "POST", "model-versions/create", world.headers(), {"name": "Fraud"}))


class TestHttp:
    @pytest.mark.parametrize(
        "text",
        [
            "version_number = 'abc'",
            "version_number = 99999999999999999999",
            "version_number = 2147483648",
            "version_number IN ('a','b')",
            "name = 5",
            "name = 'x' or name = 'y'",
        ],
    )
    def test_model_version_search_refuses_bad_filters(
        self, client: TestClient, world: World, text: str
    ) -> None:
        registered(client, world)
        response = mlflow_call(client, "GET", "model-versions/search", world.headers(), {"filter": text})
        assert "Invalid filter" in error_of(response, 400, "INVALID_PARAMETER_VALUE")

    @pytest.mark.parametrize(
        "text", ["creation_time IN (1,2)", "creation_time = 'x'", "last_update_time > 1e400", "name LIKE 5"]
    )
    def test_experiment_search_refuses_bad_filters(self, client: TestClient, world: World, text: str) -> None:
        response = mlflow_call(client, "POST", "experiments/search", world.headers(), {"filter": text})
        error_of(response, 400, "INVALID_PARAMETER_VALUE")

    def test_good_filters_still_find(self, client: TestClient, world: World) -> None:
        registered(client, world)
        found = ok(
            mlflow_call(
                client,
                "GET",
                "model-versions/search",
                world.headers(),
                {"filter": "name = 'Fraud' AND version_number >= '2'"},
            )
        )
        assert [v["version"] for v in found["model_versions"]] == ["2"]
        experiments = ok(
            mlflow_call(
                client,
                "POST",
                "experiments/search",
                world.headers(),
                {"filter": "creation_time > 1 AND name LIKE 'x%'"},
            )
        )
        assert experiments["experiments"] == []

    def test_a_quadratic_filter_is_refused_over_http(self, client: TestClient, world: World) -> None:
        response = mlflow_call(
            client, "POST", "experiments/search", world.headers(), {"filter": "a" + " " * 4998 + "x"}
        )
        assert "longer than 4000" in error_of(response, 400, "INVALID_PARAMETER_VALUE")
        response = mlflow_call(
            client, "POST", "experiments/search", world.headers(), {"filter": "name" + " " * 3995 + "x"}
        )
        assert "position 3999" in error_of(response, 400, "INVALID_PARAMETER_VALUE")

    @settings(
        max_examples=30,
        deadline=None,
        derandomize=True,
        database=None,
        suppress_health_check=[HealthCheck.function_scoped_fixture],
    )
    @given(text=st.one_of(GRAMMAR, FILTERS))
    def test_every_filter_answers_200_or_400(self, client: TestClient, world: World, text: str) -> None:
        """What parses must also run on the database (PostgreSQL refuses to compare text
        with a number, or a time with a pattern, where SQLite shrugs)."""
        found = mlflow_call(
            client, "GET", "experiments/get-by-name", world.headers(), {"experiment_name": "f"}
        )
        if found.status_code == 404:
            found = mlflow_call(client, "POST", "experiments/create", world.headers(), {"name": "f"})
        experiment_id = ok(found).get("experiment_id") or found.json()["experiment"]["experiment_id"]
        searches = [
            ("POST", "experiments/search", {}),
            ("POST", "logged-models/search", {"experiment_ids": [experiment_id]}),
        ]
        if "\x00" not in text:  # a query string with NUL is refused before any route
            searches += [("GET", "model-versions/search", {}), ("GET", "registered-models/search", {})]
        for method, path, body in searches:
            response = mlflow_call(client, method, path, world.headers(), {**body, "filter": text})
            assert response.status_code in (200, 400), (path, text, response.text)
            if response.status_code == 400:
                assert response.json()["error_code"] == "INVALID_PARAMETER_VALUE"


class TestQuotedAnd:
    """``and`` inside quotes is text, never a joint: a filter is read quote by quote
    before anything looks for ``AND`` (a splitter on `` and `` once refused these)."""

    def test_experiments_by_a_name_and_a_tag_holding_and(self, client: TestClient, world: World) -> None:
        created = {}
        for name, tag in (("rock and roll", "a AND b"), ("rock", "a"), ("roll", "b")):
            body = {"name": name, "tags": [{"key": "x", "value": tag}]}
            created[name] = ok(mlflow_call(client, "POST", "experiments/create", world.headers(), body))[
                "experiment_id"
            ]

        def names(text: str) -> list[str]:
            found = ok(mlflow_call(client, "POST", "experiments/search", world.headers(), {"filter": text}))
            return sorted(experiment["name"] for experiment in found.get("experiments", []))

        assert names("name = 'rock and roll'") == ["rock and roll"]
        assert names("tags.x = 'a AND b'") == ["rock and roll"]
        assert names("name LIKE '% and %' AND tags.x = 'a AND b'") == ["rock and roll"]
        assert names("name = 'rock' and tags.x = 'a'") == ["rock"]
        assert names("name = 'rock and roll' and name = 'rock'") == []

    def test_runs_by_a_param_a_tag_and_a_name_holding_and(self, client: TestClient, world: World) -> None:
        experiment_id = ok(
            mlflow_call(client, "POST", "experiments/create", world.headers(), {"name": "quoted"})
        )["experiment_id"]
        runs = {}
        for name, param, tag in (("rock and roll", "sand", "a AND b"), ("other", "xyz", "a")):
            run = ok(
                mlflow_call(
                    client,
                    "POST",
                    "runs/create",
                    world.headers(),
                    {"experiment_id": experiment_id, "run_name": name, "tags": [{"key": "x", "value": tag}]},
                )
            )["run"]
            runs[name] = run["info"]["run_id"]
            ok(
                mlflow_call(
                    client,
                    "POST",
                    "runs/log-parameter",
                    world.headers(),
                    {"run_id": runs[name], "key": "p", "value": param},
                )
            )

        def found(text: str) -> list[str]:
            body = {"experiment_ids": [experiment_id], "filter": text}
            answer = ok(mlflow_call(client, "POST", "runs/search", world.headers(), body))
            return sorted(run["info"]["run_id"] for run in answer.get("runs", []))

        assert found("params.p LIKE '%and%'") == [runs["rock and roll"]]
        assert found("tags.x = 'a AND b'") == [runs["rock and roll"]]
        assert found("attributes.run_name = 'rock and roll'") == [runs["rock and roll"]]
        assert found("params.p LIKE '%and%' and tags.x = 'a AND b'") == [runs["rock and roll"]]
        assert found("params.p = 'xyz' and tags.x = 'a'") == [runs["other"]]

    def test_registered_models_by_a_name_holding_and(self, client: TestClient, world: World) -> None:
        for name in ("rock and roll", "rock"):
            ok(mlflow_call(client, "POST", "registered-models/create", world.headers(), {"name": name}))

        def names(text: str) -> list[str]:
            found = ok(
                mlflow_call(client, "GET", "registered-models/search", world.headers(), {"filter": text})
            )
            return sorted(model["name"] for model in found.get("registered_models", []))

        assert names("name = 'rock and roll'") == ["rock and roll"]
        assert names("name LIKE 'rock and%'") == ["rock and roll"]
        assert names("name = 'rock'") == ["rock"]
