"""Recognising a dataset's format from its bytes, and what a client claimed it was.

Only a few KiB of a file are inspected (plus, for zip archives, their central
directory and, for Parquet, the last bytes); nothing is parsed or extracted. An
XLSX workbook whose entries would inflate far beyond its size (a zip bomb) is
refused here, before anything ever tries to open it.
"""

from __future__ import annotations

import zipfile
from enum import StrEnum
from typing import IO

import orjson


class DatasetFormat(StrEnum):
    csv = "csv"  # any delimited text: commas, tabs, semicolons
    json = "json"
    jsonl = "jsonl"
    parquet = "parquet"
    xlsx = "xlsx"


CONTENT_TYPES = {
    DatasetFormat.csv: "text/csv",
    DatasetFormat.json: "application/json",
    DatasetFormat.jsonl: "application/x-ndjson",
    DatasetFormat.parquet: "application/vnd.apache.parquet",
    DatasetFormat.xlsx: "application/vnd.openxmlformats-officedocument.spreadsheetml.sheet",
}
SUFFIXES = {
    DatasetFormat.csv: ".csv",
    DatasetFormat.json: ".json",
    DatasetFormat.jsonl: ".jsonl",
    DatasetFormat.parquet: ".parquet",
    DatasetFormat.xlsx: ".xlsx",
}
# What a file name's extension or a part's Content-Type claims.
_CLAIMED_BY_EXTENSION = {
    "csv": DatasetFormat.csv,
    "tsv": DatasetFormat.csv,
    "json": DatasetFormat.json,
    "jsonl": DatasetFormat.jsonl,
    "ndjson": DatasetFormat.jsonl,
    "parquet": DatasetFormat.parquet,
    "pq": DatasetFormat.parquet,
    "xlsx": DatasetFormat.xlsx,
}
_CLAIMED_BY_CONTENT_TYPE = {
    "text/csv": DatasetFormat.csv,
    "application/csv": DatasetFormat.csv,
    "text/tab-separated-values": DatasetFormat.csv,
    "application/json": DatasetFormat.json,
    "text/json": DatasetFormat.json,
    "application/x-ndjson": DatasetFormat.jsonl,
    "application/jsonl": DatasetFormat.jsonl,
    "application/x-jsonlines": DatasetFormat.jsonl,
    "application/vnd.apache.parquet": DatasetFormat.parquet,
    "application/x-parquet": DatasetFormat.parquet,
    CONTENT_TYPES[DatasetFormat.xlsx]: DatasetFormat.xlsx,
}
# Content types that claim nothing about the format.
GENERIC_CONTENT_TYPES = frozenset({"", "application/octet-stream", "text/plain", "binary/octet-stream"})

# A workbook may inflate to at most this many times its own size in total, and no
# entry of more than a MiB to more than this ratio: XML sheets compress 5 to 30 times.
MAX_XLSX_INFLATION = 100
MAX_XLSX_ENTRY_RATIO = 250
_UTF8_BOM = b"\xef\xbb\xbf"
_UTF16_BOMS = (b"\xff\xfe", b"\xfe\xff")


class UnrecognisedDataset(ValueError):
    """The bytes are not a dataset format Maestro reads; the message says why."""


def _is_text(head: bytes) -> bool:
    if head.startswith(_UTF16_BOMS):
        return True
    return b"\x00" not in head


def _json_kind(text: bytes) -> DatasetFormat | None:
    """JSON (one document) or JSON lines (one object per line), from the start."""
    if text[:1] == b"[":
        return DatasetFormat.json
    if text[:1] != b"{":
        return None
    first_line, newline, rest = text.partition(b"\n")
    if newline and rest.lstrip()[:1] == b"{":
        try:
            orjson.loads(first_line)
        except orjson.JSONDecodeError:
            return DatasetFormat.json  # a pretty-printed single object
        return DatasetFormat.jsonl
    return DatasetFormat.json


def _check_workbook(file: IO[bytes], size: int) -> None:
    file.seek(0)
    try:
        with zipfile.ZipFile(file) as archive:
            entries = archive.infolist()
    except (zipfile.BadZipFile, OSError, ValueError, EOFError) as exc:
        raise UnrecognisedDataset("a damaged zip archive") from exc
    names = {entry.filename for entry in entries}
    if "[Content_Types].xml" not in names or "xl/workbook.xml" not in names:
        raise UnrecognisedDataset("a zip archive that is not an Excel workbook (.xlsx)")
    inflated = sum(entry.file_size for entry in entries)
    if inflated > MAX_XLSX_INFLATION * max(size, 1):
        raise UnrecognisedDataset(
            f"a workbook that would inflate to {inflated} bytes, over {MAX_XLSX_INFLATION} times its size"
        )
    for entry in entries:
        if entry.file_size > 1024 * 1024 and entry.file_size > MAX_XLSX_ENTRY_RATIO * max(
            entry.compress_size, 1
        ):
            raise UnrecognisedDataset(f"a workbook entry compressed more than {MAX_XLSX_ENTRY_RATIO} times")


def _ends_with_parquet_magic(file: IO[bytes], size: int) -> bool:
    if size < 12:
        return False
    file.seek(size - 4)
    return file.read(4) == b"PAR1"


def detect_dataset_format(head: bytes, file: IO[bytes], size: int) -> DatasetFormat:
    """The format of a stored dataset from its first bytes and the seekable file;
    raises ``UnrecognisedDataset`` for anything else (executables, archives, images,
    workbooks that are zip bombs)."""
    if head.startswith(b"PAR1"):
        if _ends_with_parquet_magic(file, size):
            return DatasetFormat.parquet
        raise UnrecognisedDataset("a truncated Parquet file")
    if head.startswith(b"PK\x03\x04"):
        _check_workbook(file, size)
        return DatasetFormat.xlsx
    if not _is_text(head):
        raise UnrecognisedDataset("binary data that is not Parquet or XLSX")
    text = head.removeprefix(_UTF8_BOM).lstrip()
    return _json_kind(text) or DatasetFormat.csv


def claimed_format(filename: str | None, content_type: str | None) -> tuple[str, DatasetFormat] | None:
    """What the file's name or declared content type says it is, with the claim's
    source, when either says anything."""
    media = (content_type or "").split(";", 1)[0].strip().lower()
    if media in _CLAIMED_BY_CONTENT_TYPE:
        return f"content type {media}", _CLAIMED_BY_CONTENT_TYPE[media]
    if filename and "." in filename:
        extension = filename.rsplit(".", 1)[1].strip().lower()
        if extension in _CLAIMED_BY_EXTENSION:
            return f"file name extension .{extension}", _CLAIMED_BY_EXTENSION[extension]
    return None


def agrees(claimed: DatasetFormat, detected: DatasetFormat) -> bool:
    """JSON lines are also valid where JSON is claimed by a generic JSON type, and a
    single JSON array may carry a .jsonl name by mistake; every other claim must match."""
    if claimed == detected:
        return True
    return {claimed, detected} == {DatasetFormat.json, DatasetFormat.jsonl}
