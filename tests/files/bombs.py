"""Crafted datasets built inside the tests: workbooks (honest, or lying about their
sizes in the zip headers) and Parquet files whose constant columns describe millions of
rows in a few KiB. Nothing here is a committed binary."""

from __future__ import annotations

import io
import struct
import zipfile
import zlib
from collections.abc import Iterator, Sequence
from pathlib import Path

import polars as pl

FEATURES = ("amount", "time_of_day", "day_of_week", "merchant_risk")

_CONTENT_TYPES = (
    '<?xml version="1.0" encoding="UTF-8" standalone="yes"?>'
    '<Types xmlns="http://schemas.openxmlformats.org/package/2006/content-types">'
    '<Default Extension="rels" ContentType="application/vnd.openxmlformats-package.relationships+xml"/>'
    '<Default Extension="xml" ContentType="application/xml"/>'
    '<Override PartName="/xl/workbook.xml" '
    'ContentType="application/vnd.openxmlformats-officedocument.spreadsheetml.sheet.main+xml"/>'
    '<Override PartName="/xl/worksheets/sheet1.xml" '
    'ContentType="application/vnd.openxmlformats-officedocument.spreadsheetml.worksheet+xml"/>'
    "</Types>"
)
_ROOT_RELS = (
    '<?xml version="1.0" encoding="UTF-8" standalone="yes"?>'
    '<Relationships xmlns="http://schemas.openxmlformats.org/package/2006/relationships">'
    '<Relationship Id="rId1" '
    'Type="http://schemas.openxmlformats.org/officeDocument/2006/relationships/officeDocument" '
    'Target="xl/workbook.xml"/></Relationships>'
)
_WORKBOOK = (
    '<?xml version="1.0" encoding="UTF-8" standalone="yes"?>'
    '<workbook xmlns="http://schemas.openxmlformats.org/spreadsheetml/2006/main" '
    'xmlns:r="http://schemas.openxmlformats.org/officeDocument/2006/relationships">'
    '<sheets><sheet name="Sheet1" sheetId="1" r:id="rId1"/></sheets></workbook>'
)
_WORKBOOK_RELS = (
    '<?xml version="1.0" encoding="UTF-8" standalone="yes"?>'
    '<Relationships xmlns="http://schemas.openxmlformats.org/package/2006/relationships">'
    '<Relationship Id="rId1" '
    'Type="http://schemas.openxmlformats.org/officeDocument/2006/relationships/worksheet" '
    'Target="worksheets/sheet1.xml"/></Relationships>'
)
SHEET = "xl/worksheets/sheet1.xml"


def _sheet(rows: int, names: Sequence[str], value: float) -> Iterator[bytes]:
    """The sheet's XML in chunks. Rows and cells leave out their optional ``r``
    references, so every row is the same bytes and deflate packs them about 1000:1."""
    yield (
        b'<?xml version="1.0" encoding="UTF-8" standalone="yes"?>'
        b'<worksheet xmlns="http://schemas.openxmlformats.org/spreadsheetml/2006/main"><sheetData>'
    )
    header = "".join(f'<c t="inlineStr"><is><t>{name}</t></is></c>' for name in names)
    yield f"<row>{header}</row>".encode()
    row = ("<row>" + f"<c><v>{value}</v></c>" * len(names) + "</row>").encode()
    for start in range(0, rows, 10_000):
        yield row * min(10_000, rows - start)
    yield b"</sheetData></worksheet>"


def workbook(rows: int, *, names: Sequence[str] = FEATURES, value: float = 0.5, lie: bool = False) -> bytes:
    """A minimal XLSX workbook with one sheet of ``rows`` rows under a header. With
    ``lie``, the sheet's part declares 1,000 bytes in both zip headers, with the
    checksum of its first 1,000 bytes: ``zipfile`` then reads 1,000 bytes without
    complaint, while a spreadsheet reader inflates the whole sheet."""
    buffer = io.BytesIO()
    with zipfile.ZipFile(buffer, "w", zipfile.ZIP_DEFLATED) as archive:
        archive.writestr("[Content_Types].xml", _CONTENT_TYPES)
        archive.writestr("_rels/.rels", _ROOT_RELS)
        archive.writestr("xl/workbook.xml", _WORKBOOK)
        archive.writestr("xl/_rels/workbook.xml.rels", _WORKBOOK_RELS)
        prefix = b""
        with archive.open(SHEET, "w") as sheet:
            for chunk in _sheet(rows, names, value):
                if len(prefix) < 1000:
                    prefix += chunk[: 1000 - len(prefix)]
                sheet.write(chunk)
    data = bytearray(buffer.getvalue())
    if lie:
        _declare(data, SHEET, size=1000, crc=zlib.crc32(prefix))
    return bytes(data)


