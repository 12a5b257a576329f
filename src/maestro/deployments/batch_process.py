"""The isolated half of a batch prediction: one process per job loads the model, reads
the dataset through the bounded reader (``maestro.files.reading``), predicts it chunk by
chunk and writes the predictions file, all inside the job's scratch directory.

It runs confined (``maestro.sandbox``): a memory and CPU budget, no network, no reach
into the data directory or the artifact store, and every file it writes capped at the
output limit by the kernel (``RLIMIT_FSIZE``), on top of the running count here that
refuses with a clear message first. After each chunk it reports its progress and waits
for the server's go-ahead, so the server always knows where it stands and may stop it.

Messages to the server: ``{"event": "progress", "rows", "total"}`` (answered
``{"continue": true}``), then ``{"event": "done", "rows", "bytes", "serving"}`` or an
error. This module is imported by the sandbox's zygote, so it imports no library that
starts threads (polars, onnxruntime and the runtimes are imported by the child itself).
"""

from __future__ import annotations

import errno
import socket
from pathlib import Path
from typing import TYPE_CHECKING, Any

import numpy as np

from maestro.files.reading import DatasetRefused, ReadBounds, read_dataset, send_outcome
from maestro.sandbox import wire

if TYPE_CHECKING:
    import polars as pl

    from maestro.runtimes.base import Runtime

ENTRY = "maestro.deployments.batch_process:run"
IMPORTS = ("polars", "onnxruntime", "maestro.runtimes.service")
# Predicted rows gathered before a part of a Parquet output is written.
PART_ROWS = 100_000


class OutputTooLarge(ValueError):
    """The predictions file would pass the limit."""


def run(channel: socket.socket, args: dict[str, Any]) -> None:
    send_outcome(channel, lambda: _predict_file(channel, args))


def _progress(channel: socket.socket, rows: int, total: int) -> None:
    """Report and wait for the server's go-ahead (it hangs up to stop the job)."""
    wire.send(channel, {"event": "progress", "rows": rows, "total": total})
    answer = wire.receive(channel, max_data_bytes=0)
    if not answer.meta.get("continue"):
        raise RuntimeError("stopped by the server")


def _predict_file(channel: socket.socket, args: dict[str, Any]) -> dict[str, Any]:
    from maestro.runtimes.service import load_runtime

    scratch = Path(args["scratch"])
    runtime = load_runtime(
        (scratch / args["model_file"]).read_bytes(),
        format=args["model_format"],
        trusted=bool(args["trusted"]),
        model_schema=args["model_schema"],
        max_bytes=args["max_model_bytes"],
    )
    dataset = read_dataset(
        str(scratch / args["input_file"]),
        args["input_format"],
        ReadBounds(**args["bounds"]),
        names=runtime.input_schema.names,
    )
    if dataset.rows == 0:
        raise DatasetRefused("The dataset has no rows")
    _progress(channel, 0, dataset.rows)
    writer = PredictionsWriter(scratch / args["output_file"], args["output_format"], args["max_output_bytes"])
    done = 0
    for chunk in dataset.batches:
        if chunk.height == 0:
            continue
        writer.write(_with_predictions(chunk, runtime, _matrix(chunk, runtime, done)))
        done += chunk.height
        _progress(channel, done, dataset.rows)
    if done == 0:
        raise DatasetRefused("The dataset has no rows")
    return {"event": "done", "rows": done, "bytes": writer.close(), "serving": runtime.serving}


