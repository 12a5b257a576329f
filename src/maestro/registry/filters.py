"""`filter_string` for listing models by name: MLflow's filter for registered models.

    name LIKE '%fraud%'
    name = 'customer-churn' AND tags.team = 'growth'
    tags.`cost centre` != 'x' AND description ILIKE '%churn%'

Conditions joined by AND; a key is `name`, `description` or `tags.<key>` (a tag key
may be backquoted or double-quoted); operators `=`, `!=`, `LIKE` (case-sensitive on
both databases), `ILIKE`; values in single or double quotes (a doubled quote is one
quote). A tag condition holds for models having that tag with a matching value.

The registry keeps its own small reader: the full search language lives in
``tracking.search``, a sibling the registry may not import. Every value is a bound
parameter; anything malformed is a 422 naming ``filter_string`` and the position.
"""

from __future__ import annotations

import re
from dataclasses import dataclass
from typing import Any

from sqlalchemy import ColumnElement, exists, func

from maestro.errors import ValidationFailed
from maestro.registry.models import ModelTag, RegisteredModel

MAX_FILTER_LENGTH = 1000
MAX_CONDITIONS = 20
OPERATORS = ("!=", "=", "ILIKE", "LIKE")
FIELDS = ("name", "description")
_WORD = re.compile(r"[A-Za-z_][A-Za-z0-9_.:-]*")
_SPACE = re.compile(r"\s*")
_OPERATOR = re.compile(r"(!=|=|(?i:ilike|like)(?![A-Za-z0-9_]))")
_AND = re.compile(r"(?i:and)(?![A-Za-z0-9_])")


@dataclass(frozen=True)
class Condition:
    field: str  # name, description, or tag
    tag: str | None
    operator: str
    value: str


def _invalid(reason: str, position: int) -> ValidationFailed:
    return ValidationFailed(
        f"Invalid filter_string: {reason} at position {position}",
        details=[("filter_string", f"{reason} at position {position}")],
    )


class _Reader:
    def __init__(self, text: str) -> None:
        self.text = text
        self.at = 0

    def skip_space(self) -> None:
        match = _SPACE.match(self.text, self.at)
        self.at = match.end() if match else self.at

    def quoted(self, what: str) -> str:
        """Text between quotes (`'`, `"`, or `` ` `` for keys), a doubled quote being one."""
        start = self.at
        quote = self.text[self.at] if self.at < len(self.text) else ""
        if quote not in ("'", '"', "`"):
            raise _invalid(f"expected {what} in quotes", start)
        self.at += 1
        parts: list[str] = []
        while True:
            end = self.text.find(quote, self.at)
            if end < 0:
                raise _invalid("unterminated quoted text", start)
            parts.append(self.text[self.at : end])
            self.at = end + 1
            if self.text.startswith(quote, self.at):
                parts.append(quote)
                self.at += 1
                continue
            return "".join(parts)

    def key(self) -> tuple[str, str | None]:
        start = self.at
        if self.text.startswith(("tags.", "TAGS.", "Tags."), self.at):
            self.at += len("tags.")
            if self.at < len(self.text) and self.text[self.at] in ("`", '"'):
                tag = self.quoted("a tag key")
            else:
                match = _WORD.match(self.text, self.at)
                if match is None:
                    raise _invalid("expected a tag key after tags.", self.at)
                tag, self.at = match.group(), match.end()
            if not tag:
                raise _invalid("empty tag key", start)
            return "tag", tag
        match = _WORD.match(self.text, self.at)
        if match is None or match.group().lower() not in FIELDS:
            raise _invalid("expected name, description or tags.<key>", start)
        self.at = match.end()
        return match.group().lower(), None

    def operator(self) -> str:
        match = _OPERATOR.match(self.text, self.at)
        if match is None:
            raise _invalid("expected one of =, !=, LIKE, ILIKE", self.at)
        self.at = match.end()
        return match.group().upper()


def parse(text: str) -> list[Condition]:
    """The conditions of a filter; raises ValidationFailed (422) with the position."""
    if len(text) > MAX_FILTER_LENGTH:
        raise _invalid(f"longer than {MAX_FILTER_LENGTH} characters", MAX_FILTER_LENGTH)
    if "\x00" in text:
        raise _invalid("a NUL character", text.index("\x00"))
    reader = _Reader(text)
    conditions: list[Condition] = []
    reader.skip_space()
    if reader.at == len(text):
        return conditions
    while True:
        field, tag = reader.key()
        reader.skip_space()
        operator = reader.operator()
        reader.skip_space()
        value = reader.quoted("a value")
        conditions.append(Condition(field, tag, operator, value))
        if len(conditions) > MAX_CONDITIONS:
            raise _invalid(f"more than {MAX_CONDITIONS} conditions", reader.at)
        reader.skip_space()
        if reader.at == len(text):
            return conditions
        match = _AND.match(text, reader.at)
        if match is None:
            raise _invalid("expected AND between conditions", reader.at)
        reader.at = match.end()
        reader.skip_space()


def _glob(pattern: str) -> str:
    """A LIKE pattern as SQLite's case-sensitive GLOB: % is *, _ is ?, and GLOB's own
    special characters are matched literally."""
    special = {"*": "[*]", "?": "[?]", "[": "[[]", "%": "*", "_": "?"}
    return "".join(special.get(char, char) for char in pattern)


def _compare(column: Any, operator: str, value: str, dialect: str) -> ColumnElement[bool]:
    if operator == "=":
        return column == value
    if operator == "!=":
        return column != value
    if operator == "ILIKE":
        return func.lower(column).like(value.lower())
    if dialect == "sqlite":
        return column.op("GLOB", is_comparison=True)(_glob(value))
    return column.like(value)


def where(conditions: list[Condition], dialect: str) -> list[ColumnElement[bool]]:
    """SQL conditions on RegisteredModel for the parsed filter."""
    clauses: list[ColumnElement[bool]] = []
    for condition in conditions:
        if condition.field == "tag":
            clauses.append(
                exists().where(
                    ModelTag.model_id == RegisteredModel.id,
                    ModelTag.key == condition.tag,
                    _compare(ModelTag.value, condition.operator, condition.value, dialect),
                )
            )
        else:
            column = getattr(RegisteredModel, condition.field)
            clauses.append(_compare(func.coalesce(column, ""), condition.operator, condition.value, dialect))
    return clauses
