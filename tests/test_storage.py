"""The artifact store, on a real local directory and on fsspec's real in-memory filesystem.

Every behaviour that should not depend on the backend runs on both (``[local]`` and
``[memory]``). The memory filesystem is process-global, so each test gets a root of
its own.
"""

from __future__ import annotations

import contextlib
import hashlib
import os
import posixpath
import random
import re
import time
from collections.abc import AsyncIterator, Iterator
from pathlib import Path
from uuid import uuid4

import anyio
import pytest

from maestro.errors import NotFound, PayloadTooLarge
from maestro.storage import CHUNK_SIZE, TEMP_DIR, ArtifactStore, InvalidKey, StoredObject, validate_key

PREFIX = "models/proj_abc"
# Larger than two read chunks, and not a multiple of CHUNK_SIZE, so streaming has a short tail.
BIG = random.Random(1234).randbytes(2 * CHUNK_SIZE + 12_345)


@pytest.fixture(params=["local", "memory"])
def store(request: pytest.FixtureRequest) -> ArtifactStore:
    return request.getfixturevalue(f"{request.param}_store")


@pytest.fixture
def local_store(tmp_path: Path) -> ArtifactStore:
    return ArtifactStore(str(tmp_path / "artifacts"))


@pytest.fixture
def memory_store() -> Iterator[ArtifactStore]:
    memory_store = ArtifactStore(f"memory://store-{uuid4().hex}")
    yield memory_store
    with contextlib.suppress(FileNotFoundError):
        memory_store.fs.rm(memory_store.root, recursive=True)


def stored_files(store: ArtifactStore) -> list[str]:
    """Every file under the store's root, relative to it, as the backend itself sees it."""
    if store.is_local:
        root = Path(store.root)
        return sorted(p.relative_to(root).as_posix() for p in root.rglob("*") if p.is_file())
    return sorted(posixpath.relpath(p, store.root) for p in store.fs.find(store.root))


def temp_files(store: ArtifactStore) -> list[str]:
    return [name for name in stored_files(store) if name.startswith(f"{TEMP_DIR}/")]


def sha256(data: bytes) -> str:
    return hashlib.sha256(data).hexdigest()


def pieces(data: bytes, size: int) -> Iterator[bytes]:
    for start in range(0, len(data), size):
        yield data[start : start + size]


# --- writing and reading back -------------------------------------------------------------
class TestRoundTrip:
    def test_put_bytes_reports_size_and_sha256(self, store: ArtifactStore) -> None:
        """Callers record size and checksum from the result; they must describe the bytes given."""
        data = b"weights \x00\xff" * 100
        stored = store.put_bytes(PREFIX, data)
        assert stored == StoredObject(key=stored.key, size=len(data), sha256=sha256(data))
        assert store.read_bytes(stored.key) == data
        assert store.size(stored.key) == len(data)
        assert store.exists(stored.key)

    def test_empty_object(self, store: ArtifactStore) -> None:
        """An empty upload is a valid object, not a missing one."""
        stored = store.put_bytes(PREFIX, b"")
        assert (stored.size, stored.sha256) == (0, sha256(b""))
        assert store.read_bytes(stored.key) == b""
        assert list(store.iter_bytes(stored.key)) == []
        assert store.size(stored.key) == 0

    def test_put_stream_of_uneven_chunks_is_reassembled_exactly(self, store: ArtifactStore) -> None:
        """Chunk boundaries on the way in must not show in the stored bytes or the hash."""
        stored = store.put_stream(PREFIX, pieces(BIG, 300_001))
        assert (stored.size, stored.sha256) == (len(BIG), sha256(BIG))
        assert store.read_bytes(stored.key) == BIG

    def test_iter_bytes_streams_in_chunk_size_pieces(self, store: ArtifactStore) -> None:
        """Downloads are served chunk by chunk, never as one object in memory."""
        key = store.put_bytes(PREFIX, BIG).key
        chunks = list(store.iter_bytes(key))
        assert [len(c) for c in chunks] == [CHUNK_SIZE, CHUNK_SIZE, 12_345]
        assert b"".join(chunks) == BIG
        assert b"".join(store.iter_bytes(key, chunk_size=1000)) == BIG

    def test_open_returns_a_readable_file(self, store: ArtifactStore) -> None:
        """open() is what range/seek-capable readers use; it must see the same bytes."""
        key = store.put_bytes(PREFIX, BIG).key
        with store.open(key) as file:
            assert file.read(10) == BIG[:10]
            file.seek(CHUNK_SIZE)
            assert file.read() == BIG[CHUNK_SIZE:]

    def test_a_successful_write_leaves_no_temporary(self, store: ArtifactStore) -> None:
        """Only the object itself remains; nothing accumulates in the temp area per upload."""
        key = store.put_stream(PREFIX, pieces(BIG, CHUNK_SIZE)).key
        assert stored_files(store) == [key]


