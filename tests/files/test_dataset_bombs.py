"""Datasets that expand without bound when read: refused at upload where the bytes tell
(workbooks whose zip headers lie about their sizes, compressed text), and otherwise
refused by the bounded reader in an isolated process (Parquet files describing millions
of rows in a few KiB, metadata that lies), with a clear message and without the reading
process's memory moving."""

from __future__ import annotations

import gzip
import io
import json
import zipfile
import zlib
from collections.abc import Iterator
from pathlib import Path
from typing import Any

import polars as pl
import pytest
from fastapi.testclient import TestClient

from maestro.config import Settings
from maestro.files.formats import ExpandsTooFar, UnrecognisedDataset, detect_dataset_format, measure_zip
from maestro.files.reading import DatasetRefused, describe_dataset
from maestro.sandbox import Sandbox
from maestro.storage import ArtifactStore
from tests.factories import Factory, World
from tests.files.bombs import PeakMemory, lying_parquet, parquet_bomb, workbook
from tests.files.test_files import file_rows, send
from tests.registry.conftest import stored_files

ROOT = Path(__file__).resolve().parents[2]
MiB = 1024**2
# The most the reading side may grow while a bomb is read elsewhere.
CEILING = 100 * MiB
pytestmark = pytest.mark.skipif(not Path("/proc/self/status").exists(), reason="isolation needs Linux")


def error_of(response: Any, status: int) -> dict[str, Any]:
    assert response.status_code == status, response.text
    body = response.json()
    assert body["success"] is False and set(body) == {"success", "error", "metadata"}
    return body["error"]


# --- at upload -----------------------------------------------------------------------------------
class TestUploads:
    def test_a_workbook_lying_about_its_sizes_is_refused_and_nothing_is_stored(
        self, client: TestClient, factory: Factory, world: World, app: Any
    ) -> None:
        lying = workbook(1_000_000, lie=True)  # about 270 KB, 79 MB of XML, declaring 1,000 bytes
        with zipfile.ZipFile(io.BytesIO(lying)) as archive:
            assert sum(info.file_size for info in archive.infolist()) < 5_000  # what the headers say
            assert len(archive.read("xl/worksheets/sheet1.xml")) == 1_000  # zipfile believes them
        watch = PeakMemory()
        response = send(
            client, "datasets", world.developer.headers, lying, filename="book.xlsx", project_id=world.project
        )
        error = error_of(response, 422)
        assert error["code"] == "VALIDATION_ERROR"
        assert "expands past" in error["details"][0]["message"]
        assert watch.growth < CEILING
        assert stored_files(Path(app.state.store.root)) == [] and file_rows(factory) == 0

    def test_the_honest_version_is_refused_as_before(
        self, client: TestClient, factory: Factory, world: World, app: Any
    ) -> None:
        honest = workbook(1_000_000)
        response = send(
            client,
            "datasets",
            world.developer.headers,
            honest,
            filename="book.xlsx",
            project_id=world.project,
        )
        assert "over 100 times its size" in error_of(response, 422)["details"][0]["message"]
        assert stored_files(Path(app.state.store.root)) == [] and file_rows(factory) == 0

    def test_a_real_workbook_is_still_accepted(self, client: TestClient, world: World) -> None:
        response = send(
            client,
            "datasets",
            world.developer.headers,
            workbook(1_000),
            filename="book.xlsx",
            project_id=world.project,
        )
        assert response.status_code == 201, response.text
        assert response.json()["data"]["format"] == "xlsx"

    @pytest.mark.parametrize(
        ("content", "named"),
        [
            (gzip.compress(b"a,b\n" + b"1,2\n" * 100_000), "gzip"),
            (zlib.compress(b"a,b\n" + b"1,2\n" * 100_000), "zlib"),
            (b"\x28\xb5\x2f\xfd" + b"\x31" * 200, "zstd"),
        ],
        ids=["gzip", "zlib", "zstd"],
    )
    def test_compressed_text_is_refused(
        self, client: TestClient, factory: Factory, world: World, content: bytes, named: str
    ) -> None:
        """polars inflates gzip, zlib and zstd text on its own: a CSV must be plain text."""
        response = send(
            client,
            "datasets",
            world.developer.headers,
            content,
            filename="rows.csv",
            project_id=world.project,
        )
        assert f"compressed file ({named})" in error_of(response, 422)["details"][0]["message"]
        assert file_rows(factory) == 0

    def test_a_central_directory_of_many_entries_is_refused_before_it_is_parsed(
        self, client: TestClient, factory: Factory, world: World
    ) -> None:
        buffer = io.BytesIO()
        with zipfile.ZipFile(buffer, "w") as archive:
            archive.writestr("[Content_Types].xml", "<Types/>")
            archive.writestr("xl/workbook.xml", "<workbook/>")
            for number in range(20_000):
                archive.writestr(f"x/{number}", b"")
        response = send(
            client,
            "datasets",
            world.developer.headers,
            buffer.getvalue(),
            filename="book.xlsx",
            project_id=world.project,
        )
        assert "more than 10,000 parts" in error_of(response, 422)["details"][0]["message"]
        assert file_rows(factory) == 0


