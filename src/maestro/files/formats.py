"""Recognising a dataset's format from its bytes, and what a client claimed it was.

Only a few KiB of a file are inspected (for Parquet, also its last bytes), except for
XLSX workbooks: a workbook is a zip archive, and one whose parts inflate far beyond its
size (a zip bomb) is refused here, before anything ever tries to open it. The sizes
the zip headers declare are not trusted: every part is decompressed in bounded chunks
and its real size counted (``measure_zip``), so a part that lies about its size is
refused, and the count stops as soon as the total passes the limit. Compressed text
(gzip, zlib, zstd…) is refused too, because the CSV and JSON readers would inflate it
without a word.
"""

from __future__ import annotations

import copy
import zipfile
import zlib
from enum import StrEnum
from typing import IO, Any

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
# Parts of a workbook (a spreadsheet has a few dozen), and the bytes of its central
# directory, checked before the directory is parsed (each entry costs memory).
MAX_ZIP_ENTRIES = 10_000
MAX_ZIP_DIRECTORY_BYTES = 4 * 1024**2
# Compression methods read: stored and deflate, which is what spreadsheet programs write.
_ZIP_METHODS = frozenset({zipfile.ZIP_STORED, zipfile.ZIP_DEFLATED})
_INFLATE_CHUNK = 1024**2
_UTF8_BOM = b"\xef\xbb\xbf"
_UTF16_BOMS = (b"\xff\xfe", b"\xfe\xff")
# Starts of compressed streams that the CSV and JSON readers would silently inflate
# (polars recognises gzip, zlib and zstd), and other common ones, named for the message.
COMPRESSED_STARTS = (
    (b"\x1f\x8b", "gzip"),
    (b"\x28\xb5\x2f\xfd", "zstd"),
    (b"\x78\x01", "zlib"),
    (b"\x78\x5e", "zlib"),
    (b"\x78\x9c", "zlib"),
    (b"\x78\xda", "zlib"),
    (b"BZh", "bzip2"),
    (b"\xfd7zXZ\x00", "xz"),
    (b"\x04\x22\x4d\x18", "lz4"),
)


class UnrecognisedDataset(ValueError):
    """The bytes are not a dataset format Maestro reads; the message says why."""


class ExpandsTooFar(UnrecognisedDataset):
    """A zip archive whose parts, decompressed, pass the limit."""


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


def compression_of(head: bytes) -> str | None:
    """The compression a file's first bytes announce, if any."""
    for start, name in COMPRESSED_STARTS:
        if head.startswith(start):
            return name
    return None


# zipfile's private end-record reader and its field indexes, which typeshed leaves out.
_zip_internals: Any = zipfile


def _directory(file: IO[bytes], what: str) -> list[zipfile.ZipInfo]:
    """The parts of a zip archive. The size of its central directory is read first from
    the end record, as ``zipfile`` reads it, so that a directory of a million entries is
    refused before it is parsed (each entry costs memory)."""
    try:
        end = _zip_internals._EndRecData(file)  # the end record ZipFile itself reads
        if not end:
            raise UnrecognisedDataset("a damaged zip archive")
        if (
            end[_zip_internals._ECD_ENTRIES_TOTAL] > MAX_ZIP_ENTRIES
            or end[_zip_internals._ECD_SIZE] > MAX_ZIP_DIRECTORY_BYTES
        ):
            raise UnrecognisedDataset(f"{what} with more than {MAX_ZIP_ENTRIES:,} parts")
        file.seek(0)
        with zipfile.ZipFile(file) as archive:
            parts = archive.infolist()
    except UnrecognisedDataset:
        raise
    except (zipfile.BadZipFile, OSError, ValueError, EOFError) as exc:
        raise UnrecognisedDataset("a damaged zip archive") from exc
    if len(parts) > MAX_ZIP_ENTRIES:
        raise UnrecognisedDataset(f"{what} with more than {MAX_ZIP_ENTRIES:,} parts")
    if len({part.filename for part in parts}) != len(parts):
        raise UnrecognisedDataset(f"{what} with two parts of the same name")  # readers differ on which wins
    return parts


