"""MLflow's search filter for experiments, logged models, registered models and model
versions: conditions joined by AND, such as

    name LIKE 'fraud%' AND tags.`team name` = 'risk' AND creation_time > 1700000000000

A condition is a key (a field, or ``tags.<key>``; ``attribute.``/``attributes.`` may
prefix a field; a key may be backquoted or double-quoted), an operator (``= != <> < <=
> >= LIKE ILIKE NOT LIKE NOT ILIKE IN NOT IN``) and a value: a 'quoted' string ('' is a
quote inside one), a number, or a parenthesised list of them after IN. Each field has a
type, and a condition must fit it: text takes strings (and LIKE and IN), times take
epoch milliseconds and integers whole numbers, with the six comparisons only (as
MLflow's own server); anything else is a ``FilterError``, which the API answers as
MLflow's ``INVALID_PARAMETER_VALUE``.

Parsing is linear in the filter's length. The scanner moves left to right and every
step consumes what it reads: whitespace, words and numbers are read by regular
expressions with a single quantifier each (``\\s+``, ``[\\w.]+``, digits then an
optional fraction and exponent, each part starting with a character the one before
cannot match), so a match never backtracks over what it has read; quoted text is
searched for its closing quote with ``str.find``. A filter is at most
``MAX_FILTER_LENGTH`` characters in the first place.
"""

from __future__ import annotations

import re
from collections.abc import Mapping
from dataclasses import dataclass
from datetime import UTC, datetime, timedelta
from typing import Literal

MAX_FILTER_LENGTH = 4000
MAX_CONDITIONS = 20
MAX_PATTERN_CONDITIONS = 10  # LIKE and ILIKE read every candidate value in full
MAX_PATTERN_LENGTH = 250
MAX_IN_VALUES = 100
MAX_NUMBER_LENGTH = 40
MAX_INTEGER = 2**31 - 1
MAX_TIME_MS = 253_402_300_799_999  # 9999-12-31T23:59:59.999Z
EPOCH = datetime(1970, 1, 1, tzinfo=UTC)

FieldType = Literal["text", "time", "integer"]
Value = str | int | float | datetime
COMPARISONS = ("=", "!=", "<", "<=", ">", ">=")
OPERATORS_FOR: dict[str, frozenset[str]] = {
    "text": frozenset({*COMPARISONS, "LIKE", "ILIKE", "NOT LIKE", "NOT ILIKE", "IN", "NOT IN"}),
    "time": frozenset(COMPARISONS),  # as MLflow's server: no IN or LIKE for numbers
    "integer": frozenset(COMPARISONS),
}

_SPACE = re.compile(r"\s+")
_PREFIX = re.compile(r"(attributes?|tags?)\.", re.IGNORECASE)
_BARE_KEY = re.compile(r"[\w.]+")
_WORD = re.compile(r"[A-Za-z_]\w*")
_SYMBOL = re.compile(r"!=|<>|<=|>=|=|<|>")
_NUMBER = re.compile(r"[-+]?\d+(?:\.\d+)?(?:[eE][-+]?\d+)?")


class FilterError(ValueError):
    """The filter is malformed, or a condition does not fit its field."""


@dataclass(frozen=True)
class Condition:
    kind: Literal["field", "tag"]
    key: str  # the field's name, or the tag's key
    operator: str  # one of OPERATORS_FOR's, with <> spelled !=
    value: Value | tuple[Value, ...]  # a tuple for IN and NOT IN


