"""Asynchronous results of the model server live on disk, within a total byte bound and
a share per organisation: a caller (or many keys of one organisation) that would pass
either is refused with Retry-After instead of growing the server; results are read only
by who submitted them and deleted once they expire. And every prediction request gets an
answer, whatever its rows look like."""

from __future__ import annotations

import os
import socket
from collections.abc import Callable
from pathlib import Path
from typing import Any

import httpx
import pytest
from fastapi.testclient import TestClient

from maestro.config import Settings
from maestro.errors import NotFound, PayloadTooLarge, RateLimited, ServiceUnavailable
from maestro.model_server.jobs import AsyncJobs
from tests.conftest import RunningProcess
from tests.deployments.platform import Tiny, skops_file
from tests.factories import Factory

OPERATOR_KEY = "operator-key-for-the-async-tests"
OPERATOR = {"X-API-Key": OPERATOR_KEY}
KIB = 1024


class Clock:
    def __init__(self) -> None:
        self.seconds = 100.0

    def __call__(self) -> float:
        return self.seconds


def writes(*chunks: bytes) -> Callable[..., None]:
    def work(progress: Callable[[float], None], write: Callable[[bytes], None]) -> None:
        for chunk in chunks:
            write(chunk)
        progress(1.0)

    return work


@pytest.fixture
def clock() -> Clock:
    return Clock()


@pytest.fixture
def jobs(tmp_path: Path, clock: Clock) -> AsyncJobs:
    """Jobs run in the test's own thread (``run_next``), one at a time."""
    jobs = AsyncJobs(
        directory=tmp_path / "results",
        queue_size=32,
        keep_seconds=60,
        max_bytes=1024 * KIB,
        quota_bytes=64 * KIB,
        clock=clock,
    )
    jobs.open()
    yield jobs
    jobs.stop()


def test_a_result_is_a_file_read_only_by_its_caller_and_deleted_when_it_expires(
    jobs: AsyncJobs, clock: Clock
) -> None:
    content = b'{"predictions":[1,0,1],"count":3}'
    job = jobs.submit("caller_a", "org_a", "m", 3, 1000, writes(content[:10], content[10:]))
    assert jobs.used_bytes("org_a") == 1000  # the estimate, reserved
    assert jobs.run_next(timeout=0)
    assert job.status == "completed"
    assert job.work is None  # the rows are let go; nothing but the file holds the result
    assert job.path is not None
    assert job.path.parent == jobs.directory
    assert job.path.name == f"{job.id}.json"
    assert job.path.read_bytes() == content
    assert oct(job.path.stat().st_mode & 0o777) == "0o600"
    assert jobs.used_bytes() == jobs.used_bytes("org_a") == len(content)  # the reservation refunded
    assert jobs.result(jobs.get("caller_a", job.id)) == content
    with pytest.raises(NotFound):
        jobs.get("caller_b", job.id)  # another caller, even of the same organisation

    clock.seconds += 60
    jobs.run_next(timeout=0)
    assert job.path.exists()  # kept for exactly keep_seconds
    clock.seconds += 0.5
    jobs.run_next(timeout=0)  # the worker deletes expired results even when nobody asks
    assert list(jobs.directory.iterdir()) == []  # type: ignore[union-attr]
    assert jobs.used_bytes() == 0
    with pytest.raises(NotFound):
        jobs.get("caller_a", job.id)


def test_submissions_past_the_bounds_are_refused_with_retry_after(jobs: AsyncJobs, clock: Clock) -> None:
    first = jobs.submit("a1", "org_a", "m", 1, 40 * KIB, writes(b"x" * (30 * KIB)))
    with pytest.raises(RateLimited) as quota:  # another key of the same organisation: the same share
        jobs.submit("a2", "org_a", "m", 1, 40 * KIB, writes(b"x"))
    assert quota.value.headers["Retry-After"] == "5"  # only a queued job holds it
    jobs.run_next(timeout=0)
    assert first.status == "completed"
    clock.seconds += 20
    with pytest.raises(RateLimited) as quota:
        jobs.submit("a2", "org_a", "m", 1, 40 * KIB, writes(b"x"))
    assert quota.value.headers["Retry-After"] == "40"  # when the first result expires
    with pytest.raises(PayloadTooLarge):  # could never fit: no use retrying
        jobs.submit("a1", "org_a", "m", 1, 65 * KIB, writes(b"x"))

    # Other organisations keep their share until the server's whole bound is reached.
    for n in range(16):
        jobs.submit(f"b{n}", f"org_b{n}", "m", 1, 60 * KIB, writes(b"y"))
    assert jobs.used_bytes() == 30 * KIB + 16 * 60 * KIB
    with pytest.raises(ServiceUnavailable) as full:
        jobs.submit("c", "org_c", "m", 1, 60 * KIB, writes(b"z"))
    assert full.value.headers["Retry-After"] == "40"
    assert jobs.counts()["queued"] == 16


