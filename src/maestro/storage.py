"""The artifact store: model files, datasets and run artifacts, over fsspec.

The default is a local directory; any fsspec URL (``s3://bucket/prefix`` with the
``s3`` extra, ``memory://`` in tests) works the same way. Keys are generated here,
never taken from user input, so a client-chosen name can never become a path.
Writes are atomic: a reader sees a complete object or nothing, and a process killed
mid-upload leaves at most a temporary file that maintenance removes later.
"""

from __future__ import annotations

import contextlib
import hashlib
import logging
import os
import re
import secrets
import time
from collections.abc import AsyncIterable, Iterable, Iterator
from dataclasses import dataclass
from datetime import UTC, datetime
from typing import IO, Any

import anyio
from fsspec.core import url_to_fs
from fsspec.implementations.local import LocalFileSystem
from sqlalchemy.orm import Session

from maestro.db import run_after_commit
from maestro.errors import NotFound, PayloadTooLarge

logger = logging.getLogger(__name__)

CHUNK_SIZE = 1024 * 1024
TEMP_DIR = ".tmp"
# Object stores publish an object only when its upload completes, so writing straight
# to the final key is already atomic there.
_ATOMIC_PUT_PROTOCOLS = {"s3", "s3a", "gs", "gcs", "az", "abfs", "adl"}
_PREFIX = re.compile(r"^[a-z0-9][a-z0-9_-]{0,63}(/[a-z0-9][a-z0-9_-]{0,63}){0,4}$")
_KEY = re.compile(r"^[a-z0-9][a-z0-9_-]{0,63}(/[a-z0-9][a-z0-9_.-]{0,127}){0,8}$")


class InvalidKey(ValueError):
    pass


@dataclass(frozen=True)
class StoredObject:
    key: str
    size: int
    sha256: str


def validate_key(key: str) -> str:
    if not _KEY.fullmatch(key) or ".." in key:
        raise InvalidKey(f"not a valid artifact key: {key!r}")
    return key


class ArtifactWriter:
    """Receives an object chunk by chunk, enforcing the byte limit and hashing as it
    goes. Nothing is visible under the key until ``commit``; ``abort`` (or leaving a
    ``with`` block by an exception) removes every trace."""

    def __init__(self, store: ArtifactStore, key: str, max_bytes: int | None) -> None:
        self.store = store
        self.key = key
        self.max_bytes = max_bytes
        self.size = 0
        self._hash = hashlib.sha256()
        self._direct = store.protocol in _ATOMIC_PUT_PROTOCOLS
        self._write_path = store.path(key) if self._direct else store.temp_path()
        if not self._direct:
            store.fs.makedirs(store.fs._parent(self._write_path), exist_ok=True)
        self._file: IO[bytes] | None = store.fs.open(self._write_path, "wb")
        self._done = False

    def write(self, chunk: bytes) -> None:
        if self._file is None:
            raise RuntimeError("writer is closed")
        self.size += len(chunk)
        if self.max_bytes is not None and self.size > self.max_bytes:
            self.abort()
            raise PayloadTooLarge(
                f"The upload exceeds the limit of {self.max_bytes} bytes",
                details=[("file", f"larger than {self.max_bytes} bytes")],
            )
        self._hash.update(chunk)
        self._file.write(chunk)

    def commit(self) -> StoredObject:
        if self._file is None:
            raise RuntimeError("writer is closed")
        file, self._file = self._file, None
        if self.store.is_local:
            file.flush()
            os.fsync(file.fileno())
        file.close()
        if not self._direct:
            final = self.store.path(self.key)
            self.store.fs.makedirs(self.store.fs._parent(final), exist_ok=True)
            if self.store.is_local:
                os.replace(self._write_path, final)
            else:
                self.store.fs.mv(self._write_path, final)
        self._done = True
        return StoredObject(key=self.key, size=self.size, sha256=self._hash.hexdigest())

    def abort(self) -> None:
        if self._done:
            return
        self._done = True
        if self._file is not None:
            with contextlib.suppress(Exception):
                self._file.close()
            self._file = None
        with contextlib.suppress(FileNotFoundError, OSError):
            self.store.fs.rm(self._write_path)

    def __enter__(self) -> ArtifactWriter:
        return self

    def __exit__(self, exc_type: Any, *_: Any) -> None:
        if exc_type is not None or not self._done:
            self.abort()


