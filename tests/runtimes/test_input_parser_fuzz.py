"""Whatever a client sends as rows, the input parser answers with a float matrix or its
own ``InputError`` (a 422 naming the field): never another exception, which a route
would turn into a 500 and the model server's prediction threads could not answer at all."""

from __future__ import annotations

import json
import math
from typing import Any

import numpy as np
import orjson
import pytest
from hypothesis import HealthCheck, event, given, settings
from hypothesis import strategies as st

from maestro.runtimes import (
    Feature,
    InputError,
    InputSchema,
    columns_to_matrix,
    matrix_from_json,
    tensor_to_matrix,
    to_matrix,
)

SCHEMAS = (
    InputSchema([Feature("age", "integer"), Feature("income"), Feature("member", "boolean")], "model_schema"),
    InputSchema([Feature("x")], "model_schema"),
    InputSchema.generated(3),
)
NAMES = sorted({name for schema in SCHEMAS for name in schema.names})

scalars = st.one_of(
    st.none(),
    st.booleans(),
    st.integers(),
    st.integers(min_value=-(10**400), max_value=10**400),
    st.floats(allow_nan=True, allow_infinity=True),
    st.sampled_from([1e300, 1.5e300, -1e308, 5e-324, 0.5, 2.0]),
    st.sampled_from(["NaN", "Infinity", "-Infinity", "1", "", "true", "\u202e", "a" * 300]),
    st.text(max_size=5),
)
keys = st.one_of(st.sampled_from(NAMES), st.text(max_size=5), st.just("x" * 150))
json_ish = st.recursive(
    scalars,
    lambda children: st.one_of(st.lists(children, max_size=5), st.dictionaries(keys, children, max_size=5)),
    max_leaves=25,
)
numbers = st.one_of(
    st.integers(min_value=-3, max_value=3),
    st.floats(min_value=-10, max_value=10),
    st.sampled_from([None, True, False, 0.5, 1e300, 1e301, 10**400, math.nan, math.inf, -math.inf]),
)


def nearly_right(schema: InputSchema) -> st.SearchStrategy[Any]:
    """Rows of the schema's width and names, mostly of numbers, so the search also
    reaches the checks past the rows' shape (types, NaN, magnitudes, integers, booleans)."""
    value = st.one_of(numbers, numbers, scalars)
    as_list = st.lists(value, min_size=schema.width, max_size=schema.width)
    as_object = st.fixed_dictionaries(dict.fromkeys(schema.names, value))
    row = st.one_of(as_list, as_list, as_object, as_object, json_ish)
    return st.lists(row, min_size=1, max_size=5)


def rows_for(schema: InputSchema) -> st.SearchStrategy[Any]:
    return st.one_of(json_ish, st.lists(json_ish, max_size=5), nearly_right(schema), nearly_right(schema))


FUZZ = settings(max_examples=400, deadline=None, suppress_health_check=list(HealthCheck))


def _check(call: Any, schema: InputSchema, *, allow_nan: bool, prefix: str) -> None:
    error: InputError | None = None
    try:
        matrix = call()
    except InputError as refused:
        error = refused
    if error is not None:
        event(f"refused: {error.reason}")
        assert error.status_code == 422
        assert error.message
        assert error.details and error.details[0].message
        field = error.details[0].field
        assert field is None or field.startswith(prefix.rstrip(".")) or field in ("shape", "columns")
        return
    event("a matrix")
    assert isinstance(matrix, np.ndarray) and matrix.dtype == np.float64
    assert matrix.ndim == 2 and matrix.shape[0] >= 1 and matrix.shape[1] == schema.width
    values = matrix[~np.isnan(matrix)] if allow_nan else matrix
    assert np.all(np.abs(values) <= 1e300)


schemas = st.sampled_from(SCHEMAS)