def test_a_result_that_outgrows_the_room_left_fails_and_leaves_nothing(jobs: AsyncJobs) -> None:
    big = jobs.submit("a1", "org_a", "m", 1, 1 * KIB, writes(*[b"x" * (16 * KIB)] * 5))
    jobs.run_next(timeout=0)
    assert big.status == "failed"
    assert big.error is not None
    assert big.error["reason"] == "result_too_large"
    assert list(jobs.directory.iterdir()) == []  # type: ignore[union-attr]
    assert jobs.used_bytes() == 0
    broken = jobs.submit("a1", "org_a", "m", 1, 1 * KIB, _raises_stop_iteration)
    jobs.run_next(timeout=0)
    assert broken.status == "failed"
    assert list(jobs.directory.iterdir()) == []  # type: ignore[union-attr]


def _raises_stop_iteration(progress: Any, write: Callable[[bytes], None]) -> None:
    write(b"partial")
    raise StopIteration


def test_directories_of_processes_that_are_gone_are_cleaned_up(tmp_path: Path, clock: Clock) -> None:
    root = tmp_path / "results"
    host = "".join(c if c.isalnum() or c == "." else "_" for c in socket.gethostname())
    gone = root / f"{host}-999999999-abc"
    alive = root / f"{host}-{os.getppid()}-abc"
    elsewhere = root / "another.host-1-abc"
    for directory in (gone, alive, elsewhere):
        directory.mkdir(parents=True)
        (directory / "job_x.json").write_bytes(b"{}")
    jobs = AsyncJobs(
        directory=root, queue_size=1, keep_seconds=1, max_bytes=1024 * KIB, quota_bytes=64 * KIB, clock=clock
    )
    jobs.open()
    assert not gone.exists()
    assert alive.exists()
    assert elsewhere.exists()  # another host's: not ours to judge
    own = jobs.directory
    assert own is not None
    assert own.exists()
    jobs.stop()
    assert not own.exists()  # results live and die with the process


# --- a real model server --------------------------------------------------------------------------
@pytest.mark.slow
def test_async_jobs_past_the_quota_are_refused_and_every_body_is_answered(
    client: TestClient,
    factory: Factory,
    make_settings: Callable[..., Settings],
    model_server: Callable[..., RunningProcess],
    tiny: Tiny,
    tmp_path: Path,
) -> None:
    models = tmp_path / "models"
    models.mkdir()
    (models / "shared.skops").write_bytes(skops_file(tiny.first))
    acme, globex = factory.organization("Acme"), factory.organization("Globex")
    a1, a2 = ({"X-API-Key": factory.api_key(acme, {"inference": ["read"]})} for _ in range(2))
    b1 = {"X-API-Key": factory.api_key(globex, {"inference": ["read"]})}
    server = model_server(
        make_settings(
            model_server_api_keys=[OPERATOR_KEY],
            model_server_models_dir=models,
            model_server_preload=["shared=file:shared.skops"],
            model_server_async_result_max_bytes=1024 * KIB,
            model_server_async_result_quota_bytes=512 * KIB,
        )
    )
    rows = (tiny.X[:1].tolist() * 5000)[:5000]  # about 490 KB reserved per job

    with httpx.Client(base_url=server.base_url, timeout=30) as http:

        def submit(headers: dict[str, str]) -> httpx.Response:
            return http.post("/api/v1/predict-async", json={"features": rows}, headers=headers)

        accepted = submit(a1)
        assert accepted.status_code == 202, accepted.text
        job_url = accepted.json()["status_url"]

        # A second key of the same organisation shares its quota: refused, with when to retry.
        refused = submit(a2)
        assert refused.status_code == 429, refused.text
        assert refused.json()["error"]["code"] == "RATE_LIMIT_EXCEEDED"
        assert int(refused.headers["Retry-After"]) >= 1
        # Another organisation still has its own share...
        assert submit(b1).status_code == 202
        # ... until the server's whole bound is reached, whoever asks.
        full = submit(OPERATOR)
        assert full.status_code == 503, full.text
        assert full.json()["error"]["code"] == "SERVICE_UNAVAILABLE"
        assert int(full.headers["Retry-After"]) >= 1
        # A job whose result could never fit is refused outright.
        huge = http.post("/api/v1/predict-async", json={"features": rows + rows[:1000]}, headers=a1)
        assert huge.status_code == 413, huge.text

        # Results are the submitter's alone.
        assert http.get(job_url, headers=a1).status_code == 200
        for other in (a2, b1, OPERATOR):
            assert http.get(job_url, headers=other).status_code == 404

        # Rows that mix objects and lists get an answer in each protocol's shape, never a hang.
        row = tiny.X[0].tolist()
        named = {f"f{i}": value for i, value in enumerate(row)}
        for path, body in (
            ("/api/v1/batch-predict", {"features": [row, named]}),
            ("/api/v1/predict-async", {"features": [named, row]}),
        ):
            answer = http.post(path, json=body, headers=OPERATOR)
            assert answer.status_code == 422, (path, answer.text)
            assert answer.json()["error"]["code"] == "VALIDATION_ERROR"
        scoring = http.post("/invocations", json={"instances": [row, named]}, headers=OPERATOR)
        assert scoring.status_code == 400, scoring.text
        assert scoring.json()["error_code"] == "INVALID_PARAMETER_VALUE"
        assert (
            http.post("/api/v1/batch-predict", json={"features": [row]}, headers=OPERATOR).status_code == 200
        )