class ArtifactStore:
    def __init__(self, url: str) -> None:
        self.url = url
        self.fs, root = url_to_fs(url)
        self.is_local = isinstance(self.fs, LocalFileSystem)
        protocol = self.fs.protocol
        self.protocol = protocol if isinstance(protocol, str) else protocol[0]
        self.root = root.rstrip("/")
        if self.is_local:
            os.makedirs(os.path.join(self.root, TEMP_DIR), exist_ok=True)

    # --- keys and paths ----------------------------------------------------------------
    @staticmethod
    def new_key(prefix: str, suffix: str = "") -> str:
        """A fresh key under ``prefix`` (e.g. ``models/proj_x``), spread by month."""
        if not _PREFIX.fullmatch(prefix):
            raise InvalidKey(f"not a valid key prefix: {prefix!r}")
        if suffix and not re.fullmatch(r"\.[a-z0-9]{1,10}", suffix):
            raise InvalidKey(f"not a valid key suffix: {suffix!r}")
        month = datetime.now(UTC).strftime("%Y/%m")
        return f"{prefix}/{month}/{secrets.token_hex(16)}{suffix}"

    def path(self, key: str) -> str:
        return f"{self.root}/{validate_key(key)}"

    def temp_path(self) -> str:
        return f"{self.root}/{TEMP_DIR}/{secrets.token_hex(16)}.part"

    # --- writing -----------------------------------------------------------------------
    def writer(self, prefix: str, *, max_bytes: int | None = None, suffix: str = "") -> ArtifactWriter:
        return ArtifactWriter(self, self.new_key(prefix, suffix), max_bytes)

    def put_stream(
        self, prefix: str, chunks: Iterable[bytes], *, max_bytes: int | None = None, suffix: str = ""
    ) -> StoredObject:
        with self.writer(prefix, max_bytes=max_bytes, suffix=suffix) as writer:
            for chunk in chunks:
                writer.write(chunk)
            return writer.commit()

    def put_bytes(
        self, prefix: str, data: bytes, *, max_bytes: int | None = None, suffix: str = ""
    ) -> StoredObject:
        return self.put_stream(prefix, [data], max_bytes=max_bytes, suffix=suffix)

    async def put_async_stream(
        self, prefix: str, chunks: AsyncIterable[bytes], *, max_bytes: int | None = None, suffix: str = ""
    ) -> StoredObject:
        """For request bodies: the limit is enforced as bytes arrive, so an oversized
        upload is refused without ever being held in memory or fully on disk."""
        writer = await anyio.to_thread.run_sync(
            lambda: self.writer(prefix, max_bytes=max_bytes, suffix=suffix)
        )
        try:
            async for chunk in chunks:
                if chunk:
                    await anyio.to_thread.run_sync(writer.write, chunk)
            return await anyio.to_thread.run_sync(writer.commit)
        except BaseException:
            # Shielded: a cancelled upload (client gone) must still clean up.
            with anyio.CancelScope(shield=True):
                await anyio.to_thread.run_sync(writer.abort)
            raise

    # --- reading -----------------------------------------------------------------------
    def open(self, key: str) -> IO[bytes]:
        try:
            return self.fs.open(self.path(key), "rb")
        except FileNotFoundError as exc:
            raise NotFound("The stored file is missing") from exc

    def iter_bytes(self, key: str, chunk_size: int = CHUNK_SIZE) -> Iterator[bytes]:
        with self.open(key) as file:
            while chunk := file.read(chunk_size):
                yield chunk

    def read_bytes(self, key: str) -> bytes:
        with self.open(key) as file:
            return file.read()

    def exists(self, key: str) -> bool:
        return self.fs.exists(self.path(key))

    def size(self, key: str) -> int:
        try:
            return int(self.fs.size(self.path(key)))
        except FileNotFoundError as exc:
            raise NotFound("The stored file is missing") from exc

    def delete(self, key: str) -> bool:
        """Remove an object; returns False when it was already gone."""
        try:
            self.fs.rm(self.path(key))
        except FileNotFoundError:
            return False
        return True

    # --- upkeep ------------------------------------------------------------------------
    def remove_stale_temporaries(self, older_than_seconds: float) -> int:
        """Delete temporary files left by writers that never finished (a killed
        process, a dropped connection)."""
        temp_root = f"{self.root}/{TEMP_DIR}"
        try:
            entries = self.fs.ls(temp_root, detail=True)
        except FileNotFoundError:
            return 0
        cutoff = time.time() - older_than_seconds
        removed = 0
        for entry in entries:
            modified = entry.get("mtime") or entry.get("created") or 0
            if isinstance(modified, datetime):
                modified = modified.timestamp()
            if entry.get("type") == "file" and float(modified) < cutoff:
                with contextlib.suppress(FileNotFoundError):
                    self.fs.rm(entry["name"])
                    removed += 1
        return removed

    def check(self) -> None:
        """Raise if the store cannot be reached or written (used by readiness)."""
        if self.is_local:
            if not os.access(self.root, os.W_OK):
                raise OSError(f"artifact directory {self.root} is not writable")
            return
        probe = f"{self.root}/{TEMP_DIR}/check-{secrets.token_hex(8)}"
        self.fs.pipe_file(probe, b"")
        self.fs.rm(probe)


def delete_after_commit(session: Session, store: ArtifactStore, keys: Iterable[str | None]) -> None:
    """Remove the objects under ``keys`` once the session's transaction has committed
    (never if it rolls back): how a deletion of rows takes their files with it."""
    pending = [key for key in keys if key]
    if not pending:
        return

    def remove() -> None:
        for key in pending:
            try:
                store.delete(key)
            except Exception:  # one unreachable object must not keep the others
                logger.warning("could not remove %s from the artifact store", key, exc_info=True)

    run_after_commit(session, remove)
