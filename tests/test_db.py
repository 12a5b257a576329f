from __future__ import annotations

import re
import threading
import time
from datetime import UTC, datetime, timedelta, timezone

import pytest
from sqlalchemy import func, select, text

from maestro.config import Settings
from maestro.db import Database, new_id, run_after_commit, utc_timestamp, utcnow
from maestro.jobs.models import Job


class TestIds:
    def test_prefixed_and_opaque(self) -> None:
        assert re.fullmatch(r"job_[0-9a-hjkmnp-tv-z]{26}", new_id("job"))

    def test_ids_sort_by_creation_time(self) -> None:
        earlier = new_id("run")
        threading.Event().wait(0.002)
        assert new_id("run") > earlier

    def test_an_id_carries_the_millisecond_it_was_minted_in(self) -> None:
        before = time.time_ns() // 1_000_000
        minted = new_id("pred")
        after = time.time_ns() // 1_000_000
        digits = "0123456789abcdefghjkmnpqrstvwxyz"
        value = 0
        for character in minted.removeprefix("pred_"):
            value = value * 32 + digits.index(character)
        assert before <= value >> 80 <= after

    def test_a_timestamp_is_iso_8601_in_utc_to_the_microsecond(self) -> None:
        before = utcnow()
        stamp = utc_timestamp()
        after = utcnow()
        assert re.fullmatch(r"\d{4}-\d\d-\d\dT\d\d:\d\d:\d\d\.\d{6}Z", stamp)
        moment = datetime.fromisoformat(stamp.replace("Z", "+00:00"))
        assert before - timedelta(microseconds=1) <= moment <= after

    def test_ids_do_not_collide(self) -> None:
        assert len({new_id("x") for _ in range(10_000)}) == 10_000


@pytest.fixture
def database(settings: Settings) -> Database:
    db = Database(settings)
    yield db
    db.dispose()


class TestSession:
    def test_datetimes_round_trip_as_utc(self, database: Database) -> None:
        local = datetime(2024, 1, 15, 12, 30, tzinfo=timezone(timedelta(hours=2)))
        with database.session() as session:
            job = Job(kind="system.probe", started_at=local)
            session.add(job)
        with database.session(write=False) as session:
            loaded = session.get(Job, job.id)
            assert loaded is not None
            assert loaded.started_at == local
            assert loaded.started_at.tzinfo == UTC
            assert loaded.created_at.tzinfo == UTC

    def test_naive_datetimes_are_refused(self, database: Database) -> None:
        with pytest.raises(Exception, match="naive datetime"), database.session() as session:
            session.add(Job(kind="x", started_at=datetime(2024, 1, 1)))
            session.flush()

    def test_error_rolls_back_everything(self, database: Database) -> None:
        with pytest.raises(RuntimeError), database.session() as session:
            session.add(Job(kind="system.probe"))
            session.flush()
            raise RuntimeError("boom")
        with database.session(write=False) as session:
            assert session.scalar(select(func.count()).select_from(Job)) == 0

    def test_after_commit_callbacks_run_only_on_commit(self, database: Database) -> None:
        ran: list[str] = []
        with database.session() as session:
            run_after_commit(session, lambda: ran.append("committed"))
            session.add(Job(kind="system.probe"))
        with pytest.raises(RuntimeError), database.session() as session:
            run_after_commit(session, lambda: ran.append("rolled back"))
            raise RuntimeError("abort")
        assert ran == ["committed"]


class TestSqlite:
    @pytest.fixture
    def sqlite_db(self, database: Database) -> Database:
        if not database.is_sqlite:
            pytest.skip("SQLite-specific behaviour")
        return database

    def test_wal_and_busy_timeout(self, sqlite_db: Database, settings: Settings) -> None:
        with sqlite_db.engine.connect() as connection:
            assert connection.execute(text("PRAGMA journal_mode")).scalar() == "wal"
            assert connection.execute(text("PRAGMA busy_timeout")).scalar() == settings.sqlite_busy_timeout_ms
            assert connection.execute(text("PRAGMA foreign_keys")).scalar() == 1

    def test_concurrent_read_modify_write_transactions_serialise(self, sqlite_db: Database) -> None:
        """Writers take the lock at BEGIN, so a read-then-write transaction never fails
        with SQLITE_BUSY when another writer commits in between."""
        with sqlite_db.session() as session:
            job = Job(kind="counter", attempts=0)
            session.add(job)
        errors: list[BaseException] = []

        def increment() -> None:
            try:
                for _ in range(20):
                    with sqlite_db.session() as session:
                        current = session.scalar(select(Job.attempts).where(Job.id == job.id))
                        session.execute(
                            Job.__table__.update().where(Job.id == job.id).values(attempts=current + 1)
                        )
            except BaseException as exc:
                errors.append(exc)

        threads = [threading.Thread(target=increment) for _ in range(4)]
        for thread in threads:
            thread.start()
        for thread in threads:
            thread.join()
        assert errors == []
        with sqlite_db.session(write=False) as session:
            assert session.scalar(select(Job.attempts).where(Job.id == job.id)) == 80


def test_utcnow_is_aware() -> None:
    assert utcnow().tzinfo == UTC