# --- key generation -----------------------------------------------------------------------
class TestKeyGeneration:
    def test_key_is_under_the_prefix_with_a_random_name(self, store: ArtifactStore) -> None:
        """Keys are made by the store, never by the client: prefix, month, then 128 random bits."""
        key = store.put_bytes(PREFIX, b"x").key
        assert re.fullmatch(rf"{PREFIX}/\d{{4}}/\d{{2}}/[0-9a-f]{{32}}", key)
        assert validate_key(key) == key

    def test_suffix_is_kept(self, store: ArtifactStore) -> None:
        """A file-type suffix survives, so downloads and runtimes can recognise the format."""
        key = store.put_bytes(PREFIX, b"x", suffix=".onnx").key
        assert re.fullmatch(rf"{PREFIX}/\d{{4}}/\d{{2}}/[0-9a-f]{{32}}\.onnx", key)
        assert store.read_bytes(key) == b"x"

    def test_two_writes_never_share_a_key(self, store: ArtifactStore) -> None:
        """Identical uploads must not overwrite each other."""
        first = store.put_bytes(PREFIX, b"same")
        second = store.put_bytes(PREFIX, b"same")
        assert first.key != second.key
        assert first.sha256 == second.sha256
        assert len({ArtifactStore.new_key(PREFIX) for _ in range(1000)}) == 1000

    @pytest.mark.parametrize(
        "suffix", ["onnx", ".ONNX", ".tar.gz", "./x", "../x", ".a/b", ".abcdefghijk", ".", ". x"]
    )
    def test_bad_suffix_is_refused_and_nothing_is_written(self, store: ArtifactStore, suffix: str) -> None:
        """The suffix is the one user-influenced part of a key; only '.' plus a short word is allowed."""
        with pytest.raises(InvalidKey):
            store.put_bytes(PREFIX, b"x", suffix=suffix)
        assert stored_files(store) == []

    @pytest.mark.parametrize(
        "prefix",
        [
            "../etc",
            "models/../x",
            "models/..",
            "..",
            "/models",
            "models/",
            "models//x",
            "Models",
            "models\\x",
            "%2e%2e/x",
            "",
            ".tmp",
            "models/.tmp",
            "models/x.y",
            "a" * 65,
            "a/b/c/d/e/f",
            "models/x y",
            "models/\u0445",
            "models\n",
        ],
    )
    def test_hostile_prefix_is_refused(self, store: ArtifactStore, prefix: str) -> None:
        """A bad prefix fails up front, before a writer or temporary exists."""
        with pytest.raises(InvalidKey):
            ArtifactStore.new_key(prefix)
        with pytest.raises(InvalidKey):
            store.writer(prefix)
        assert stored_files(store) == []

    @pytest.mark.parametrize("prefix", ["a", "0", "a" * 64, "a/b/c/d/e", "models/proj_a-b"])
    def test_accepted_prefixes(self, prefix: str) -> None:
        """The limits of the prefix grammar, so a tightening is a deliberate change."""
        assert ArtifactStore.new_key(prefix).startswith(f"{prefix}/")