class _Scanner:
    def __init__(self, text: str) -> None:
        self.text = text
        self.at = 0

    def skip_space(self) -> None:
        if space := _SPACE.match(self.text, self.at):
            self.at = space.end()

    def done(self) -> bool:
        self.skip_space()
        return self.at >= len(self.text)

    def near(self) -> str:
        return repr(self.text[self.at : self.at + 30]) if self.at < len(self.text) else "the end"

    def fail(self, message: str) -> FilterError:
        return FilterError(f"{message} at position {self.at} (near {self.near()})")

    def quoted(self) -> str:
        """The text between the quote at the current position and its closing quote;
        a doubled quote stands for one."""
        quote = self.text[self.at]
        start = self.at
        parts = []
        index = start + 1
        while True:
            end = self.text.find(quote, index)
            if end < 0:
                self.at = start
                raise self.fail(f"unterminated {quote}")
            parts.append(self.text[index:end])
            if self.text.startswith(quote, end + 1):
                parts.append(quote)
                index = end + 2
                continue
            self.at = end + 1
            return "".join(parts)

    def word(self) -> str | None:
        """The next word in capitals, or None (nothing consumed) if none follows."""
        self.skip_space()
        found = _WORD.match(self.text, self.at)
        if found is None:
            return None
        self.at = found.end()
        return found.group().upper()

    def key(self) -> tuple[Literal["field", "tag"], str]:
        self.skip_space()
        kind: Literal["field", "tag"] = "field"
        if prefix := _PREFIX.match(self.text, self.at):
            kind = "tag" if prefix.group(1).lower().startswith("tag") else "field"
            self.at = prefix.end()
        if self.at < len(self.text) and self.text[self.at] in '`"':
            name = self.quoted()
        elif bare := _BARE_KEY.match(self.text, self.at):
            name = bare.group()
            self.at = bare.end()
        else:
            raise self.fail("expected a key")
        if not name:
            raise self.fail("empty key")
        return kind, name

    def operator(self) -> str:
        self.skip_space()
        if symbol := _SYMBOL.match(self.text, self.at):
            self.at = symbol.end()
            return "!=" if symbol.group() == "<>" else symbol.group()
        start = self.at
        word = self.word()
        if word == "NOT":
            following = self.word()
            if following in ("LIKE", "ILIKE", "IN"):
                return f"NOT {following}"
        elif word in ("LIKE", "ILIKE", "IN"):
            return word
        self.at = start
        raise self.fail("expected an operator (=, !=, <, <=, >, >=, LIKE, ILIKE, IN, NOT …)")

    def scalar(self) -> str | int | float:
        self.skip_space()
        if self.at < len(self.text) and self.text[self.at] in "'\"":
            return self.quoted()
        number = _NUMBER.match(self.text, self.at)
        if number is None:
            raise self.fail("expected a 'quoted' string or a number")
        literal = number.group()
        if len(literal) > MAX_NUMBER_LENGTH:
            raise self.fail(f"a number longer than {MAX_NUMBER_LENGTH} characters")
        self.at = number.end()
        if _WORD.match(self.text, self.at):
            raise self.fail("expected a space after the number")
        if "." in literal or "e" in literal or "E" in literal:
            return float(literal)
        return int(literal)

    def values(self) -> tuple[str | int | float, ...]:
        self.skip_space()
        if not self.text.startswith("(", self.at):
            raise self.fail("expected a parenthesised list after IN")
        self.at += 1
        found = [self.scalar()]
        while True:
            self.skip_space()
            if self.text.startswith(")", self.at):
                self.at += 1
                return tuple(found)
            if not self.text.startswith(",", self.at):
                raise self.fail("expected , or ) in the list")
            self.at += 1
            if len(found) >= MAX_IN_VALUES:
                raise self.fail(f"more than {MAX_IN_VALUES} values in a list")
            found.append(self.scalar())


def _typed(value: str | int | float, field_type: FieldType, key: str) -> Value:
    if field_type == "text":
        if not isinstance(value, str):
            raise FilterError(f"{key[:100]!r} takes a 'quoted' string, not {value!r}")
        return value
    if isinstance(value, str):
        try:
            value = int(value.strip()) if field_type == "integer" else float(value.strip())
        except ValueError:
            raise FilterError(f"{key[:100]!r} takes a number, not {value[:50]!r}") from None
    if field_type == "integer":
        if isinstance(value, float):
            if not value.is_integer():
                raise FilterError(f"{key[:100]!r} takes a whole number, not {value!r}")
            value = int(value)
        if not 0 <= value <= MAX_INTEGER:
            raise FilterError(f"{key[:100]!r} takes a number from 0 to {MAX_INTEGER}")
        return value
    if not (0 <= value <= MAX_TIME_MS):  # NaN fails this too
        raise FilterError(f"{key[:100]!r} takes epoch milliseconds from 0 to {MAX_TIME_MS}")
    return EPOCH + timedelta(milliseconds=value)


def parse(text: str, fields: Mapping[str, FieldType], *, tags: bool = True) -> list[Condition]:
    """The conditions of ``text`` (empty: none), each checked against the type of its
    field (``fields``; tags are text); raises ``FilterError``."""
    if len(text) > MAX_FILTER_LENGTH:
        raise FilterError(f"a filter is at most {MAX_FILTER_LENGTH} characters")
    scanner = _Scanner(text)
    found: list[Condition] = []
    patterns = 0
    while not scanner.done():
        if found and scanner.word() != "AND":
            raise scanner.fail("expected AND between conditions")
        if len(found) >= MAX_CONDITIONS:
            raise FilterError(f"at most {MAX_CONDITIONS} conditions in a filter")
        kind, key = scanner.key()
        if kind == "tag":
            if not tags:
                raise FilterError("this search takes no conditions on tags")
            field_type: FieldType = "text"
        elif key in fields:
            field_type = fields[key]
        else:
            raise FilterError(f"unknown key {key[:100]!r}; one of {', '.join(sorted(fields))} or tags.<key>")
        operator = scanner.operator()
        if operator not in OPERATORS_FOR[field_type]:
            raise FilterError(f"{key[:100]!r} cannot be compared with {operator}")
        value: Value | tuple[Value, ...]
        if operator.endswith("IN"):
            value = tuple(_typed(item, field_type, key) for item in scanner.values())
        else:
            value = _typed(scanner.scalar(), field_type, key)
        if operator.endswith("LIKE"):
            patterns += 1
            if patterns > MAX_PATTERN_CONDITIONS:
                raise FilterError(f"at most {MAX_PATTERN_CONDITIONS} LIKE or ILIKE conditions in a filter")
            if len(value) > MAX_PATTERN_LENGTH:  # type: ignore[arg-type]
                raise FilterError(f"a LIKE or ILIKE pattern is at most {MAX_PATTERN_LENGTH} characters")
        found.append(Condition(kind, key, operator, value))
    return found
