"""Batch prediction in an isolated process per job: dataset bombs submitted as jobs fail
with a clear message, store nothing, and leave the server's memory where it was
(measured from outside, against a real ``maestro serve``); the output cap, a process
killed mid-way and a memory budget passed each fail the job cleanly; and submitting a
job takes write access to inference, while predicting still takes only read."""

from __future__ import annotations

import io
import json
import os
import signal
import tempfile
from collections.abc import Iterator
from pathlib import Path
from typing import Any

import httpx
import numpy as np
import polars as pl
import pytest
from fastapi import FastAPI
from fastapi.testclient import TestClient
from sqlalchemy import func, select

from maestro.app import create_app
from maestro.deployments import batch_process
from maestro.deployments.batch_jobs import KIND, BatchJobFailed, batch_predict
from maestro.files.models import StoredFile
from maestro.files.reading import ReadBounds
from maestro.jobs.handlers import JobContext
from maestro.jobs.models import Job
from maestro.jobs.service import ClaimedJob
from maestro.sandbox import ChildFailed, Limits, shared_sandbox
from tests.conftest import wait_until
from tests.deployments.platform import (
    FEATURES,
    SCHEMA,
    Tiny,
    deployed,
    onnx_file,
    register,
    skops_file,
    upload,
)
from tests.factories import Factory, World
from tests.files.bombs import PeakMemory, lying_parquet, parquet_bomb, workbook
from tests.registry.conftest import stored_files

pytestmark = pytest.mark.skipif(not Path("/proc/self/status").exists(), reason="isolation needs Linux")

MiB = 1024**2
# How much the server's resident memory may grow while it deals with the bombs (before
# the fix, one of them alone took it up by 470 to 830 MiB).
CEILING = 100 * MiB
JOBS = "/api/v1/inference/fraud-api/batch-jobs"


@pytest.fixture
def live(client: TestClient, world: World, tiny: Tiny) -> dict[str, Any]:
    model = register(client, world)
    version = upload(client, model, world.developer.headers, onnx_file(tiny.first))
    return deployed(client, world, "fraud-api", version["id"])


def rows_of(tiny: Tiny, count: int) -> pl.DataFrame:
    return pl.DataFrame({name: tiny.X[np.arange(count) % len(tiny.X), i] for i, name in enumerate(FEATURES)})


def csv_job(client: TestClient, headers: dict[str, str], frame: pl.DataFrame, **params: str) -> Any:
    return client.post(
        JOBS,
        content=frame.write_csv().encode(),
        params=params,
        headers={**headers, "Content-Type": "text/csv"},
    )


def refusal(response: Any, status: int) -> dict[str, Any]:
    assert response.status_code == status, response.text
    body = response.json()
    assert body["success"] is False and set(body) == {"success", "error", "metadata"}
    return body["error"]


def job_of(app: FastAPI, job_id: str) -> Job:
    with app.state.database.session(write=False) as session:
        job = session.get(Job, job_id)
        assert job is not None
        session.expunge(job)
        return job


def dataset_objects(app: FastAPI) -> list[Path]:
    """Datasets in the artifact store, and temporaries (model files aside)."""
    root = Path(app.state.store.root)
    return [path for path in stored_files(root) if path.relative_to(root).parts[0] in ("files", ".tmp")]


def prediction_files(app: FastAPI) -> list[str]:
    with app.state.database.session(write=False) as session:
        names = session.scalars(select(StoredFile.filename)).all()
    return [name for name in names if name and "predictions" in name]


