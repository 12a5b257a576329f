"""Reading a dataset within bounds, in an isolated process.

A dataset of a few KiB can describe billions of rows (a constant Parquet column
compresses to almost nothing) or gigabytes of XML (a zip bomb dressed as a workbook),
and the native readers allocate whatever the file asks for. So a job reads a dataset
only in an isolated process (``maestro.sandbox``) with a memory and CPU budget, from a
copy in a scratch directory (the process can reach neither the data directory nor the
artifact store), and the reader there refuses, as early as it can:

- more than ``max_rows`` rows: Parquet from its metadata before a page is decoded,
  every format again while its rows are read (metadata that lies changes nothing);
- more than ``max_bytes`` of real, expanded data: a workbook's parts are decompressed
  and counted before the sheet is parsed (the sizes its zip headers declare are not
  trusted), a table whose rows times its columns' widths would pass the limit is
  refused from its schema, and the decoded columns of every format are counted batch
  by batch;
- compressed text (gzip, zlib, zstd), which the CSV and JSON readers would inflate.

What passes the budget of the process ends it, and only it. ``read_dataset`` is for
use inside an isolated task (a batch prediction's, the wizard's); ``describe_dataset``
reads a stored dataset from the server through such a process and answers its shape.
"""

from __future__ import annotations

import shutil
import socket
import tempfile
from collections.abc import Callable, Iterator, Sequence
from dataclasses import asdict, dataclass
from pathlib import Path
from typing import TYPE_CHECKING, Any

import orjson

from maestro.files.formats import (
    SUFFIXES,
    DatasetFormat,
    ExpandsTooFar,
    UnrecognisedDataset,
    compression_of,
    measure_zip,
)
from maestro.sandbox import (
    ChildDied,
    ChildFailed,
    ChildTimedOut,
    Limits,
    Sandbox,
    SandboxError,
    shared_sandbox,
    wire,
)

if TYPE_CHECKING:
    import polars as pl

    from maestro.config import Settings
    from maestro.storage import ArtifactStore

CHUNK_ROWS = 10_000
# Libraries the reading process imports before it confines itself (they start threads,
# so the zygote cannot hold them).
READER_IMPORTS = ("polars",)
DESCRIBE_TASK = "maestro.files.reading:describe_task"
MAX_COLUMNS_REPORTED = 10_000
# Time a reading process may take to send its next message, beyond its CPU budget.
ANSWER_SLACK_SECONDS = 60.0
_SNIFF_BYTES = 64 * 1024
_SEPARATORS = (",", "\t", ";", "|")
# Bytes each value of a column of this type takes at least once decoded (strings are
# 16-byte views); types not listed count one byte.
_WIDTHS = {
    "Int8": 1,
    "UInt8": 1,
    "Int16": 2,
    "UInt16": 2,
    "Int32": 4,
    "UInt32": 4,
    "Float32": 4,
    "Date": 4,
    "Int64": 8,
    "UInt64": 8,
    "Float64": 8,
    "Datetime": 8,
    "Duration": 8,
    "Time": 8,
    "Int128": 16,
    "String": 16,
    "Binary": 16,
}


class DatasetRefused(ValueError):
    """The dataset is over a limit or cannot be read; the message says which, for its owner."""


@dataclass(frozen=True)
class ReadBounds:
    max_rows: int
    max_bytes: int  # real bytes the dataset may expand to when read
    chunk_rows: int = CHUNK_ROWS

    @classmethod
    def from_settings(cls, settings: Settings) -> ReadBounds:
        return cls(max_rows=settings.dataset_max_rows, max_bytes=settings.dataset_max_expanded_bytes)

    def to_dict(self) -> dict[str, int]:
        return asdict(self)


def too_many_rows(limit: int, count: int | None = None) -> DatasetRefused:
    has = f" ({count:,})" if count is not None else ""
    return DatasetRefused(f"The dataset has more than {limit:,} rows{has}; split it into smaller datasets")


def too_many_bytes(limit: int, why: str = "") -> DatasetRefused:
    return DatasetRefused(f"The dataset expands past {limit:,} bytes when read{why}")


# --- inside an isolated process ---------------------------------------------------------------------
@dataclass
class Dataset:
    """A dataset being read: its row count (checked against the bounds), its columns,
    and its rows in chunks, counted again as they are decoded."""

    rows: int
    schema: dict[str, str]  # column name → type name
    batches: Iterator[pl.DataFrame]