# --- key validation and path containment --------------------------------------------------
HOSTILE_KEYS = [
    "../etc",
    "../etc/passwd",
    "a/../../b",
    "a/..",
    "a/b/..",
    "a/.",
    "./a",
    "/abs",
    "/etc/passwd",
    "a//b",
    "a/",
    "A/B",
    "a/B",
    "a\\b",
    "a/..\\b",
    "%2e%2e/x",
    "a/%2e%2e",
    "",
    "a" * 1000,
    ".tmp/x",
    "a/.tmp",
    "~/x",
    "a:b",
    "file:///etc/passwd",
    "memory://other/x",
    "a/b c",
    "a/b\x00",
    "a/b\r",
    "a/\u0430",
    "a/b..c",
    "/".join(["a"] * 10),
    "a/b\n",
    "a\n",
]


class TestKeyValidation:
    @pytest.mark.parametrize("key", HOSTILE_KEYS)
    def test_hostile_key_is_refused_everywhere(self, store: ArtifactStore, key: str) -> None:
        """Every entry point that takes a key refuses it before touching the filesystem."""
        with pytest.raises(InvalidKey):
            validate_key(key)
        for operation in (store.path, store.exists, store.open, store.read_bytes, store.size, store.delete):
            with pytest.raises(InvalidKey):
                operation(key)
        with pytest.raises(InvalidKey):
            next(store.iter_bytes(key))

    def test_file_outside_the_root_cannot_be_read(self, tmp_path: Path) -> None:
        """The point of validation: a key can never reach a sibling of the store's directory."""
        (tmp_path / "secret").write_bytes(b"secret")
        store = ArtifactStore(str(tmp_path / "artifacts"))
        for key in ("../secret", "a/../../secret", str(tmp_path / "secret")):
            with pytest.raises(InvalidKey):
                store.read_bytes(key)

    @pytest.mark.parametrize(
        "key", ["a", "0", "a/b.", "a/b.c.d", "a/b-", "a/b_", "a" * 64, "a/" + "b" * 128, "/".join(["a"] * 9)]
    )
    def test_accepted_keys_map_inside_the_root(self, store: ArtifactStore, key: str) -> None:
        """The edges of the key grammar that are allowed, and where they land."""
        assert store.path(key) == f"{store.root}/{key}"
        assert not store.exists(key)

    def test_no_accepted_key_escapes_the_root(self, local_store: ArtifactStore) -> None:
        """Fuzz: whatever validate_key lets through resolves to a path strictly inside the root."""
        rng = random.Random(20240611)
        safe, risky = "abcdef0123_-./", ".\\/%:~ A\n\x00\u0430"
        root = os.path.realpath(local_store.root)
        accepted = 0
        for _ in range(5000):
            key = "".join(
                rng.choice(risky) if rng.random() < 0.03 else rng.choice(safe)
                for _ in range(rng.randint(0, 40))
            )
            try:
                path = local_store.path(key)
            except InvalidKey:
                continue
            accepted += 1
            resolved = os.path.realpath(path)
            assert resolved.startswith(root + os.sep), key
            assert posixpath.normpath(path) == path, key
            assert not Path(resolved).relative_to(root).parts[0].startswith("."), key
        assert accepted > 500  # the fuzz must exercise the accepting side too