# --- who may submit -------------------------------------------------------------------------------------
class TestLeastPrivilege:
    def test_reading_credentials_predict_but_do_not_submit_jobs(
        self,
        client: TestClient,
        app: FastAPI,
        factory: Factory,
        world: World,
        tiny: Tiny,
        live: dict[str, Any],
    ) -> None:
        frame = rows_of(tiny, 20)
        parquet = io.BytesIO()
        frame.write_parquet(parquet)
        for headers in (world.key_headers, world.viewer.headers):
            predicted = client.post(
                "/api/v1/inference/fraud-api/batch", json={"instances": frame.to_dicts()}, headers=headers
            )
            assert predicted.status_code == 200, predicted.text
            error = refusal(csv_job(client, headers, frame), 403)
            assert error["code"] == "INSUFFICIENT_PERMISSIONS"
            assert 'inference: ["write"]' in error["message"]
            refusal(
                client.post(
                    JOBS,
                    content=parquet.getvalue(),
                    headers={**headers, "Content-Type": "application/vnd.apache.parquet"},
                ),
                403,
            )
        with factory.database.session(write=False) as session:
            assert session.scalar(select(func.count()).select_from(Job)) == 0
            assert session.scalar(select(func.count()).select_from(StoredFile)) == 0
        assert dataset_objects(app) == []

        writer = {"X-API-Key": factory.api_key(world.org, {"inference": ["write"]})}
        assert csv_job(client, writer, frame).status_code == 202
        assert csv_job(client, world.developer.headers, frame).status_code == 202
        outsider = csv_job(client, world.outsider.headers, frame)
        assert refusal(outsider, 404)["code"] == "RESOURCE_NOT_FOUND"