def _matrix(chunk: pl.DataFrame, runtime: Runtime, offset: int) -> np.ndarray:
    import polars as pl

    from maestro.runtimes.errors import InputError
    from maestro.runtimes.inputs import to_matrix

    schema = runtime.input_schema
    missing = [name for name in schema.names if name not in chunk.columns]
    if missing:
        listed = ", ".join(repr(name) for name in missing[:5]) + (" …" if len(missing) > 5 else "")
        raise ValueError(f"The dataset has no column for feature {listed}")
    columns = []
    for name in schema.names:
        try:
            columns.append(chunk.get_column(name).cast(pl.Float64, strict=True).to_numpy())
        except pl.exceptions.PolarsError:
            raise ValueError(f"Column {name!r} holds values that are not numbers") from None
    try:
        return to_matrix(np.column_stack(columns), schema, allow_nan=runtime.accepts_missing)
    except InputError as exc:
        where = f"Row {offset + exc.row}" if exc.row is not None else f"Rows from {offset}"
        raise ValueError(f"{where} of the dataset: {exc.message}") from None


def _with_predictions(chunk: pl.DataFrame, runtime: Runtime, matrix: np.ndarray) -> pl.DataFrame:
    import polars as pl

    labels, probabilities = runtime.predict_with_proba(matrix)
    named = runtime.class_labels  # classes named as platform inference names them
    values = np.asarray(labels).tolist()
    added = {"prediction": named.answers(values) if named is not None else values}
    if probabilities is not None and named is not None:
        for index, name in enumerate(named.names):
            added[f"probability_{name}"] = probabilities[:, index]
    return chunk.with_columns(pl.Series(name, values) for name, values in added.items())


class PredictionsWriter:
    """Writes predicted chunks to one CSV or Parquet file and refuses to let the file
    (or, for Parquet, its parts on the way) pass ``max_bytes``. CSV is appended chunk by
    chunk; Parquet is written in parts of ``PART_ROWS`` rows, then streamed into one file."""

    def __init__(self, path: Path, fmt: str, max_bytes: int) -> None:
        self.path = path
        self.fmt = fmt
        self.max_bytes = max_bytes
        self.written = 0  # bytes on disk so far
        self.parts: list[Path] = []
        self._pending: list[pl.DataFrame] = []
        self._schema: Any = None
        self._csv = path.open("wb") if fmt == "csv" else None

    def _refuse(self) -> OutputTooLarge:
        return OutputTooLarge(f"The predictions file would be larger than {self.max_bytes:,} bytes")

    def write(self, frame: pl.DataFrame) -> None:
        if self._schema is None:
            self._schema = frame.schema
        elif frame.schema != self._schema:
            frame = frame.cast(dict(self._schema))
        if self._csv is not None:
            data = frame.write_csv(include_header=self.written == 0).encode()
            if self.written + len(data) > self.max_bytes:
                raise self._refuse()
            self._guarded(lambda: self._csv.write(data))
            self.written += len(data)
            return
        self._pending.append(frame)
        if sum(part.height for part in self._pending) >= PART_ROWS:
            self._write_part()

    def _write_part(self) -> None:
        import polars as pl

        if not self._pending:
            return
        part = self.path.parent / f"{self.path.stem}-part{len(self.parts):06d}.parquet"
        self._guarded(lambda: pl.concat(self._pending).write_parquet(part))
        self._pending = []
        self.parts.append(part)
        self.written += part.stat().st_size
        if self.written > self.max_bytes:
            raise self._refuse()

    def close(self) -> int:
        """Finish the file; returns its size."""
        import polars as pl

        if self._csv is not None:
            self._guarded(self._csv.close)
        else:
            self._write_part()
            self._guarded(lambda: pl.scan_parquet([str(part) for part in self.parts]).sink_parquet(self.path))
            for part in self.parts:
                part.unlink()
        size = self.path.stat().st_size
        if size > self.max_bytes:
            raise self._refuse()
        return size

    def _guarded(self, write: Any) -> None:
        """Run a write; the kernel's file size limit (EFBIG) becomes the clear refusal."""
        import polars as pl

        try:
            write()
        except OSError as exc:
            if exc.errno == errno.EFBIG:
                raise self._refuse() from None
            raise
        except pl.exceptions.PolarsError as exc:
            if "os error 27" in str(exc) or "File too large" in str(exc):
                raise self._refuse() from None
            raise
