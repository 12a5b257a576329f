"""Profiling a dataset file as reference data, in an isolated process.

A reference dataset is an uploaded file, so it is read the way every dataset is: by the
bounded reader of ``maestro.files.reading``, in an isolated process with a memory and CPU
budget, from a copy in a scratch directory. The process profiles the columns the
deployment serves (numbers: served inputs are numeric) and, when asked, the column that
holds what the model answers (``prediction_column``), with the same profile classes the
folding of served requests uses, and sends the sealed profiles back. The server reads
them as hostile: each is decoded by ``from_bytes`` (magic, version, checksum, layout) and
its counts must agree with the rows the process says it read.

Which columns: those the deployed version declares as inputs (``features``), or, when it
declares none, every numeric and boolean column, at most ``MAX_COLUMNS``. Booleans count
as 1 and 0, as served; text and dates are left out (served inputs are numbers), and so
are columns with names longer than ``MAX_NAME_CHARS``. A prediction column of numbers is
profiled as numbers, of text or booleans as categories (``true``/``false``), each value cut
to ``MAX_VALUE_CHARS`` characters.

This module is imported by the sandbox's zygote: it imports no library that starts
threads (polars is imported by the child).
"""

from __future__ import annotations

import re
import socket
import tempfile
import time
from collections.abc import Sequence
from dataclasses import dataclass, field
from pathlib import Path
from typing import TYPE_CHECKING, Any

import numpy as np
import orjson

from maestro.files.formats import SUFFIXES, DatasetFormat
from maestro.files.reading import (
    ANSWER_SLACK_SECONDS,
    READER_IMPORTS,
    DatasetRefused,
    ReadBounds,
    copy_from_store,
    explain_failure,
    protected_paths,
    read_dataset,
    reading_limits,
    send_outcome,
)
from maestro.monitoring.profiles import CategoricalProfile, ColumnProfile, NumericProfile
from maestro.sandbox import ChildFailed, SandboxError, shared_sandbox, wire

if TYPE_CHECKING:
    import polars as pl

    from maestro.config import Settings
    from maestro.sandbox import Sandbox
    from maestro.storage import ArtifactStore

PROFILE_TASK = "maestro.monitoring.reference_reading:profile_task"
MAX_COLUMNS = 1_000
MAX_NAME_CHARS = 300
MAX_VALUE_CHARS = 200
MAX_SKIPPED = 100  # columns left out that the answer lists
MAX_ANSWER_BYTES = 64 * 1024**2  # sealed profiles: about 10 KiB a numeric column
WALL_CLOCK_FACTOR = 3  # a process's wall-clock time, in multiples of its CPU seconds


class ReferenceRefused(ValueError):
    """The dataset cannot serve as reference data; the message says why, for its owner."""


# --- inside the isolated process ---------------------------------------------------------------------
_NUMBERS = re.compile(r"^(U?Int(8|16|32|64|128)|Float(32|64)|Decimal\b.*|Boolean|Null)$")
_TEXT = re.compile(r"^(String|Utf8|Categorical\b.*|Enum\b.*)$")


def _numeric(dtype: str) -> bool:
    """A column of numbers (or booleans, counted 1 and 0 as served), by its type's name."""
    return bool(_NUMBERS.match(dtype))


def _textual(dtype: str) -> bool:
    return bool(_TEXT.match(dtype))