# --- the isolated process -----------------------------------------------------------------------------------
class TestIsolatedJobs:
    def test_a_parquet_output_in_several_parts_holds_every_prediction(
        self, client: TestClient, app: FastAPI, world: World, tiny: Tiny, live: dict[str, Any]
    ) -> None:
        frame = rows_of(tiny, 2 * batch_process.PART_ROWS + 1234)
        buffer = io.BytesIO()
        frame.write_parquet(buffer)
        submitted = client.post(
            JOBS,
            content=buffer.getvalue(),
            params={"output_format": "parquet"},
            headers={**world.developer.headers, "Content-Type": "application/vnd.apache.parquet"},
        )
        assert submitted.status_code == 202, submitted.text
        app.state.queue.execute(submitted.json()["data"]["job_id"])
        job = job_of(app, submitted.json()["data"]["job_id"])
        assert job.status == "succeeded", job.error
        assert job.result["rows"] == frame.height and job.result["peak_memory_bytes"] > 0
        download = client.get(submitted.json()["data"]["result_url"], headers=world.viewer.headers)
        result = pl.read_parquet(io.BytesIO(download.content))
        assert result.columns == [*FEATURES, "prediction", "probability_0", "probability_1"]
        assert result["prediction"].to_list() == tiny.first.predict(frame.to_numpy()).tolist()

    @pytest.mark.parametrize("fmt", ["tsv", "jsonl", "xlsx"])
    def test_uploaded_datasets_of_other_formats(
        self, client: TestClient, app: FastAPI, world: World, tiny: Tiny, live: dict[str, Any], fmt: str
    ) -> None:
        if fmt == "xlsx":
            content, expected = workbook(300, value=0.25), [int(tiny.first.predict([[0.25] * 4])[0])] * 300
        else:
            frame, buffer = rows_of(tiny, 300), io.BytesIO()
            if fmt == "tsv":
                frame.write_csv(buffer, separator="\t")
            else:
                frame.write_ndjson(buffer)
            content, expected = buffer.getvalue(), tiny.first.predict(frame.to_numpy()).tolist()
        uploaded = client.post(
            "/api/v1/upload/datasets",
            data={"project_id": world.project},
            files={"file": (f"rows.{fmt}", content, "application/octet-stream")},
            headers=world.developer.headers,
        )
        assert uploaded.status_code == 201, uploaded.text
        submitted = client.post(
            JOBS, json={"file_id": uploaded.json()["data"]["id"]}, headers=world.developer.headers
        )
        assert submitted.status_code == 202, submitted.text
        app.state.queue.execute(submitted.json()["data"]["job_id"])
        job = job_of(app, submitted.json()["data"]["job_id"])
        assert job.status == "succeeded", job.error
        download = client.get(submitted.json()["data"]["result_url"], headers=world.viewer.headers)
        assert pl.read_csv(download.content)["prediction"].to_list() == expected

    def test_a_skops_model_is_converted_inside_the_jobs_process(
        self, client: TestClient, app: FastAPI, world: World, tiny: Tiny
    ) -> None:
        model = register(client, world)
        version = upload(client, model, world.developer.headers, skops_file(tiny.first))
        deployed(client, world, "fraud-api", version["id"])
        frame = rows_of(tiny, 300)
        submitted = csv_job(client, world.developer.headers, frame)
        app.state.queue.execute(submitted.json()["data"]["job_id"])
        job = job_of(app, submitted.json()["data"]["job_id"])
        assert job.status == "succeeded", job.error
        assert job.result["serving"] == "onnx (converted from skops)"
        download = client.get(submitted.json()["data"]["result_url"], headers=world.viewer.headers)
        predicted = pl.read_csv(download.content)["prediction"].to_list()
        assert predicted == tiny.first.predict(frame.to_numpy()).tolist()

    @pytest.mark.parametrize("output_format", ["csv", "parquet"])
    def test_the_output_cap_fails_the_job_and_stores_nothing(
        self, make_settings: Any, tiny: Tiny, output_format: str
    ) -> None:
        app = create_app(make_settings(batch_job_max_output_bytes=10_000))
        world, factory = World.build(Factory(app)), Factory(app)
        with TestClient(app, raise_server_exceptions=False) as client:
            model = register(client, world)
            version = upload(client, model, world.developer.headers, onnx_file(tiny.first))
            deployed(client, world, "fraud-api", version["id"])
            submitted = csv_job(
                client, world.developer.headers, rows_of(tiny, 2500), output_format=output_format
            )
            assert submitted.status_code == 202, submitted.text
            app.state.queue.execute(submitted.json()["data"]["job_id"])
            job = job_of(app, submitted.json()["data"]["job_id"])
            assert job.status == "failed"
            assert job.error == "ValueError: The predictions file would be larger than 10,000 bytes"
            assert refusal(
                client.get(submitted.json()["data"]["result_url"], headers=world.viewer.headers), 409
            )
        assert prediction_files(app) == []
        with factory.database.session(write=False) as session:
            assert session.scalar(select(func.count()).select_from(StoredFile)) == 1  # the input only
        assert len(dataset_objects(app)) == 1

    def test_the_kernel_caps_every_file_the_process_writes(self, tiny: Tiny) -> None:
        """Even asked to write far more, the process cannot pass its file size limit."""
        with tempfile.TemporaryDirectory() as scratch:
            Path(scratch, "model.bin").write_bytes(onnx_file(tiny.first))
            rows_of(tiny, 5000).write_csv(Path(scratch, "input.csv"))
            spec = {
                "scratch": scratch,
                "model_file": "model.bin",
                "model_format": "onnx",
                "trusted": False,
                "model_schema": SCHEMA,
                "max_model_bytes": 10 * MiB,
                "input_file": "input.csv",
                "input_format": "csv",
                "bounds": ReadBounds(max_rows=10_000, max_bytes=100 * MiB).to_dict(),
                "output_file": "predictions.csv",
                "output_format": "csv",
                "max_output_bytes": 10**12,
            }
            child = shared_sandbox().spawn(
                batch_process.ENTRY,
                spec,
                limits=Limits(memory_bytes=512 * MiB, cpu_seconds=60, file_bytes=20_000),
                imports=batch_process.IMPORTS,
                writable=[scratch],
            )
            with child, pytest.raises(ChildFailed) as failed:
                answer = child.receive(timeout=60, max_reply_bytes=0)
                while answer.meta.get("event") == "progress":
                    answer = child.request({"continue": True}, timeout=60, max_reply_bytes=0)
            assert failed.value.kind == "OutputTooLarge"
            assert Path(scratch, "predictions.csv").stat().st_size <= 20_000

    def test_a_process_killed_mid_way_fails_the_job_and_stores_nothing(
        self, client: TestClient, app: FastAPI, world: World, tiny: Tiny, live: dict[str, Any]
    ) -> None:
        """The process waits for the server's go-ahead after each chunk, so killing it
        while the first progress report is being recorded holds it mid-flight."""
        submitted = csv_job(client, world.developer.headers, rows_of(tiny, 35_000))
        job_id = submitted.json()["data"]["job_id"]
        params = dict(job_of(app, job_id).params)
        killed: list[int] = []
        reports: list[str] = []

        def report(fraction: float, message: str | None) -> None:
            reports.append(message or "")
            if 0 < fraction < 0.95 and not killed:  # rows predicted, and more to come
                killed.extend(_kill_isolated_processes())

        context = JobContext(
            job=ClaimedJob(id=job_id, kind=KIND, params=params, attempt=1, max_attempts=3),
            settings=app.state.settings,
            database=app.state.database,
            store=app.state.store,
            report=report,
        )
        with pytest.raises(BatchJobFailed, match="its isolated process was killed"):
            batch_predict(context, **params)
        assert len(killed) == 1
        assert (
            reports[-1].endswith(" of 35,000 rows predicted")
            and reports[-1] != "35,000 of 35,000 rows predicted"
        )
        assert prediction_files(app) == []
        assert len(dataset_objects(app)) == 1  # the input only

        again = csv_job(client, world.developer.headers, rows_of(tiny, 100))
        app.state.queue.execute(again.json()["data"]["job_id"])
        assert job_of(app, again.json()["data"]["job_id"]).status == "succeeded"

    def test_past_the_memory_budget_the_job_fails_and_the_next_one_runs(
        self, make_settings: Any, tiny: Tiny
    ) -> None:
        app = create_app(
            make_settings(
                batch_job_memory_bytes=64 * MiB,
                dataset_max_rows=100_000_000,
                dataset_max_expanded_bytes=100 * 1024**3,
                max_dataset_bytes=100 * MiB,
            )
        )
        world = World.build(Factory(app))
        row = json.dumps(dict(zip(FEATURES, tiny.X[0].tolist(), strict=True))).encode()
        heavy = b"[" + b",".join([row] * 600_000) + b"]"  # about 60 MB of JSON rows
        with TestClient(app, raise_server_exceptions=False) as client:
            model = register(client, world)
            version = upload(client, model, world.developer.headers, onnx_file(tiny.first))
            deployed(client, world, "fraud-api", version["id"])
            submitted = client.post(
                JOBS, content=heavy, headers={**world.developer.headers, "Content-Type": "application/json"}
            )
            assert submitted.status_code == 202, submitted.text
            app.state.queue.execute(submitted.json()["data"]["job_id"])
            job = job_of(app, submitted.json()["data"]["job_id"])
            assert job.status == "failed"
            assert "more memory than its budget of 64 MiB" in (job.error or "")
            again = csv_job(client, world.developer.headers, rows_of(tiny, 100))
            app.state.queue.execute(again.json()["data"]["job_id"])
            assert job_of(app, again.json()["data"]["job_id"]).status == "succeeded"
        assert prediction_files(app) == ["fraud-api-predictions.csv"]

    def test_a_crafted_model_fails_only_the_job(
        self, client: TestClient, app: FastAPI, world: World, tiny: Tiny, live: dict[str, Any]
    ) -> None:
        """A LightGBM text file whose ``tree_sizes`` header lies makes LightGBM call
        ``std::terminate()``. Loaded in the job's process, it is refused there or ends only
        that process; either way the job fails and the next one runs."""
        deployment = _serving(app, world, "crafted-api", _aborting_lightgbm(tiny))
        submitted = client.post(
            "/api/v1/inference/crafted-api/batch-jobs",
            content=rows_of(tiny, 50).write_csv().encode(),
            headers={**world.developer.headers, "Content-Type": "text/csv"},
        )
        assert submitted.status_code == 202, submitted.text
        app.state.queue.execute(submitted.json()["data"]["job_id"])
        job = job_of(app, submitted.json()["data"]["job_id"])
        assert job.status == "failed"
        assert (job.error or "").startswith(
            ("ModelLoadError: ", "BatchJobFailed: The batch job stopped: its isolated process aborted")
        ), job.error
        assert deployment not in prediction_files(app)
        again = csv_job(client, world.developer.headers, rows_of(tiny, 100))
        app.state.queue.execute(again.json()["data"]["job_id"])
        assert job_of(app, again.json()["data"]["job_id"]).status == "succeeded"


