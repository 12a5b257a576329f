"""Request rows become the float matrix a runtime takes, or an error naming the row and
the feature at fault."""

from __future__ import annotations

import math
from typing import Any

import numpy as np
import orjson
import pytest

from maestro.runtimes import (
    Feature,
    InputError,
    InputSchema,
    ModelLoadError,
    columns_to_matrix,
    matrix_from_json,
    tensor_to_matrix,
    to_matrix,
)
from maestro.runtimes.inputs import parse_model_schema, sample_matrix

SCHEMA = InputSchema(
    [Feature("age", "integer"), Feature("income"), Feature("member", "boolean")], "model_schema"
)
WIDE = InputSchema.generated(20)


def error_of(rows: Any, schema: InputSchema = SCHEMA, **options: Any) -> InputError:
    with pytest.raises(InputError) as caught:
        to_matrix(rows, schema, **options)
    return caught.value


class TestObjects:
    def test_named_features_in_any_order(self) -> None:
        rows = [
            {"age": 41, "income": 52000.5, "member": True},
            {"member": False, "income": 0, "age": 19},
        ]
        matrix = to_matrix(rows, SCHEMA)
        assert matrix.dtype == np.float64 and matrix.flags.c_contiguous
        assert matrix.tolist() == [[41.0, 52000.5, 1.0], [19.0, 0.0, 0.0]]

    def test_a_missing_feature_is_named(self) -> None:
        error = error_of([{"age": 1, "income": 2, "member": True}, {"age": 1, "member": True}])
        assert (error.reason, error.row, error.feature) == ("missing", 1, "income")
        assert error.details[0].field == "1.income"
        assert "Row 1" in error.message and "'income'" in error.message
        assert error.status_code == 422

    def test_an_extra_feature_is_named(self) -> None:
        error = error_of([{"age": 1, "income": 2, "member": True, "zip": 12345}])
        assert (error.reason, error.row, error.feature) == ("extra", 0, "zip")

    def test_a_renamed_feature_is_reported_as_missing(self) -> None:
        error = error_of([{"age": 1, "salary": 2, "member": True}])
        assert (error.reason, error.feature) == ("missing", "income")

    @pytest.mark.parametrize(
        ("value", "described"),
        [
            ("52000", "a string"),
            (True, "true/false"),
            (None, "null"),
            ([1], "a list"),
            ({"v": 1}, "an object"),
        ],
    )
    def test_a_wrong_typed_value_is_named(self, value: Any, described: str) -> None:
        error = error_of(
            [{"age": 30, "income": 1.0, "member": True}, {"age": 30, "income": value, "member": True}]
        )
        assert (error.reason, error.row, error.feature) == ("wrong_type", 1, "income")
        assert described in error.message and "expected a number" in error.message

    def test_integer_and_boolean_features_are_checked(self) -> None:
        error = error_of([{"age": 30.5, "income": 1.0, "member": True}])
        assert (error.reason, error.feature) == ("not_integer", "age")
        error = error_of([{"age": 30, "income": 1.0, "member": 2}])
        assert (error.reason, error.feature) == ("not_boolean", "member")
        error = error_of([{"age": True, "income": 1.0, "member": True}])
        assert (error.reason, error.feature) == ("wrong_type", "age")
        assert to_matrix([{"age": 30.0, "income": 1, "member": 1}], SCHEMA).tolist() == [[30.0, 1.0, 1.0]]

    def test_the_prefix_names_where_the_rows_were(self) -> None:
        error = error_of([{"age": 1, "member": True}], prefix="instances.")
        assert error.details[0].field == "instances.0.income"

    def test_numpy_scalars_are_numbers(self) -> None:
        rows = [{"age": np.int64(3), "income": np.float32(2.5), "member": np.bool_(True)}]
        assert to_matrix(rows, SCHEMA).tolist() == [[3.0, 2.5, 1.0]]