class TestRealSizes:
    """``measure_zip`` decompresses every part and believes none of the headers."""

    def test_real_sizes_of_an_honest_archive(self) -> None:
        sizes = measure_zip(io.BytesIO(workbook(100)), 10 * MiB)
        assert sizes["xl/worksheets/sheet1.xml"] > 5_000

    def test_a_part_that_declares_less_than_it_holds(self) -> None:
        with pytest.raises(UnrecognisedDataset, match="declares 1,000 bytes but holds"):
            measure_zip(io.BytesIO(workbook(100, lie=True)), 10 * MiB)

    def test_the_count_stops_at_the_limit(self) -> None:
        with pytest.raises(ExpandsTooFar, match="expands past 1,048,576 bytes"):
            measure_zip(io.BytesIO(workbook(1_000_000, lie=True)), MiB)

    def test_other_compression_methods_and_twin_names_are_refused(self) -> None:
        buffer = io.BytesIO()
        with zipfile.ZipFile(buffer, "w", zipfile.ZIP_BZIP2) as archive:
            archive.writestr("xl/workbook.xml", "<workbook/>")
        with pytest.raises(UnrecognisedDataset, match="only deflate is read"):
            measure_zip(io.BytesIO(buffer.getvalue()), MiB)
        twins = io.BytesIO()
        with zipfile.ZipFile(twins, "w") as archive:
            archive.writestr("xl/workbook.xml", "<workbook/>")
            with pytest.warns(UserWarning, match="Duplicate name"):
                archive.writestr("xl/workbook.xml", "<workbook>another</workbook>")
        with pytest.raises(UnrecognisedDataset, match="two parts of the same name"):
            measure_zip(io.BytesIO(twins.getvalue()), MiB)

    def test_detection_uses_the_real_sizes(self) -> None:
        lying = workbook(1_000_000, lie=True)
        with pytest.raises(ExpandsTooFar, match="expands past"):
            detect_dataset_format(lying[:4096], io.BytesIO(lying), len(lying))


# --- the bounded reader, in an isolated process ------------------------------------------------------
@pytest.fixture(scope="module")
def sandbox() -> Iterator[Sandbox]:
    box = Sandbox(python_path=[str(ROOT)])
    yield box
    box.close()


@pytest.fixture(scope="module")
def bombs(tmp_path_factory: pytest.TempPathFactory) -> dict[str, Path]:
    """The review's Parquet bombs, rebuilt: 5,000,000 rows in small row groups, 20,000,000
    rows in one row group, 100,000,000 rows, and 3,000,000 rows whose footer says 1,000."""
    folder = tmp_path_factory.mktemp("bombs")
    return {
        "5m": parquet_bomb(folder / "bomb5m.parquet", 5_000_000, row_group_rows=1_000_000),
        "20m-one-group": parquet_bomb(
            folder / "bomb20m1rg.parquet", 20_000_000, row_group_rows=20_000_000, columns=["amount"]
        ),
        "100m": parquet_bomb(
            folder / "bomb100m.parquet", 100_000_000, row_group_rows=10_000_000, columns=["amount"]
        ),
        "lying-footer": lying_parquet(
            folder / "liar.parquet", 3_000_000, declared=1_000, row_group_rows=500_000
        ),
    }


class Reader:
    def __init__(self, tmp_path: Path, sandbox: Sandbox) -> None:
        self.tmp_path = tmp_path
        self.sandbox = sandbox
        self.store = ArtifactStore(str(tmp_path / "artifacts"))

    def settings(self, **overrides: Any) -> Settings:
        values: dict[str, Any] = {
            "environment": "test",
            "data_dir": self.tmp_path / "data",
            "batch_job_memory_bytes": 512 * MiB,
            "batch_job_cpu_seconds": 120,
        }
        return Settings(_env_file=None, **{**values, **overrides})  # type: ignore[call-arg]

    def describe(self, content: bytes | Path, fmt: str, **overrides: Any) -> Any:
        data = content.read_bytes() if isinstance(content, Path) else content
        key = self.store.put_bytes("files/tests", data).key
        return describe_dataset(self.store, key, fmt, self.settings(**overrides), sandbox=self.sandbox)


@pytest.fixture
def reader(tmp_path: Path, sandbox: Sandbox) -> Reader:
    return Reader(tmp_path, sandbox)


def _frame() -> pl.DataFrame:
    return pl.DataFrame({"amount": [0.5, 1.5, -2.0], "label": ["a", "b", "c"]})


def _as(fmt: str) -> bytes:
    frame, buffer = _frame(), io.BytesIO()
    if fmt == "csv":
        frame.write_csv(buffer)
    elif fmt == "tsv":
        frame.write_csv(buffer, separator="\t")
    elif fmt == "jsonl":
        frame.write_ndjson(buffer)
    elif fmt == "parquet":
        frame.write_parquet(buffer)
    else:
        buffer.write(json.dumps({"instances": frame.to_dicts()}).encode())
    return buffer.getvalue()