def _plan(
    schema: dict[str, str], features: Sequence[str] | None, prediction: str | None
) -> tuple[dict[str, str], list[list[str]]]:
    """Which columns to profile, as what ({name: "numeric" or "categorical"}), and the
    columns left out with the reason."""
    chosen: dict[str, str] = {}
    skipped: list[list[str]] = []
    wanted = set(features) if features is not None else None
    for name, dtype in schema.items():
        if name == prediction:
            if _numeric(dtype) and dtype != "Boolean":
                chosen[name] = "numeric"
            elif _textual(dtype) or dtype == "Boolean":
                chosen[name] = "categorical"
            else:
                raise DatasetRefused(
                    f"The prediction column {name[:100]!r} holds {dtype}, not labels or numbers"
                )
            continue
        if wanted is not None and name not in wanted:
            skipped.append([name, "not an input of the deployed version"])
        elif len(name) > MAX_NAME_CHARS:
            skipped.append([name, f"a name longer than {MAX_NAME_CHARS} characters"])
        elif not _numeric(dtype):
            skipped.append([name, f"{dtype}: served inputs are numbers"])
        elif len(chosen) >= MAX_COLUMNS:
            skipped.append([name, f"more than {MAX_COLUMNS} columns"])
        else:
            chosen[name] = "numeric"
    if prediction is not None and prediction not in schema:
        raise DatasetRefused(f"The dataset has no column {prediction[:100]!r} (the prediction column)")
    if not any(name != prediction for name in chosen):
        if features is not None:
            listed = ", ".join(repr(name[:100]) for name in list(features)[:5])
            raise DatasetRefused(
                f"None of the deployed version's inputs ({listed}{' …' if len(features) > 5 else ''}) "
                "is a numeric column of the dataset"
            )
        raise DatasetRefused("The dataset has no numeric column to compare with served inputs")
    return chosen, skipped


def _update(profile: ColumnProfile, column: pl.Series) -> None:
    import polars as pl

    if isinstance(profile, NumericProfile):
        profile.update(column.cast(pl.Float64).to_numpy())
        return
    if column.dtype == pl.Boolean:
        labels = column.replace_strict({True: "true", False: "false"}, return_dtype=pl.String)
    else:
        labels = column.cast(pl.String).str.slice(0, MAX_VALUE_CHARS)
    profile.update(np.asarray(labels.to_list(), dtype=object))


def _profile_file(channel: socket.socket, args: dict[str, Any]) -> dict[str, Any]:
    dataset = read_dataset(args["path"], args["format"], ReadBounds(**args["bounds"]))
    features = orjson.loads(Path(args["features_file"]).read_bytes()) if args.get("features_file") else None
    chosen, skipped = _plan(dataset.schema, features, args.get("prediction_column"))
    profiles: dict[str, ColumnProfile] = {
        name: NumericProfile() if kind == "numeric" else CategoricalProfile() for name, kind in chosen.items()
    }
    rows = 0
    for batch in dataset.batches:
        rows += batch.height
        for name, profile in profiles.items():
            _update(profile, batch.get_column(name))
    if rows == 0:
        raise DatasetRefused("The dataset has no rows")
    sealed = [profile.to_bytes() for profile in profiles.values()]
    wire.send(
        channel,
        {
            "event": "profiles",
            "rows": rows,
            "columns": [[name, kind] for name, kind in chosen.items()],
            "skipped": [[name[:MAX_NAME_CHARS], why[:200]] for name, why in skipped[:MAX_SKIPPED]],
        },
        [np.frombuffer(data, dtype=np.uint8) for data in sealed],
    )
    return {"event": "done"}


def profile_task(channel: socket.socket, args: dict[str, Any]) -> None:
    """Reads a whole dataset within bounds and sends the profiles of its columns, then
    ``{"event": "done"}``; or the error that ended it."""
    send_outcome(channel, lambda: _profile_file(channel, args))


# --- from the server ---------------------------------------------------------------------------------
@dataclass
class DatasetProfiles:
    rows: int
    profiles: dict[str, ColumnProfile]
    skipped: list[list[str]] = field(default_factory=list)


def _invalid() -> ReferenceRefused:
    return ReferenceRefused("Profiling the dataset failed: its isolated process gave an invalid answer")