class TestLists:
    def test_lists_of_numbers(self) -> None:
        rows = [[float(i + j) for j in range(20)] for i in range(5)]
        assert np.array_equal(to_matrix(rows, WIDE), np.array(rows))

    def test_the_wrong_width_is_named(self) -> None:
        rows = [[0.0] * 20, [0.0] * 19]
        error = error_of(rows, WIDE)
        assert (error.reason, error.row) == ("width", 1)
        assert "19 values" in error.message and "20 features" in error.message

    def test_a_numeric_string_is_not_silently_converted(self) -> None:
        rows = [[0.0] * 20]
        rows[0][7] = "1.5"  # type: ignore[call-overload]
        error = error_of(rows, WIDE)
        assert (error.reason, error.row, error.feature) == ("wrong_type", 0, "f7")

    def test_a_boolean_is_not_a_number(self) -> None:
        rows: list[list[Any]] = [[0.0] * 20]
        rows[0][3] = False
        assert error_of(rows, WIDE).feature == "f3"

    def test_rows_that_are_not_rows(self) -> None:
        assert error_of({"age": 1}, SCHEMA).reason == "not_rows"
        assert error_of([], SCHEMA).reason == "empty"
        error = error_of([[1, 2.0, True], "1,2,3"], SCHEMA)
        assert (error.reason, error.row) == ("not_a_row", 1)

    def test_too_many_rows(self) -> None:
        error = error_of([[0.0] * 20] * 11, WIDE, max_rows=10)
        assert error.reason == "too_many_rows"


class TestNonFinite:
    @pytest.mark.parametrize(
        ("value", "reason"),
        [
            (math.nan, "nan"),
            (math.inf, "infinite"),
            (-math.inf, "infinite"),
            (1e301, "too_large"),
            (-1e301, "too_large"),
            (10**400, "too_large"),
        ],
    )
    def test_refused_and_named(self, value: Any, reason: str) -> None:
        rows: list[list[Any]] = [[0.0] * 20 for _ in range(3)]
        rows[2][5] = value
        error = error_of(rows, WIDE)
        assert (error.reason, error.row, error.feature) == (reason, 2, "f5")
        error = error_of([dict(zip(WIDE.names, row, strict=True)) for row in rows], WIDE)
        assert (error.reason, error.row, error.feature) == (reason, 2, "f5")

    def test_the_largest_accepted_magnitude(self) -> None:
        assert to_matrix([[1e300] + [0.0] * 19], WIDE)[0, 0] == 1e300

    def test_nan_and_null_when_allowed(self) -> None:
        rows: list[list[Any]] = [[0.0] * 20]
        rows[0][1], rows[0][2] = math.nan, None
        matrix = to_matrix(rows, WIDE, allow_nan=True)
        assert math.isnan(matrix[0, 1]) and math.isnan(matrix[0, 2])
        rows[0][3] = math.inf
        assert error_of(rows, WIDE, allow_nan=True).reason == "infinite"


class TestArrays:
    def test_a_numeric_array(self) -> None:
        array = np.arange(40, dtype=np.int32).reshape(2, 20)
        matrix = to_matrix(array, WIDE)
        assert matrix.dtype == np.float64 and np.array_equal(matrix, array)

    @pytest.mark.parametrize(
        ("array", "reason"),
        [
            (np.zeros(20), "shape"),
            (np.zeros((2, 2, 5)), "shape"),
            (np.zeros((2, 19)), "width"),
            (np.zeros((0, 20)), "empty"),
        ],
    )
    def test_the_wrong_shape(self, array: np.ndarray, reason: str) -> None:
        assert error_of(array, WIDE).reason == reason

    def test_non_finite_values_in_an_array(self) -> None:
        array = np.zeros((4, 20))
        array[3, 11] = np.nan
        error = error_of(array, WIDE)
        assert (error.reason, error.row, error.feature) == ("nan", 3, "f11")

    def test_an_array_of_text(self) -> None:
        array = np.array([["1.0"] * 20])
        assert error_of(array, WIDE).reason == "wrong_type"