# --- the byte limit -----------------------------------------------------------------------
class TestByteLimit:
    def test_exactly_the_limit_is_accepted(self, store: ArtifactStore) -> None:
        """The limit is inclusive: max_bytes bytes is a valid upload."""
        stored = store.put_stream(PREFIX, pieces(BIG, 100_000), max_bytes=len(BIG))
        assert stored.size == len(BIG)
        assert store.read_bytes(stored.key) == BIG

    @pytest.mark.parametrize(
        ("chunks", "limit"),
        [
            ([b"x" * 11], 10),
            ([b"x" * 10, b"y"], 10),
            ([b"x"], 0),
            (list(pieces(BIG, 300_000)), CHUNK_SIZE),
        ],
        ids=["one-chunk", "last-byte", "zero-limit", "multi-chunk"],
    )
    def test_over_the_limit_raises_413_and_leaves_nothing(
        self, store: ArtifactStore, chunks: list[bytes], limit: int
    ) -> None:
        """An oversized upload is refused and leaves no object and no temporary behind."""
        with pytest.raises(PayloadTooLarge) as raised:
            store.put_stream(PREFIX, chunks, max_bytes=limit)
        assert raised.value.status_code == 413
        assert str(limit) in raised.value.message
        assert stored_files(store) == []

    def test_writer_over_the_limit_removes_its_key_and_closes(self, store: ArtifactStore) -> None:
        """After the refusal the writer is dead: no more writes, no commit, nothing under the key."""
        writer = store.writer(PREFIX, max_bytes=5)
        writer.write(b"12345")
        with pytest.raises(PayloadTooLarge):
            writer.write(b"6")
        assert not store.exists(writer.key)
        assert stored_files(store) == []
        with pytest.raises(RuntimeError):
            writer.write(b"x")
        with pytest.raises(RuntimeError):
            writer.commit()

    def test_limit_is_checked_before_the_chunk_is_stored(self, local_store: ArtifactStore) -> None:
        """The chunk that crosses the limit is never written, so a huge chunk never reaches the disk."""
        writer = local_store.writer(PREFIX, max_bytes=3)
        writer.write(b"abc")
        (temp,) = temp_files(local_store)
        with pytest.raises(PayloadTooLarge):
            writer.write(b"d" * CHUNK_SIZE)
        assert not (Path(local_store.root) / temp).exists()


# --- atomic publication -------------------------------------------------------------------
class TestAtomicity:
    def test_key_is_invisible_until_commit(self, store: ArtifactStore) -> None:
        """A reader sees a complete object or nothing, never a half-written one."""
        writer = store.writer(PREFIX)
        writer.write(BIG[:CHUNK_SIZE])
        writer.write(BIG[CHUNK_SIZE:])
        assert not store.exists(writer.key)
        with pytest.raises(NotFound):
            store.read_bytes(writer.key)
        stored = writer.commit()
        assert store.exists(stored.key)
        assert store.read_bytes(stored.key) == BIG

    def test_local_writer_stages_in_the_temp_directory(self, local_store: ArtifactStore) -> None:
        """On a local disk the bytes live in .tmp until an atomic rename moves them to the key."""
        writer = local_store.writer(PREFIX)
        writer.write(b"partial")
        assert stored_files(local_store) == temp_files(local_store)
        assert len(temp_files(local_store)) == 1
        stored = writer.commit()
        assert stored_files(local_store) == [stored.key]

    def test_abort_removes_every_trace(self, store: ArtifactStore) -> None:
        """A cancelled upload leaves neither the object nor its temporary."""
        writer = store.writer(PREFIX)
        writer.write(BIG)
        writer.abort()
        assert not store.exists(writer.key)
        assert stored_files(store) == []
        writer.abort()  # idempotent

    def test_abort_after_commit_keeps_the_object(self, store: ArtifactStore) -> None:
        """Cleanup code that aborts unconditionally must not destroy a committed object."""
        writer = store.writer(PREFIX)
        writer.write(b"kept")
        stored = writer.commit()
        writer.abort()
        assert store.read_bytes(stored.key) == b"kept"
        with pytest.raises(RuntimeError):
            writer.commit()

    def test_exception_in_with_block_leaves_nothing(self, store: ArtifactStore) -> None:
        """A failure mid-upload (e.g. a dropped connection) cleans up on its own."""
        with pytest.raises(ConnectionError), store.writer(PREFIX) as writer:
            writer.write(b"some bytes")
            raise ConnectionError("client went away")
        assert not store.exists(writer.key)
        assert stored_files(store) == []

    def test_with_block_without_commit_leaves_nothing(self, store: ArtifactStore) -> None:
        """Forgetting to commit is an abort, not a silently published object."""
        with store.writer(PREFIX) as writer:
            writer.write(b"forgotten")
        assert stored_files(store) == []

    def test_failing_source_iterable_leaves_nothing(self, store: ArtifactStore) -> None:
        """put_stream cleans up when the source itself fails part-way."""

        def source() -> Iterator[bytes]:
            yield b"first"
            raise OSError("read error")

        with pytest.raises(OSError, match="read error"):
            store.put_stream(PREFIX, source())
        assert stored_files(store) == []