@FUZZ
@given(schema=schemas, data=st.data(), allow_nan=st.booleans())
def test_any_rows_give_a_matrix_or_an_input_error(
    schema: InputSchema, data: st.DataObject, allow_nan: bool
) -> None:
    value = data.draw(rows_for(schema))
    _check(
        lambda: to_matrix(value, schema, allow_nan=allow_nan, max_rows=4, prefix="instances."),
        schema,
        allow_nan=allow_nan,
        prefix="instances.",
    )


def _json_bytes(value: Any) -> bytes | None:
    """The body a client would send; None when JSON cannot carry the value at all."""
    try:
        return orjson.dumps({"instances": value})
    except (TypeError, orjson.JSONEncodeError):
        try:
            return json.dumps(
                {"instances": value}, separators=(",", ":")
            ).encode()  # NaN, Infinity, huge integers
        except ValueError:
            return None


@FUZZ
@given(schema=schemas, data=st.data(), key=st.sampled_from(["instances", None]))
def test_any_body_gives_a_matrix_or_an_input_error(
    schema: InputSchema, data: st.DataObject, key: str | None
) -> None:
    body = _json_bytes(data.draw(rows_for(schema)))
    if body is None:
        return
    if key is None:
        body = body[len(b'{"instances":') : -1]
    _check(
        lambda: matrix_from_json(body, schema, key=key, max_rows=4),
        schema,
        allow_nan=False,
        prefix=f"{key}." if key else "",
    )


@FUZZ
@given(schema=schemas, data=st.data(), allow_nan=st.booleans())
def test_any_table_gives_a_matrix_or_an_input_error(
    schema: InputSchema, data: st.DataObject, allow_nan: bool
) -> None:
    columns = data.draw(st.one_of(json_ish, st.permutations(list(schema.names))))
    table = data.draw(rows_for(schema))
    _check(
        lambda: columns_to_matrix(columns, table, schema, allow_nan=allow_nan, max_rows=4),
        schema,
        allow_nan=allow_nan,
        prefix="data.",
    )


@FUZZ
@given(
    schema=schemas,
    data=st.data(),
    shape=st.one_of(json_ish, st.lists(st.integers(min_value=-2, max_value=10**30), max_size=3)),
)
def test_any_tensor_gives_a_matrix_or_an_input_error(
    schema: InputSchema, data: st.DataObject, shape: Any
) -> None:
    tensor = data.draw(st.one_of(rows_for(schema), st.lists(numbers, max_size=12)))
    if data.draw(st.booleans()):
        shape = [len(tensor) // schema.width if isinstance(tensor, list) else 1, schema.width]
    _check(
        lambda: tensor_to_matrix(tensor, shape, schema, max_rows=4), schema, allow_nan=False, prefix="data."
    )


@pytest.mark.parametrize(
    "instances",
    [
        [{"age": 1, "income": 2.0, "member": True}, [1, 2, 3]],
        [[1, 2, 3], {"age": 1, "income": 2.0, "member": True}],
        [[1, 2, 3], [4, 5, 6], {"age": 1}],
    ],
)
def test_rows_mixing_objects_and_lists_are_refused_naming_the_row(instances: list[Any]) -> None:
    with pytest.raises(InputError) as caught:
        to_matrix(instances, SCHEMAS[0], prefix="instances.")
    odd = next(i for i, r in enumerate(instances) if type(r) is not type(instances[0]))
    assert caught.value.reason == "mixed_rows"
    assert caught.value.row == odd
    assert caught.value.details[0].field == f"instances.{odd}"
    assert f"Row {odd}" in caught.value.message


def test_a_huge_integer_row_is_described_without_printing_it() -> None:
    with pytest.raises(InputError) as caught:
        to_matrix([10**5000], SCHEMAS[0])
    assert caught.value.reason == "not_a_row"
    assert len(caught.value.message) < 300


def test_the_nan_text_is_not_a_number() -> None:
    with pytest.raises(InputError) as caught:
        to_matrix([["NaN", 1, True]], SCHEMAS[0], allow_nan=True)
    assert caught.value.reason == "wrong_type"