class TestBodies:
    def test_json_straight_to_a_matrix(self) -> None:
        body = orjson.dumps({"instances": [[0.5] * 20, [1.5] * 20]})
        matrix = matrix_from_json(body, WIDE, key="instances")
        assert matrix.shape == (2, 20) and matrix[1, 0] == 1.5

    def test_errors_name_the_field_in_the_body(self) -> None:
        body = orjson.dumps({"instances": [[0.5] * 20, [0.5] * 19]})
        with pytest.raises(InputError) as caught:
            matrix_from_json(body, WIDE, key="instances")
        assert caught.value.details[0].field == "instances.1"

    @pytest.mark.parametrize("body", [b"{not json", b"[[NaN, 1.0]]", b"[" * 5000 + b"]" * 5000])
    def test_bodies_that_are_not_json(self, body: bytes) -> None:
        with pytest.raises(InputError) as caught:
            matrix_from_json(body, WIDE)
        assert caught.value.reason == "invalid_json"

    def test_a_body_without_the_key(self) -> None:
        with pytest.raises(InputError) as caught:
            matrix_from_json(b'{"inputs": []}', WIDE, key="instances")
        assert caught.value.field == "instances"

    def test_columns_in_any_order(self) -> None:
        matrix = columns_to_matrix(["income", "member", "age"], [[10.0, True, 3]], SCHEMA)
        assert matrix.tolist() == [[3.0, 10.0, 1.0]]

    @pytest.mark.parametrize(
        ("columns", "reason", "feature"),
        [
            (["income", "member"], "missing", "age"),
            (["income", "member", "age", "zip"], "extra", "zip"),
            (["income", "member", "age", "age"], "extra", "age"),
        ],
    )
    def test_columns_that_do_not_match(self, columns: list[str], reason: str, feature: str) -> None:
        with pytest.raises(InputError) as caught:
            columns_to_matrix(columns, [[1] * len(columns)], SCHEMA)
        assert (caught.value.reason, caught.value.feature) == (reason, feature)

    def test_a_flat_tensor(self) -> None:
        matrix = tensor_to_matrix(list(range(40)), [2, 20], WIDE)
        assert matrix.shape == (2, 20) and matrix[1, 0] == 20.0
        nested = tensor_to_matrix([[0.0] * 20] * 3, [3, 20], WIDE)
        assert nested.shape == (3, 20)

    @pytest.mark.parametrize(
        ("data", "shape"),
        [
            (list(range(39)), [2, 20]),
            (list(range(40)), [4, 10]),
            (list(range(40)), [40]),
            ([[0.0] * 20], [2, 20]),
        ],
    )
    def test_a_tensor_that_does_not_fit(self, data: list[Any], shape: list[int]) -> None:
        with pytest.raises(InputError):
            tensor_to_matrix(data, shape, WIDE)

    def test_a_bad_value_in_a_flat_tensor_is_located(self) -> None:
        data: list[Any] = [0.0] * 40
        data[25] = "x"
        with pytest.raises(InputError) as caught:
            tensor_to_matrix(data, [2, 20], WIDE)
        assert (caught.value.row, caught.value.feature) == (1, "f5")


class TestDeclaredSchema:
    def test_types_and_ranges(self) -> None:
        schema = parse_model_schema(
            {
                "inputs": [
                    {"name": "age", "type": "long", "min": 18, "max": 90},
                    {"name": "score", "type": "double"},
                    {"name": "vip", "type": "bool"},
                    {"name": "plain"},
                ]
            }
        )
        assert schema is not None
        assert [f.type for f in schema.features] == ["integer", "float", "boolean", "float"]
        sample = sample_matrix(schema, 200)
        assert sample[:, 0].min() >= 18 and sample[:, 0].max() <= 90
        assert np.array_equal(sample[:, 0], np.round(sample[:, 0]))
        assert set(sample[:, 2].tolist()) <= {0.0, 1.0}

    def test_no_declared_inputs(self) -> None:
        assert parse_model_schema(None) is None
        assert parse_model_schema({"outputs": [{"name": "y"}]}) is None

    @pytest.mark.parametrize(
        "schema",
        [
            {"inputs": "age"},
            {"inputs": []},
            {"inputs": [{"type": "float"}]},
            {"inputs": [{"name": "a"}, {"name": "a"}]},
            {"inputs": [{"name": "a", "type": "string"}]},
            {"inputs": [{"name": "a", "min": "low"}]},
            {"inputs": [{"name": "a", "min": 5, "max": 1}]},
            {"inputs": [{"name": "x" * 201}]},
        ],
    )
    def test_unusable_schemas(self, schema: dict[str, Any]) -> None:
        with pytest.raises(ModelLoadError) as caught:
            parse_model_schema(schema)
        assert caught.value.reason == "invalid_schema"