def _aborting_lightgbm(tiny: Tiny) -> bytes:
    import re

    import lightgbm

    booster = lightgbm.train(
        {"objective": "binary", "num_leaves": 4, "verbose": -1, "num_threads": 1},
        lightgbm.Dataset(tiny.X, (tiny.X[:, 0] > 0).astype(int)),
        num_boost_round=2,
    )
    text = booster.model_to_string()
    sizes = re.search(r"tree_sizes=(\d+) (\d+)", text)
    assert sizes is not None
    return text.replace(sizes.group(0), f"tree_sizes={int(sizes.group(1)) - 61} {sizes.group(2)}").encode()


def _serving(app: FastAPI, world: World, name: str, model_file: bytes) -> str:
    """A deployment serving ``model_file`` as LightGBM text, written straight into the
    database: deploying it through the API would load it, and the point is the job."""
    from maestro.deployments.models import Deployment
    from maestro.registry.models import ModelVersion, RegisteredModel

    stored = app.state.store.put_bytes("models/crafted", model_file)
    with app.state.database.session() as session:
        model = RegisteredModel(
            organization_id=world.org,
            project_id=world.project,
            name=f"{name} model",
            model_type="classification",
        )
        session.add(model)
        session.flush()
        version = ModelVersion(
            model_id=model.id,
            organization_id=world.org,
            version="1.0.0",
            file_key=stored.key,
            file_size=stored.size,
            sha256=stored.sha256,
            format="lightgbm-txt",
            model_schema=SCHEMA,
        )
        session.add(version)
        session.flush()
        session.add(
            Deployment(
                organization_id=world.org,
                project_id=world.project,
                name=name,
                model_id=model.id,
                model_version_id=version.id,
            )
        )
    return name