def read_dataset(path: str, fmt: str, bounds: ReadBounds, *, names: Sequence[str] = ()) -> Dataset:
    """Open the dataset at ``path`` (in the scratch directory of an isolated process)
    within ``bounds``. ``names`` are the columns of a JSON dataset given as lists of
    values. Raises ``DatasetRefused``."""
    import polars as pl

    try:
        fmt = DatasetFormat(fmt)
    except ValueError:
        raise DatasetRefused(f"Datasets in the {str(fmt)[:20]!r} format cannot be read") from None
    try:
        if fmt in (DatasetFormat.csv, DatasetFormat.json, DatasetFormat.jsonl):
            _refuse_compressed(path)
        if fmt is DatasetFormat.json:
            return _whole(_json_frame(path, names, bounds), bounds)
        if fmt is DatasetFormat.xlsx:
            return _whole(_workbook_frame(path, bounds), bounds)
        scan = _scanner(path, fmt)
        schema = scan().collect_schema()
        total = int(scan().select(pl.len()).collect().item())  # Parquet: from its metadata
        if total > bounds.max_rows:
            raise too_many_rows(bounds.max_rows, total)
        width = sum(_WIDTHS.get(dtype.base_type().__name__, 1) for dtype in schema.dtypes())
        if total * width > bounds.max_bytes:
            raise too_many_bytes(
                bounds.max_bytes,
                f" ({total:,} rows of {len(schema):,} columns, {width:,} bytes or more each)",
            )
        batches = scan().collect_batches(chunk_size=bounds.chunk_rows)
        return Dataset(total, _type_names(schema), _counted(batches, bounds, path))
    except pl.exceptions.PolarsError as exc:
        raise DatasetRefused(f"The dataset could not be read ({_short(exc, path)})") from None


def _short(exc: BaseException, path: str = "") -> str:
    """An error's text on one line, bounded, naming no path of the scratch directory."""
    text = str(exc).replace(path, "the dataset") if path else str(exc)
    return " ".join(text.split())[:300]


def _type_names(schema: Any) -> dict[str, str]:
    return {str(name): str(dtype) for name, dtype in schema.items()}


def _refuse_compressed(path: str) -> None:
    with open(path, "rb") as file:
        compression = compression_of(file.read(8))
    if compression is not None:
        raise DatasetRefused(f"The dataset is compressed ({compression}); send it uncompressed")


def _separator(path: str) -> str:
    """The delimiter of delimited text: whichever of , tab ; | its first line has most of."""
    with open(path, "rb") as file:
        first_line = file.read(_SNIFF_BYTES).split(b"\n", 1)[0].decode("utf-8", "replace")
    counts = {separator: first_line.count(separator) for separator in _SEPARATORS}
    best = max(_SEPARATORS, key=lambda separator: counts[separator])
    return best if counts[best] else ","


def _scanner(path: str, fmt: DatasetFormat) -> Callable[[], pl.LazyFrame]:
    import polars as pl

    if fmt is DatasetFormat.csv:
        separator = _separator(path)
        return lambda: pl.scan_csv(path, separator=separator, infer_schema_length=10_000)
    if fmt is DatasetFormat.jsonl:
        return lambda: pl.scan_ndjson(path, infer_schema_length=10_000)
    return lambda: pl.scan_parquet(path)


def _counted(batches: Iterator[pl.DataFrame], bounds: ReadBounds, path: str) -> Iterator[pl.DataFrame]:
    """The batches, refused as soon as their rows or decoded bytes pass the bounds."""
    import polars as pl

    rows = 0
    size: float = 0  # polars estimates a frame's size as an int or a float
    try:
        for batch in batches:
            rows += batch.height
            size += batch.estimated_size()
            if rows > bounds.max_rows:
                raise too_many_rows(bounds.max_rows)
            if size > bounds.max_bytes:
                raise too_many_bytes(bounds.max_bytes)
            yield batch
    except pl.exceptions.PolarsError as exc:
        raise DatasetRefused(f"The dataset could not be read ({_short(exc, path)})") from None