# --- async uploads ------------------------------------------------------------------------
class TestAsyncUpload:
    def test_async_stream_round_trip(self, store: ArtifactStore) -> None:
        """Request bodies arrive as async chunks, including empty ones; the result matches the bytes."""

        async def body() -> AsyncIterator[bytes]:
            for chunk in pieces(BIG, 500_000):
                yield chunk
                yield b""

        async def main() -> StoredObject:
            return await store.put_async_stream(PREFIX, body(), suffix=".bin")

        stored = anyio.run(main)
        assert (stored.size, stored.sha256) == (len(BIG), sha256(BIG))
        assert stored.key.endswith(".bin")
        assert store.read_bytes(stored.key) == BIG
        assert stored_files(store) == [stored.key]

    def test_async_over_limit_stops_reading_and_leaves_nothing(self, store: ArtifactStore) -> None:
        """The body is refused as soon as it crosses the limit, without reading the rest."""
        pulled: list[int] = []

        async def body() -> AsyncIterator[bytes]:
            for index in range(100):
                pulled.append(index)
                yield b"x" * 1000

        async def main() -> StoredObject:
            return await store.put_async_stream(PREFIX, body(), max_bytes=2500)

        with pytest.raises(PayloadTooLarge) as raised:
            anyio.run(main)
        assert raised.value.status_code == 413
        assert pulled == [0, 1, 2]
        assert stored_files(store) == []

    def test_async_source_error_leaves_nothing(self, store: ArtifactStore) -> None:
        """A client disconnect surfacing as an exception from the body cleans up."""

        async def body() -> AsyncIterator[bytes]:
            yield b"start"
            raise ConnectionError("client went away")

        async def main() -> StoredObject:
            return await store.put_async_stream(PREFIX, body())

        with pytest.raises(ConnectionError):
            anyio.run(main)
        assert stored_files(store) == []

    def test_cancelled_upload_leaves_nothing(self, store: ArtifactStore) -> None:
        """A server cancelling the request task (client gone, shutdown) must still clean up."""

        async def main() -> None:
            started = anyio.Event()

            async def body() -> AsyncIterator[bytes]:
                yield b"start"
                started.set()
                await anyio.sleep_forever()
                yield b"never"

            async with anyio.create_task_group() as group:
                group.start_soon(store.put_async_stream, PREFIX, body())
                await started.wait()
                await anyio.sleep(0.02)
                group.cancel_scope.cancel()

        anyio.run(main)
        assert stored_files(store) == []


# --- deleting and missing objects ---------------------------------------------------------
class TestDeleteAndMissing:
    def test_delete_returns_true_then_false(self, store: ArtifactStore) -> None:
        """Deleting is idempotent and tells the caller whether there was something to delete."""
        key = store.put_bytes(PREFIX, b"bye").key
        assert store.delete(key) is True
        assert not store.exists(key)
        assert store.delete(key) is False

    def test_delete_touches_only_its_object(self, store: ArtifactStore) -> None:
        """Neighbours under the same prefix survive."""
        doomed = store.put_bytes(PREFIX, b"a").key
        kept = store.put_bytes(PREFIX, b"b").key
        store.delete(doomed)
        assert store.read_bytes(kept) == b"b"

    def test_missing_key_is_404(self, store: ArtifactStore) -> None:
        """A valid but absent key is NotFound (404) for every reader, not an OSError (500)."""
        key = ArtifactStore.new_key(PREFIX)
        assert not store.exists(key)
        for operation in (store.open, store.read_bytes, store.size):
            with pytest.raises(NotFound) as raised:
                operation(key)
            assert raised.value.status_code == 404
        with pytest.raises(NotFound):
            next(store.iter_bytes(key))

    def test_deleted_key_is_404(self, store: ArtifactStore) -> None:
        """A reference to a deleted object reads as missing."""
        key = store.put_bytes(PREFIX, b"gone").key
        store.delete(key)
        with pytest.raises(NotFound):
            store.read_bytes(key)
        with pytest.raises(NotFound):
            store.size(key)


