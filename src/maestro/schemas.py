"""Rules every domain's request schemas share for the text and the free-form JSON that
clients send.

Text: NUL and other control characters are refused by each type's own pattern (next to
its length). On top of that, ``Visible`` refuses the characters that are invisible yet
change how the text around them reads: bidirectional embeddings, overrides, isolates and
marks, and zero-width characters. ``\\u202egnp.exe`` displays as ``exe.png``, and
``admin\\u200b`` looks like ``admin``, so a name could pass for another in a list, a model
card or a download. Outputs strip them too (``strip_invisible``), for text stored before.

JSON: a free-form document (metrics, a schema, a config) may nest at most
``MAX_JSON_DEPTH`` levels, well within what responses can serialise, so whatever was
accepted can always be shown again.
"""

from __future__ import annotations

import re
from typing import Any

from pydantic import AfterValidator, BaseModel, ConfigDict, field_validator

# U+061C Arabic letter mark; U+200B-U+200D zero-width space, non-joiner and joiner;
# U+200E/U+200F left-to-right and right-to-left marks; U+202A-U+202E embeddings and
# overrides; U+2060-U+2064 word joiner and invisible operators; U+2066-U+2069 isolates;
# U+206A-U+206F deprecated format controls; U+FEFF zero-width no-break space (BOM).
_INVISIBLE = re.compile(r"[\u061c\u200b-\u200f\u202a-\u202e\u2060-\u206f\ufeff]")
MAX_JSON_DEPTH = 64


def find_invisible(text: str) -> str | None:
    """The first invisible or direction-changing character of ``text``, if any."""
    match = _INVISIBLE.search(text)
    return match.group(0) if match else None


def strip_invisible(text: str) -> str:
    return _INVISIBLE.sub("", text)


def invisible_message(char: str) -> str:
    return f"must not contain invisible or direction-changing characters (found U+{ord(char):04X})"


def refuse_invisible(value: str) -> str:
    char = find_invisible(value)
    if char is not None:
        raise ValueError(invisible_message(char))
    return value


# Put in a string type's Annotated[...] metadata: `Annotated[str, StringConstraints(...), Visible]`.
Visible = AfterValidator(refuse_invisible)


def json_depth(value: Any) -> int:
    """How many levels of objects and arrays ``value`` nests (a scalar is 0), counted a
    level at a time without recursion, so no document is too deep to measure."""
    depth, level = 0, [value]
    while True:
        below: list[Any] = []
        nests = False
        for item in level:
            if isinstance(item, dict):
                below.extend(item.values())
                nests = True
            elif isinstance(item, list | tuple):
                below.extend(item)
                nests = True
        if not nests:
            return depth
        depth += 1
        level = below


def limit_json_depth(value: Any) -> Any:
    if json_depth(value) > MAX_JSON_DEPTH:
        raise ValueError(f"must not nest objects and arrays more than {MAX_JSON_DEPTH} levels deep")
    return value


# Put in a free-form JSON field's Annotated[...] metadata: `Annotated[dict[str, Any], JsonDepth]`.
JsonDepth = AfterValidator(limit_json_depth)


class StrictModel(BaseModel):
    """Request bodies refuse unknown fields: `role` or `organization_id` smuggled into
    a body is a 422, never silently applied. Text may not hold NUL characters, which
    PostgreSQL cannot store, so both databases answer the same way."""

    model_config = ConfigDict(extra="forbid")

    @field_validator("*", mode="after")
    @classmethod
    def _no_nul(cls, value: Any) -> Any:
        if isinstance(value, str) and "\x00" in value:
            raise ValueError("must not contain NUL characters")
        return value