class TestBoundedReader:
    @pytest.mark.parametrize("fmt", ["csv", "tsv", "json", "jsonl", "parquet"])
    def test_every_format_is_read(self, reader: Reader, fmt: str) -> None:
        shape = reader.describe(_as(fmt), "csv" if fmt == "tsv" else fmt)
        assert shape.rows == 3
        assert shape.columns == {"amount": "Float64", "label": "String"}

    def test_a_workbook_is_read(self, reader: Reader) -> None:
        shape = reader.describe(workbook(250), "xlsx")
        assert shape.rows == 250
        assert list(shape.columns) == ["amount", "time_of_day", "day_of_week", "merchant_risk"]

    @pytest.mark.parametrize(
        ("bomb", "rows"), [("5m", "5,000,000"), ("20m-one-group", "20,000,000"), ("100m", "100,000,000")]
    )
    def test_parquet_bombs_are_refused_from_their_metadata(
        self, reader: Reader, bombs: dict[str, Path], bomb: str, rows: str
    ) -> None:
        assert bombs[bomb].stat().st_size < 300_000
        watch = PeakMemory()
        with pytest.raises(DatasetRefused) as refused:
            reader.describe(bombs[bomb], "parquet")
        assert refused.value.args[0] == (
            f"The dataset has more than 1,000,000 rows ({rows}); split it into smaller datasets"
        )
        assert watch.growth < CEILING

    def test_metadata_that_lies_is_caught_while_reading(self, reader: Reader, bombs: dict[str, Path]) -> None:
        footer = pl.scan_parquet(bombs["lying-footer"]).select(pl.len()).collect().item()
        assert footer == 1_000  # what the footer claims; its row groups hold 3,000,000
        with pytest.raises(DatasetRefused, match=r"^The dataset has more than 1,000,000 rows; split"):
            reader.describe(bombs["lying-footer"], "parquet")

    def test_the_row_limit_holds_for_every_format(self, reader: Reader) -> None:
        for fmt in ("csv", "json", "jsonl", "parquet"):
            with pytest.raises(DatasetRefused, match=r"more than 2 rows \(3\)"):
                reader.describe(_as(fmt), fmt, dataset_max_rows=2)
        with pytest.raises(DatasetRefused, match="more than 100 rows"):
            reader.describe(workbook(250), "xlsx", dataset_max_rows=100)

    def test_a_lying_workbook_stored_before_upload_checks_is_refused(self, reader: Reader) -> None:
        watch = PeakMemory()
        with pytest.raises(DatasetRefused) as refused:
            reader.describe(workbook(1_000_000, lie=True), "xlsx", dataset_max_expanded_bytes=16 * MiB)
        assert refused.value.args[0] == (
            "The dataset expands past 16,777,216 bytes when read (the parts of the workbook, decompressed)"
        )
        assert watch.growth < CEILING

    def test_decoded_bytes_are_counted(self, reader: Reader) -> None:
        wide = pl.DataFrame({f"c{i}": [0.5] * 5_000 for i in range(200)})
        buffer = io.BytesIO()
        wide.write_parquet(buffer)
        with pytest.raises(
            DatasetRefused, match=r"expands past 1,048,576 bytes when read \(5,000 rows of 200"
        ):
            reader.describe(buffer.getvalue(), "parquet", dataset_max_expanded_bytes=MiB)
        long_text = pl.DataFrame({"note": ["x" * 2_000] * 1_000})  # 16 bytes a row by its schema
        with pytest.raises(DatasetRefused, match=r"^The dataset expands past 1,048,576 bytes when read$"):
            reader.describe(long_text.write_csv().encode(), "csv", dataset_max_expanded_bytes=MiB)

    def test_compressed_text_stored_before_upload_checks_is_refused(self, reader: Reader) -> None:
        with pytest.raises(DatasetRefused, match=r"compressed \(gzip\)"):
            reader.describe(gzip.compress(_as("csv")), "csv")

    def test_past_the_memory_budget_only_the_reading_process_ends(self, reader: Reader) -> None:
        """With the row and byte limits opened wide, the budget of the process still holds:
        40 MB of JSON rows become far more than 64 MiB of objects."""
        rows = b"[" + b'{"a":1},' * 5_000_000 + b'{"a":1}]'
        watch = PeakMemory()
        with pytest.raises(DatasetRefused, match="more memory than its budget of 64 MiB"):
            reader.describe(
                rows,
                "json",
                dataset_max_rows=1_000_000_000,
                dataset_max_expanded_bytes=100 * 1024**3,
                batch_job_memory_bytes=64 * MiB,
            )
        assert watch.growth < CEILING
        assert reader.describe(_as("csv"), "csv").rows == 3  # and the next read is served
