"""Recognising a model file's format from its bytes alone.

Nothing here unpickles, imports or executes anything from the file, and the name a
client sent is never consulted. Each check is deliberately conservative: a file that
does not clearly match a format is ``other``.

- ``skops``: a zip archive whose member list holds ``schema.json`` (only the zip's
  central directory is read; nothing is extracted).
- ``onnx``: a protobuf ``ModelProto``: the file starts with field 1 (``ir_version``,
  tag ``0x08``) holding a small varint, and walking the top-level fields by their
  tags and lengths lands exactly on the end of the file, passing only ModelProto
  field numbers with their proper wire types and including ``graph`` (7).
- ``pickle``: the pickle protocol header ``0x80`` followed by a protocol number 2 to 5.
- ``joblib``: a pickle whose first KiB names joblib's ``NumpyArrayWrapper`` (or
  ``joblib``), or a zlib, gzip, bz2, xz or lzma stream (joblib's compressed forms)
  whose first decompressed bytes are a pickle header. Only a few KiB are
  decompressed, never the whole stream.
- ``xgboost-json``: a JSON object whose first key is ``"learner"`` (as XGBoost writes it).
- ``lightgbm-txt``: text starting ``tree\\n``, or whose first KiB contains both
  ``version=v`` and ``num_class=``.
"""

from __future__ import annotations

import bz2
import lzma
import re
import zipfile
import zlib
from enum import StrEnum
from typing import IO


class ModelFormat(StrEnum):
    skops = "skops"
    onnx = "onnx"
    joblib = "joblib"
    pickle = "pickle"
    xgboost_json = "xgboost-json"
    lightgbm_txt = "lightgbm-txt"
    other = "other"


# Formats whose loading runs code from the file: an admin must trust the version first.
CODE_EXECUTING_FORMATS = frozenset({ModelFormat.pickle, ModelFormat.joblib})

_JOBLIB_MARKERS = (b"NumpyArrayWrapper", b"joblib")
_XGBOOST = re.compile(rb'^\s*\{\s*"learner"\s*:\s*\{')
# ModelProto field number → wire type (0 varint, 2 length-delimited).
_ONNX_FIELDS = {1: 0, 2: 2, 3: 2, 4: 2, 5: 0, 6: 2, 7: 2, 8: 2, 14: 2, 20: 2, 25: 2}
_MAX_ONNX_FIELDS = 100_000


def _is_pickle(head: bytes) -> bool:
    return len(head) >= 2 and head[0] == 0x80 and 2 <= head[1] <= 5


def _decompressed_head(head: bytes) -> bytes | None:
    """The first bytes of a compressed stream, or None if ``head`` starts none we know."""
    try:
        if head[:2] == b"\x1f\x8b":  # gzip
            return zlib.decompressobj(16 + zlib.MAX_WBITS).decompress(head, 1024)
        if len(head) >= 2 and head[0] == 0x78 and (head[0] * 256 + head[1]) % 31 == 0:  # zlib
            return zlib.decompressobj().decompress(head, 1024)
        if head[:2] == b"ZF":  # joblib's oldest compressed format: "ZF" + length + zlib
            start = head.find(b"\x78", 2, 32)
            return zlib.decompressobj().decompress(head[start:], 1024) if start > 0 else None
        if head[:3] == b"BZh":
            return bz2.BZ2Decompressor().decompress(head, 1024)
        if head[:6] == b"\xfd7zXZ\x00":
            return lzma.LZMADecompressor(format=lzma.FORMAT_XZ).decompress(head, 1024)
        if head[:3] == b"\x5d\x00\x00":
            return lzma.LZMADecompressor(format=lzma.FORMAT_ALONE).decompress(head, 1024)
    except (zlib.error, OSError, EOFError, lzma.LZMAError, ValueError):
        return None
    return None


def _read_varint(file: IO[bytes]) -> int | None:
    value = shift = 0
    for _ in range(10):
        byte = file.read(1)
        if not byte:
            return None
        value |= (byte[0] & 0x7F) << shift
        if not byte[0] & 0x80:
            return value
        shift += 7
    return None


def _is_onnx(file: IO[bytes], size: int) -> bool:
    """Walk the top-level protobuf fields, seeking over their contents."""
    file.seek(0)
    seen: set[int] = set()
    for position in range(_MAX_ONNX_FIELDS):
        if file.tell() == size:
            return 1 in seen and 7 in seen
        tag = _read_varint(file)
        if tag is None:
            return False
        number, wire = tag >> 3, tag & 7
        if _ONNX_FIELDS.get(number) != wire or (position == 0 and number != 1):
            return False
        value = _read_varint(file)
        if value is None:
            return False
        if number == 1 and not 1 <= value <= 100:
            return False
        if wire == 2:
            if value > size - file.tell():
                return False
            file.seek(value, 1)
        seen.add(number)
    return False


def _is_skops(file: IO[bytes]) -> bool:
    file.seek(0)
    try:
        with zipfile.ZipFile(file) as archive:
            return "schema.json" in archive.namelist()
    except (zipfile.BadZipFile, OSError, ValueError, EOFError):
        return False


def detect_format(head: bytes, file: IO[bytes] | None = None, size: int | None = None) -> ModelFormat:
    """The format of a file from its first bytes (``head``) and, for the formats that
    need more than the start (zip archives, ONNX), the seekable stored file."""
    if head[:4] == b"PK\x03\x04":
        return ModelFormat.skops if file is not None and _is_skops(file) else ModelFormat.other
    if _is_pickle(head):
        first_kib = head[:1024]
        return (
            ModelFormat.joblib
            if any(marker in first_kib for marker in _JOBLIB_MARKERS)
            else ModelFormat.pickle
        )
    inner = _decompressed_head(head)
    if inner is not None and _is_pickle(inner):
        return ModelFormat.joblib
    if _XGBOOST.match(head):
        return ModelFormat.xgboost_json
    first_kib = head[:1024]
    if head.startswith(b"tree\n") or (b"version=v" in first_kib and b"num_class=" in first_kib):
        return ModelFormat.lightgbm_txt
    if head[:1] == b"\x08" and file is not None and size is not None:
        try:
            if _is_onnx(file, size):
                return ModelFormat.onnx
        except (OSError, ValueError):
            pass
    return ModelFormat.other
