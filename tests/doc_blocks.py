"""The code blocks of Maestro's documentation, as the documentation test runs them.

A fenced block is run when its language is ``bash`` or ``python``, unless the line
just before the fence is ``<!-- not-tested: <reason> -->``. Blocks in other
languages (``json``, ``text``, ``console``, ``yaml``, ``javascript``) show output,
configuration or code for other runtimes, and are never run. A fence without a
language is an error: a reader cannot tell whether it is something to type.
"""

from __future__ import annotations

import re
from dataclasses import dataclass
from pathlib import Path

from markdown_it import MarkdownIt

RUNNABLE = ("bash", "python")
SHOWN = ("json", "text", "console", "yaml", "javascript")
NOT_TESTED = re.compile(r"^<!--\s*not-tested:\s*(?P<reason>.*?)\s*-->$")


@dataclass(frozen=True)
class Block:
    path: Path
    line: int  # 1-based line of the opening fence
    language: str
    text: str
    skip_reason: str | None

    @property
    def where(self) -> str:
        return f"{self.path.as_posix()}:{self.line}"

    @property
    def runs(self) -> bool:
        return self.language in RUNNABLE and self.skip_reason is None


class DocError(ValueError):
    """A block the documentation test cannot classify."""


def blocks(root: Path, relative: str) -> list[Block]:
    """Every fenced block of one document, in order."""
    path = root / relative
    source = path.read_text(encoding="utf-8")
    lines = source.splitlines()
    found: list[Block] = []
    for token in MarkdownIt("commonmark").parse(source):
        if token.type != "fence" or token.map is None:
            continue
        start = token.map[0]
        language = token.info.strip().split(" ")[0]
        where = f"{relative}:{start + 1}"
        if not language:
            raise DocError(f"{where}: the code fence names no language (bash, python, json, text, …)")
        if language not in RUNNABLE + SHOWN:
            raise DocError(f"{where}: unknown fence language {language!r}")
        marker = NOT_TESTED.match(lines[start - 1].strip()) if start > 0 else None
        if marker is not None and not marker["reason"]:
            raise DocError(f"{where}: a not-tested block needs its reason")
        if marker is not None and language not in RUNNABLE:
            raise DocError(f"{where}: only bash and python blocks run; a {language} block needs no marker")
        found.append(
            Block(
                path=Path(relative),
                line=start + 1,
                language=language,
                text=token.content,
                skip_reason=marker["reason"] if marker else None,
            )
        )
    return found