# --- maintenance --------------------------------------------------------------------------
class TestStaleTemporaries:
    def test_removes_old_abandoned_temporaries_and_keeps_fresh_ones(self, local_store: ArtifactStore) -> None:
        """A writer killed mid-upload is cleaned up later; an upload in progress is not disturbed."""
        abandoned = local_store.writer(PREFIX)
        abandoned.write(b"abandoned")
        (old_temp,) = temp_files(local_store)
        old = time.time() - 7200
        os.utime(Path(local_store.root) / old_temp, (old, old))

        in_progress = local_store.writer(PREFIX)
        in_progress.write(b"still ")
        (fresh_temp,) = set(temp_files(local_store)) - {old_temp}

        assert local_store.remove_stale_temporaries(older_than_seconds=3600) == 1
        assert temp_files(local_store) == [fresh_temp]

        in_progress.write(b"uploading")
        stored = in_progress.commit()
        assert local_store.read_bytes(stored.key) == b"still uploading"
        abandoned.abort()  # the late abort of a swept writer is harmless
        assert stored_files(local_store) == [stored.key]

    def test_counts_every_removed_file(self, local_store: ArtifactStore) -> None:
        """The return value is what maintenance logs; it counts files, not calls."""
        temp_dir = Path(local_store.root) / TEMP_DIR
        old = time.time() - 7200
        for index in range(3):
            path = temp_dir / f"left-{index}.part"
            path.write_bytes(b"x")
            os.utime(path, (old, old))
        assert local_store.remove_stale_temporaries(older_than_seconds=60) == 3
        assert list(temp_dir.iterdir()) == []

    def test_committed_objects_are_never_swept(self, local_store: ArtifactStore) -> None:
        """Only the temp area is maintained; an old object is data, not debris."""
        key = local_store.put_bytes(PREFIX, b"precious").key
        old = time.time() - 10 * 86400
        os.utime(local_store.path(key), (old, old))
        assert local_store.remove_stale_temporaries(older_than_seconds=60) == 0
        assert local_store.read_bytes(key) == b"precious"

    def test_memory_temporaries_by_age(self, memory_store: ArtifactStore) -> None:
        """The same sweep works on an object store, whose listings carry 'created' times."""
        store = memory_store
        temp = f"{store.root}/{TEMP_DIR}/left.part"
        store.fs.pipe_file(temp, b"x")
        assert store.remove_stale_temporaries(older_than_seconds=3600) == 0
        assert store.fs.exists(temp)
        time.sleep(0.01)
        assert store.remove_stale_temporaries(older_than_seconds=0) == 1
        assert not store.fs.exists(temp)

    def test_no_temp_directory_means_nothing_to_do(self, memory_store: ArtifactStore) -> None:
        """A fresh object store has no .tmp at all; that is not an error."""
        assert memory_store.remove_stale_temporaries(older_than_seconds=0) == 0


# --- readiness ----------------------------------------------------------------------------
class TestCheck:
    def test_writable_local_directory_passes(self, local_store: ArtifactStore) -> None:
        """Readiness must be green for a normal data directory."""
        local_store.check()

    @pytest.mark.skipif(os.name != "posix" or os.geteuid() == 0, reason="root can write anywhere")
    def test_read_only_local_directory_fails(self, local_store: ArtifactStore) -> None:
        """Readiness goes red when uploads would fail."""
        os.chmod(local_store.root, 0o500)
        try:
            with pytest.raises(OSError, match="not writable"):
                local_store.check()
        finally:
            os.chmod(local_store.root, 0o700)

    def test_store_in_use_passes(self, store: ArtifactStore) -> None:
        """Readiness works on a store in use, whatever the backend."""
        store.put_bytes(PREFIX, b"x")
        store.check()

    def test_fresh_memory_store_passes(self, memory_store: ArtifactStore) -> None:
        """A brand-new, empty object store prefix is healthy: nothing has been uploaded yet."""
        memory_store.check()