def measure_zip(file: IO[bytes], max_bytes: int, *, what: str = "a zip archive") -> dict[str, int]:
    """The real size of every part of a zip archive, found by decompressing it in bounded
    chunks (``what`` names the archive in messages). Raises ``UnrecognisedDataset`` as
    soon as the parts together pass ``max_bytes``, and for a part whose real size or
    checksum differs from what its headers declare, that is encrypted, or that is
    compressed other than by deflate."""
    parts = _directory(file, what)
    sizes: dict[str, int] = {}
    total = 0
    try:
        with zipfile.ZipFile(file) as archive:
            for info in parts:
                name = info.filename[:100]
                if info.flag_bits & 0x1:
                    raise UnrecognisedDataset(f"{what} with an encrypted part")
                if info.compress_type not in _ZIP_METHODS:
                    raise UnrecognisedDataset(
                        f"{what} whose part {name!r} is compressed with method {info.compress_type} "
                        "(only deflate is read)"
                    )
                # Read on past the declared size, up to the limit, for the part's real size;
                # the checksum is checked here, after the sizes (zipfile would check it first).
                probe = copy.copy(info)
                probe.file_size = max_bytes - total + 1
                del probe.CRC
                before, checksum = total, 0
                with archive.open(probe) as part:
                    while chunk := part.read(_INFLATE_CHUNK):
                        total += len(chunk)
                        if total > max_bytes:
                            raise ExpandsTooFar(f"{what} that expands past {max_bytes:,} bytes")
                        checksum = zlib.crc32(chunk, checksum)
                real = total - before
                if real != info.file_size:
                    raise UnrecognisedDataset(
                        f"{what} whose part {name!r} declares {info.file_size:,} bytes but holds {real:,}"
                    )
                if checksum != info.CRC:
                    raise UnrecognisedDataset(f"{what} whose part {name!r} fails its checksum")
                sizes[info.filename] = real
    except UnrecognisedDataset:
        raise
    except (zipfile.BadZipFile, OSError, ValueError, EOFError, NotImplementedError, RuntimeError) as exc:
        raise UnrecognisedDataset(f"a damaged zip archive ({str(exc)[:200]})") from exc
    return sizes


def _check_workbook(file: IO[bytes], size: int, max_expanded_bytes: int | None) -> None:
    """A workbook, and not a zip bomb: the sizes its parts declare are checked first (a
    cheap refusal of an honest bomb), then their real sizes, by decompressing them."""
    parts = _directory(file, "a workbook")
    names = {part.filename for part in parts}
    if "[Content_Types].xml" not in names or "xl/workbook.xml" not in names:
        raise UnrecognisedDataset("a zip archive that is not an Excel workbook (.xlsx)")
    limit = MAX_XLSX_INFLATION * max(size, 1)
    inflated = sum(part.file_size for part in parts)
    if inflated > limit:
        raise UnrecognisedDataset(
            f"a workbook that would inflate to {inflated} bytes, over {MAX_XLSX_INFLATION} times its size"
        )
    _check_ratios({part.filename: part.file_size for part in parts}, parts)
    if max_expanded_bytes is not None:
        limit = min(limit, max_expanded_bytes)
    try:
        sizes = measure_zip(file, limit, what="a workbook")
    except ExpandsTooFar as exc:
        raise ExpandsTooFar(f"{exc} (its parts may expand to {MAX_XLSX_INFLATION} times its size)") from None
    _check_ratios(sizes, parts)


def _check_ratios(sizes: dict[str, int], parts: list[zipfile.ZipInfo]) -> None:
    for part in parts:
        inflated = sizes.get(part.filename, 0)
        if inflated > 1024 * 1024 and inflated > MAX_XLSX_ENTRY_RATIO * max(part.compress_size, 1):
            raise UnrecognisedDataset(f"a workbook entry compressed more than {MAX_XLSX_ENTRY_RATIO} times")


def _ends_with_parquet_magic(file: IO[bytes], size: int) -> bool:
    if size < 12:
        return False
    file.seek(size - 4)
    return file.read(4) == b"PAR1"


def detect_dataset_format(
    head: bytes, file: IO[bytes], size: int, *, max_expanded_bytes: int | None = None
) -> DatasetFormat:
    """The format of a stored dataset from its first bytes and the seekable file;
    raises ``UnrecognisedDataset`` for anything else (executables, archives, images,
    compressed text, workbooks that are zip bombs or expand past ``max_expanded_bytes``)."""
    if head.startswith(b"PAR1"):
        if _ends_with_parquet_magic(file, size):
            return DatasetFormat.parquet
        raise UnrecognisedDataset("a truncated Parquet file")
    if head.startswith(b"PK\x03\x04"):
        _check_workbook(file, size, max_expanded_bytes)
        return DatasetFormat.xlsx
    compression = compression_of(head)
    if compression is not None:
        raise UnrecognisedDataset(f"a compressed file ({compression}); send the dataset uncompressed")
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