def _kill_isolated_processes() -> list[int]:
    """SIGKILL the processes this test process's sandbox forked (by their ids)."""
    zygote = str(shared_sandbox().ping()["pid"])
    killed = []
    for entry in os.listdir("/proc"):
        if not entry.isdigit():
            continue
        try:
            with open(f"/proc/{entry}/status", encoding="ascii") as status:
                parent = next(line.split()[1] for line in status if line.startswith("PPid:"))
        except (OSError, StopIteration):
            continue
        if parent == zygote:
            os.kill(int(entry), signal.SIGKILL)
            killed.append(int(entry))
    return killed


# --- against a real server ---------------------------------------------------------------------------------
@pytest.fixture(scope="module")
def bombs(tmp_path_factory: pytest.TempPathFactory) -> dict[str, Path]:
    folder = tmp_path_factory.mktemp("bombs")
    return {
        "bomb5m.parquet": parquet_bomb(folder / "bomb5m.parquet", 5_000_000, row_group_rows=1_000_000),
        "bomb20m1rg.parquet": parquet_bomb(
            folder / "bomb20m1rg.parquet", 20_000_000, row_group_rows=20_000_000, columns=["amount"]
        ),
        "bomb100m.parquet": parquet_bomb(
            folder / "bomb100m.parquet", 100_000_000, row_group_rows=10_000_000, columns=["amount"]
        ),
        "liar.parquet": lying_parquet(
            folder / "liar.parquet", 3_000_000, declared=1_000, row_group_rows=500_000
        ),
    }


class Platform:
    def __init__(self, base_url: str, headers: dict[str, str]) -> None:
        self.http = httpx.Client(base_url=base_url, headers=headers, timeout=120)

    def finished(self, job_id: str) -> dict[str, Any]:
        def done() -> dict[str, Any] | None:
            job = self.http.get(f"/api/v1/jobs/{job_id}").json()["data"]
            return job if job["status"] in ("succeeded", "failed") else None

        return wait_until(done, timeout=180)


@pytest.fixture
def platform(serve: Any, make_settings: Any, tiny: Tiny) -> Iterator[tuple[Platform, Any, dict[str, Any]]]:
    settings = make_settings(run_worker_in_process=True)
    factory = Factory(create_app(settings))  # writes the people straight into the server's database
    org = factory.organization()
    developer = factory.user(org, "developer")
    people = {
        "developer": developer.headers,
        "viewer": factory.user(org, "viewer").headers,
        "reader": {"X-API-Key": factory.api_key(org, {"inference": ["read"]})},
        "writer": {"X-API-Key": factory.api_key(org, {"inference": ["write"]})},
        "project": factory.project(org, developer, "organization"),
    }
    server = serve(settings)
    api = Platform(server.base_url, developer.headers)
    model = api.http.post(
        f"/api/v1/projects/{people['project']}/models", json={"name": "Fraud", "model_type": "classification"}
    ).json()["data"]["id"]
    version = api.http.post(
        f"/api/v1/models/{model}/versions",
        data={"model_schema": json.dumps(SCHEMA)},
        files={"model_file": ("m.onnx", onnx_file(tiny.first), "application/octet-stream")},
    ).json()["data"]["id"]
    created = api.http.post(
        f"/api/v1/projects/{people['project']}/deployments",
        json={"name": "fraud-api", "model_version_id": version},
    )
    assert created.status_code == 201, created.text
    yield api, server, people
    api.http.close()