def _whole(frame: pl.DataFrame, bounds: ReadBounds) -> Dataset:
    """A dataset read whole (JSON, a workbook), checked once."""
    if frame.height > bounds.max_rows:
        raise too_many_rows(bounds.max_rows, frame.height)
    if frame.estimated_size() > bounds.max_bytes:
        raise too_many_bytes(bounds.max_bytes)
    return Dataset(frame.height, _type_names(frame.schema), frame.iter_slices(bounds.chunk_rows))


def _json_frame(path: str, names: Sequence[str], bounds: ReadBounds) -> pl.DataFrame:
    import polars as pl

    try:
        parsed = orjson.loads(Path(path).read_bytes())
    except orjson.JSONDecodeError as exc:
        if "memory" in str(exc):  # orjson reports running out of memory as a decoding error
            raise MemoryError from None
        raise DatasetRefused(f"The dataset is not valid JSON: {exc}") from None
    if isinstance(parsed, dict) and isinstance(parsed.get("instances"), list):
        parsed = parsed["instances"]
    if not isinstance(parsed, list) or not parsed:
        raise DatasetRefused('The JSON dataset must be a non-empty array of rows, or {"instances": [...]}')
    if len(parsed) > bounds.max_rows:
        raise too_many_rows(bounds.max_rows, len(parsed))
    if all(isinstance(row, dict) for row in parsed):
        return pl.from_dicts(parsed, infer_schema_length=None)
    if all(isinstance(row, list) for row in parsed):
        if any(len(row) != len(names) for row in parsed):
            raise DatasetRefused(f"Every row of values needs {len(names)} values, one per feature")
        return pl.DataFrame(parsed, schema=list(names), orient="row")
    raise DatasetRefused("Rows must all be objects of named features, or all lists of values")


def _workbook_frame(path: str, bounds: ReadBounds) -> pl.DataFrame:
    """The first sheet, once the real size of every part of the workbook is known to be
    within the bounds (the spreadsheet reader trusts the zip headers)."""
    import polars as pl

    try:
        with open(path, "rb") as file:
            measure_zip(file, bounds.max_bytes, what="a workbook")
    except ExpandsTooFar:
        raise too_many_bytes(bounds.max_bytes, " (the parts of the workbook, decompressed)") from None
    except UnrecognisedDataset as exc:
        raise DatasetRefused(f"The dataset cannot be read: it is {exc}") from None
    try:
        return pl.read_excel(path, read_options={"n_rows": bounds.max_rows + 1})
    except (MemoryError, pl.exceptions.PolarsError):
        raise
    except Exception as exc:  # the spreadsheet reader's own errors
        raise DatasetRefused(f"The workbook could not be read ({_short(exc, path)})") from None


def send_outcome(channel: socket.socket, work: Callable[[], dict[str, Any]]) -> None:
    """Inside an isolated process: run ``work`` and send its result, or the error that
    ended it, as the last message."""
    try:
        result = work()
    except MemoryError:
        wire.send(channel, {"error": {"type": "MemoryError", "message": "out of memory"}})
        return
    except Exception as exc:
        error: dict[str, Any] = {"type": type(exc).__name__, "message": _short(exc)}
        details = getattr(exc, "sandbox_details", None)
        reason = getattr(exc, "reason", None)
        if isinstance(details, dict):
            error["details"] = details
        elif isinstance(reason, str):  # a serving error's stable code
            error["details"] = {"reason": reason}
        wire.send(channel, {"error": error})
        return
    wire.send(channel, result)


def describe_task(channel: socket.socket, args: dict[str, Any]) -> None:
    """Reads a whole dataset and answers its row count (counted, not declared) and columns."""

    def work() -> dict[str, Any]:
        dataset = read_dataset(args["path"], args["format"], ReadBounds(**args["bounds"]))
        rows = sum(batch.height for batch in dataset.batches)
        columns = list(dataset.schema.items())[:MAX_COLUMNS_REPORTED]
        return {"rows": rows, "columns": [[name[:1000], dtype[:100]] for name, dtype in columns]}

    send_outcome(channel, work)


# --- from the server ------------------------------------------------------------------------------------
def reading_limits(settings: Settings, *, file_bytes: int = 0) -> Limits:
    return Limits(
        memory_bytes=settings.batch_job_memory_bytes,
        cpu_seconds=settings.batch_job_cpu_seconds,
        file_bytes=file_bytes,
    )


