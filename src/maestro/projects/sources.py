"""What other domains hold in an organisation or a project, without projects knowing them.

A domain that keeps files in the artifact store for its rows registers a *file source*
(a query selecting the store keys, and the columns that scope it to an organisation, a
project and, where it applies, an experiment); a domain whose rows a project or an
organisation shows a count of registers a *counter*. Projects and organisations then
count and gather files through this registry and never import a feature domain.

Each domain registers at the import of its service module, and ``maestro.domains``
imports every domain's service module; the app, the worker and the CLI import
``maestro.domains``, so the registry is complete wherever a request or a job runs.
Asking for a counter that nobody registered is an error, never a silent zero.
"""

from __future__ import annotations

from collections.abc import Iterable, Sequence
from dataclasses import dataclass
from typing import Any, Literal

from sqlalchemy import Select, func, select
from sqlalchemy.orm import Session

Scope = Literal["organization", "project"]


@dataclass(frozen=True)
class FileSource:
    """Store keys held for rows of one domain: ``keys`` selects one key column (rows
    with no key are skipped); the other columns place each row in its organisation,
    project and experiment (None: these rows never belong to an experiment)."""

    name: str
    keys: Select[Any]
    organization: Any
    project: Any
    experiment: Any = None


@dataclass(frozen=True)
class Counter:
    """Rows of one domain counted per organisation or per project: those matching
    ``where``, grouped by the scope's column."""

    name: str
    organization: Any
    project: Any
    where: tuple[Any, ...] = ()


_FILE_SOURCES: dict[str, FileSource] = {}
_COUNTERS: dict[str, Counter] = {}


def register_file_source(
    name: str, keys: Select[Any], *, organization: Any, project: Any, experiment: Any = None
) -> None:
    """Declare where a domain's store keys are (registering a name again replaces it)."""
    _FILE_SOURCES[name] = FileSource(name, keys, organization, project, experiment)


def register_counter(name: str, *, organization: Any, project: Any, where: Iterable[Any] = ()) -> None:
    """Declare a count shown per organisation or project (registering a name again replaces it)."""
    _COUNTERS[name] = Counter(name, organization, project, tuple(where))


def file_sources() -> list[str]:
    return list(_FILE_SOURCES)


def counters() -> list[str]:
    return list(_COUNTERS)


def stored_keys(
    session: Session,
    *,
    organization_id: str | None = None,
    project_id: str | None = None,
    experiment_id: str | None = None,
) -> list[str]:
    """The artifact-store keys of every file held for rows in an organisation, a project
    or an experiment (model versions, project files, run artifacts, logged models, and
    whatever else registered): what to remove from the store once those rows are
    deleted, so no file outlives its row."""
    if not _FILE_SOURCES:
        raise RuntimeError("no file source is registered: import maestro.domains first")
    keys: list[str] = []
    for source in _FILE_SOURCES.values():
        statement = source.keys
        scoped = True
        for column, value in (
            (source.organization, organization_id),
            (source.project, project_id),
            (source.experiment, experiment_id),
        ):
            if value is not None:
                if column is None:
                    scoped = False  # these rows never belong to an experiment
                    break
                statement = statement.where(column == value)
        if scoped:
            keys.extend(key for key in session.scalars(statement) if key)
    return keys


def counts(session: Session, name: str, scope: Scope, ids: Sequence[str]) -> dict[str, int]:
    """How many rows counter ``name`` counts for each of ``ids`` (organisations or
    projects, per ``scope``), in one grouped query; ids with none are absent."""
    counter = _COUNTERS.get(name)
    if counter is None:
        raise RuntimeError(f"no counter {name!r} is registered: import maestro.domains first")
    if not ids:
        return {}
    column = counter.organization if scope == "organization" else counter.project
    statement = select(column, func.count()).where(column.in_(ids), *counter.where).group_by(column)
    return {scope_id: count for scope_id, count in session.execute(statement).all()}