@pytest.mark.slow
def test_bombs_fail_as_jobs_and_the_server_memory_stays_put(
    platform: tuple[Platform, Any, dict[str, Any]], bombs: dict[str, Path], tiny: Tiny
) -> None:
    api, server, people = platform
    frame = rows_of(tiny, 2500)
    # A normal job first: it starts the isolated processes' zygote and warms every code path.
    normal = api.http.post(
        JOBS, content=frame.write_csv().encode(), headers={**people["writer"], "Content-Type": "text/csv"}
    )
    assert normal.status_code == 202, normal.text
    assert api.finished(normal.json()["data"]["job_id"])["status"] == "succeeded"
    first = api.http.get(normal.json()["data"]["result_url"])
    assert pl.read_csv(first.content)["prediction"].to_list() == tiny.first.predict(frame.to_numpy()).tolist()

    watch = PeakMemory(server.process.pid)
    for name, lying in (("lying.xlsx", True), ("honest.xlsx", False)):
        refused = api.http.post(
            "/api/v1/upload/datasets",
            data={"project_id": people["project"]},
            files={"file": (name, workbook(1_000_000, lie=lying), "application/octet-stream")},
        )
        assert refused.status_code == 422, refused.text

    failures = {}
    for name, path in bombs.items():
        uploaded = api.http.post(
            "/api/v1/upload/datasets",
            data={"project_id": people["project"]},
            files={"file": (name, path.read_bytes(), "application/vnd.apache.parquet")},
        )
        assert uploaded.status_code == 201, uploaded.text
        submitted = api.http.post(JOBS, json={"file_id": uploaded.json()["data"]["id"]})
        assert submitted.status_code == 202, submitted.text
        failures[name] = api.finished(submitted.json()["data"]["job_id"])
    as_body = api.http.post(
        JOBS,
        content=bombs["bomb5m.parquet"].read_bytes(),
        headers={**people["writer"], "Content-Type": "application/vnd.apache.parquet"},
    )
    assert as_body.status_code == 202, as_body.text
    failures["bomb5m.parquet as the body"] = api.finished(as_body.json()["data"]["job_id"])
    for who in ("reader", "viewer"):
        denied = api.http.post(
            JOBS,
            content=bombs["bomb5m.parquet"].read_bytes(),
            headers={**people[who], "Content-Type": "application/vnd.apache.parquet"},
        )
        assert denied.status_code == 403, denied.text
    growth = watch.growth

    expected = {
        "bomb5m.parquet": "ValueError: The dataset has more than 1,000,000 rows (5,000,000)",
        "bomb20m1rg.parquet": "ValueError: The dataset has more than 1,000,000 rows (20,000,000)",
        "bomb100m.parquet": "ValueError: The dataset has more than 1,000,000 rows (100,000,000)",
        "liar.parquet": "ValueError: The dataset has more than 1,000,000 rows;",  # found while reading
        "bomb5m.parquet as the body": "ValueError: The dataset has more than 1,000,000 rows (5,000,000)",
    }
    for name, job in failures.items():
        assert job["status"] == "failed", name
        assert job["error"].startswith(expected[name]), (name, job["error"])
    assert growth < CEILING, f"the server grew by {growth / MiB:.0f} MiB"
    files = api.http.get(f"/api/v1/projects/{people['project']}/files", params={"limit": 100}).json()["data"]
    assert [f["filename"] for f in files if "predictions" in (f["filename"] or "")] == [
        "fraud-api-predictions.csv"
    ]
    # The platform goes on serving.
    served = api.http.post(
        "/api/v1/inference/fraud-api", json={"instances": frame.head(3).to_dicts()}, headers=people["reader"]
    )
    assert served.status_code == 200, served.text
    again = api.http.post(
        JOBS, content=frame.write_csv().encode(), headers={**people["writer"], "Content-Type": "text/csv"}
    )
    assert api.finished(again.json()["data"]["job_id"])["status"] == "succeeded"
    assert server.process.poll() is None