def protected_paths(settings: Settings, store: ArtifactStore) -> list[str]:
    """What an isolated process must never reach: the data directory (database, signing
    key) and a local artifact store, wherever it lives."""
    paths = [str(settings.data_dir.resolve())]
    if store.is_local:
        paths.append(store.root)
    return paths


def copy_from_store(store: ArtifactStore, key: str, target: Path) -> int:
    """Copy a stored object into a scratch file, chunk by chunk; returns its size."""
    with store.open(key) as source, target.open("wb") as copy:
        shutil.copyfileobj(source, copy, 1024 * 1024)
        return copy.tell()


def explain_failure(exc: SandboxError, limits: Limits, what: str) -> str:
    """A sentence for the owner of the work about why its isolated process failed."""
    memory = f"{(limits.memory_bytes or 0) // 1024**2:,} MiB"
    if isinstance(exc, ChildFailed) and exc.kind.endswith("MemoryError"):
        return f"{what} needs more memory than its budget of {memory}"
    if isinstance(exc, ChildDied):
        if exc.exit_code == -6:
            return (
                f"{what} stopped: its isolated process aborted (a malformed file, or more memory "
                f"than its budget of {memory})"
            )
        if exc.exit_code == -24:
            return f"{what} stopped: it used up its {limits.cpu_seconds or 0:,} CPU seconds"
        if exc.exit_code == -9:
            return f"{what} stopped: its isolated process was killed (past its CPU time, or by the system)"
        return f"{what} stopped: {exc.message[0].lower()}{exc.message[1:]}"
    if isinstance(exc, ChildTimedOut):
        return f"{what} stopped answering and was stopped"
    return f"{what} failed: {exc.message}"


@dataclass(frozen=True)
class DatasetShape:
    rows: int
    columns: dict[str, str]  # name → type


def describe_dataset(
    store: ArtifactStore,
    key: str,
    fmt: str,
    settings: Settings,
    *,
    sandbox: Sandbox | None = None,
) -> DatasetShape:
    """Read a stored dataset whole in an isolated process, within the settings' bounds,
    and answer its shape. Raises ``DatasetRefused`` with a message for its owner."""
    bounds = ReadBounds.from_settings(settings)
    limits = reading_limits(settings)
    with tempfile.TemporaryDirectory(prefix="maestro-read-") as scratch:
        path = Path(scratch) / f"dataset{SUFFIXES.get(DatasetFormat(fmt), '')}"
        copy_from_store(store, key, path)
        try:
            child = (sandbox or shared_sandbox()).spawn(
                DESCRIBE_TASK,
                {"path": str(path), "format": str(fmt), "bounds": bounds.to_dict()},
                limits=limits,
                imports=READER_IMPORTS,
                readable=[scratch],
                protected=protected_paths(settings, store),
            )
            with child:
                reply = child.receive(
                    timeout=settings.batch_job_cpu_seconds + ANSWER_SLACK_SECONDS, max_reply_bytes=0
                )
        except ChildFailed as exc:
            if exc.kind in ("DatasetRefused", "ValueError"):
                raise DatasetRefused(exc.message) from None
            raise DatasetRefused(explain_failure(exc, limits, "Reading the dataset")) from None
        except SandboxError as exc:
            raise DatasetRefused(explain_failure(exc, limits, "Reading the dataset")) from None
    return _shape(reply.meta, bounds)


def _shape(meta: dict[str, Any], bounds: ReadBounds) -> DatasetShape:
    """The answer of a reading process, which is not trusted: plain types, within bounds."""
    rows, columns = meta.get("rows"), meta.get("columns")
    if not isinstance(rows, int) or isinstance(rows, bool) or not 0 <= rows <= bounds.max_rows:
        raise DatasetRefused("Reading the dataset failed: its isolated process gave an invalid answer")
    if not isinstance(columns, list) or len(columns) > MAX_COLUMNS_REPORTED:
        raise DatasetRefused("Reading the dataset failed: its isolated process gave an invalid answer")
    shape: dict[str, str] = {}
    for column in columns:
        if (
            not isinstance(column, list)
            or len(column) != 2
            or not all(isinstance(part, str) and len(part) <= 1000 for part in column)
        ):
            raise DatasetRefused("Reading the dataset failed: its isolated process gave an invalid answer")
        shape[column[0]] = column[1]
    return DatasetShape(rows=rows, columns=shape)