def _checked(meta: dict[str, Any], arrays: list[np.ndarray], max_rows: int) -> DatasetProfiles:
    """The process's answer, which is not trusted: plain types, within bounds, and
    profiles that decode and agree with the row count."""
    rows, columns, skipped = meta.get("rows"), meta.get("columns"), meta.get("skipped")
    if not isinstance(rows, int) or isinstance(rows, bool) or not 0 < rows <= max_rows:
        raise _invalid()
    if not isinstance(columns, list) or not columns or len(columns) != len(arrays):
        raise _invalid()
    if len(columns) > MAX_COLUMNS + 1 or not isinstance(skipped, list) or len(skipped) > MAX_SKIPPED:
        raise _invalid()
    profiles: dict[str, ColumnProfile] = {}
    for column, array in zip(columns, arrays, strict=True):
        if (
            not isinstance(column, list)
            or len(column) != 2
            or not isinstance(column[0], str)
            or not 0 < len(column[0]) <= MAX_NAME_CHARS
            or column[0] in profiles
            or column[1] not in ("numeric", "categorical")
            or array.dtype != np.uint8
            or array.ndim != 1
        ):
            raise _invalid()
        loader = NumericProfile if column[1] == "numeric" else CategoricalProfile
        try:
            profile = loader.from_bytes(array.tobytes())
        except ValueError:
            raise _invalid() from None
        if profile.count != rows:
            raise _invalid()
        profiles[column[0]] = profile
    left_out = []
    for entry in skipped:
        if not isinstance(entry, list) or len(entry) != 2 or not all(isinstance(part, str) for part in entry):
            raise _invalid()
        left_out.append([entry[0][:MAX_NAME_CHARS], entry[1][:200]])
    return DatasetProfiles(rows, profiles, left_out)


def profile_dataset(
    store: ArtifactStore,
    key: str,
    fmt: str,
    settings: Settings,
    *,
    features: Sequence[str] | None = None,
    prediction_column: str | None = None,
    sandbox: Sandbox | None = None,
) -> DatasetProfiles:
    """Profile the stored dataset at ``key`` in an isolated process, within the settings'
    bounds. Raises ``ReferenceRefused`` (or ``DatasetRefused``) with a message for its owner."""
    try:
        suffix = SUFFIXES[DatasetFormat(fmt)]
    except ValueError:
        raise ReferenceRefused(f"Datasets in the {fmt[:20]!r} format cannot be read") from None
    bounds = ReadBounds.from_settings(settings)
    limits = reading_limits(settings)
    allowed = WALL_CLOCK_FACTOR * settings.batch_job_cpu_seconds + ANSWER_SLACK_SECONDS
    with tempfile.TemporaryDirectory(prefix="maestro-reference-") as scratch:
        path = Path(scratch) / f"dataset{suffix}"
        copy_from_store(store, key, path)
        features_file = None
        if features is not None:  # a version may declare many inputs: more than a message holds
            features_file = Path(scratch) / "features.json"
            features_file.write_bytes(orjson.dumps(list(features)))
        deadline = time.monotonic() + allowed
        try:
            child = (sandbox or shared_sandbox()).spawn(
                PROFILE_TASK,
                {
                    "path": str(path),
                    "format": str(fmt),
                    "bounds": bounds.to_dict(),
                    "features_file": str(features_file) if features_file is not None else None,
                    "prediction_column": prediction_column,
                },
                limits=limits,
                imports=READER_IMPORTS,
                readable=[scratch],
                protected=protected_paths(settings, store),
            )
            with child:
                answer = child.receive(timeout=deadline - time.monotonic(), max_reply_bytes=MAX_ANSWER_BYTES)
                if answer.meta.get("event") != "profiles":
                    raise _invalid()
                done = child.receive(timeout=max(deadline - time.monotonic(), 1.0), max_reply_bytes=0)
                if done.meta.get("event") != "done":
                    raise _invalid()
        except ChildFailed as exc:
            if exc.kind in ("DatasetRefused", "ValueError"):
                raise ReferenceRefused(exc.message) from None
            raise ReferenceRefused(explain_failure(exc, limits, "Profiling the dataset")) from None
        except SandboxError as exc:
            raise ReferenceRefused(explain_failure(exc, limits, "Profiling the dataset")) from None
    return _checked(answer.meta, answer.arrays, bounds.max_rows)