def _declare(data: bytearray, name: str, *, size: int, crc: int) -> None:
    """Patch the uncompressed size and CRC of ``name`` in its local and central headers."""
    encoded = name.encode()
    with zipfile.ZipFile(io.BytesIO(bytes(data))) as archive:
        local = archive.getinfo(name).header_offset
    assert data[local : local + 4] == b"PK\x03\x04"
    struct.pack_into("<I", data, local + 14, crc)
    struct.pack_into("<I", data, local + 22, size)
    central = data.index(b"PK\x01\x02")
    while True:
        name_length, extra_length, comment_length = struct.unpack_from("<HHH", data, central + 28)
        if data[central + 46 : central + 46 + name_length] == encoded:
            break
        central += 46 + name_length + extra_length + comment_length
        assert data[central : central + 4] == b"PK\x01\x02"
    struct.pack_into("<I", data, central + 16, crc)
    struct.pack_into("<I", data, central + 24, size)


def parquet_bomb(path: Path, rows: int, *, row_group_rows: int, columns: Sequence[str] = FEATURES) -> Path:
    """A Parquet file of constant columns: ``rows`` rows in a few KiB, written by
    streaming so the test never holds them."""
    (
        pl.LazyFrame()
        .select(pl.repeat(0.5, rows, dtype=pl.Float32).alias(columns[0]))
        .with_columns(pl.col(columns[0]).alias(name) for name in columns[1:])
        .sink_parquet(path, row_group_size=row_group_rows, compression="zstd")
    )
    return path


def _varint(number: int) -> bytes:
    out = bytearray()
    while True:
        low, number = number & 0x7F, number >> 7
        out.append(low | (0x80 if number else 0))
        if not number:
            return bytes(out)


def lying_parquet(path: Path, rows: int, *, declared: int, row_group_rows: int) -> Path:
    """A Parquet bomb whose footer declares ``declared`` rows for the file while its row
    groups hold ``rows``: the file-level ``num_rows`` (field 3 of FileMetaData, an i64 in
    Thrift's compact encoding) is rewritten and the footer length fixed up."""
    parquet_bomb(path, rows, row_group_rows=row_group_rows)
    data = path.read_bytes()
    footer_length = struct.unpack_from("<I", data, len(data) - 8)[0]
    start = len(data) - 8 - footer_length
    footer = data[start:-8]
    honest = b"\x16" + _varint(2 * rows)  # field delta 1, type i64; zigzag-encoded
    assert footer.count(honest) == 1, "row groups must be smaller than the file"
    footer = footer.replace(honest, b"\x16" + _varint(2 * declared))
    path.write_bytes(data[:start] + footer + struct.pack("<I", len(footer)) + b"PAR1")
    return path


# --- memory, measured from outside a process ---------------------------------------------------
def _status(pid: int | str, field: str) -> int:
    with open(f"/proc/{pid}/status", encoding="ascii") as status:
        for line in status:
            if line.startswith(f"{field}:"):
                return int(line.split()[1]) * 1024
    raise AssertionError(f"no {field} for process {pid}")


class PeakMemory:
    """The most a process's resident memory grew by, from the kernel's figures: its
    high-water mark is reset to its current size at the start (``clear_refs``, Linux 4.0+;
    without it the mark since the process started is used, which can only overstate)."""

    def __init__(self, pid: int | str = "self") -> None:
        self.pid = pid
        self.start = _status(pid, "VmRSS")
        try:
            with open(f"/proc/{pid}/clear_refs", "w", encoding="ascii") as clear:
                clear.write("5")
        except OSError:
            self.start = min(self.start, _status(pid, "VmHWM"))

    @property
    def growth(self) -> int:
        return _status(self.pid, "VmHWM") - self.start
