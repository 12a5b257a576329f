"""Keyset pagination walks every row exactly once, in a stable order, even when many
rows share the sort value."""

from __future__ import annotations

from collections.abc import Iterator
from datetime import timedelta

import pytest
from fastapi import FastAPI
from fastapi.testclient import TestClient
from sqlalchemy import select

from maestro.api.envelope import Page
from maestro.api.pagination import PageParams, PageParamsDep, decode_cursor, encode_cursor, paginate
from maestro.config import Settings
from maestro.db import Database, utcnow
from maestro.errors import ValidationFailed
from maestro.jobs.models import Job
from maestro.jobs.schemas import JobRead


@pytest.fixture
def database(settings: Settings) -> Iterator[Database]:
    database = Database(settings)
    base = utcnow()
    with database.session() as session:
        # 45 rows, but only 5 distinct timestamps: ties must be broken by id.
        session.add_all(Job(kind=f"k{i % 3}", created_at=base - timedelta(minutes=i % 5)) for i in range(45))
    yield database
    database.dispose()


def walk(database: Database, limit: int, order: str = "desc", **filters: str) -> list[list[str]]:
    pages: list[list[str]] = []
    cursor = None
    while True:
        with database.session(write=False) as session:
            statement = select(Job)
            if "kind" in filters:
                statement = statement.where(Job.kind == filters["kind"])
            page = paginate(
                session,
                statement,
                PageParams(limit=limit, cursor=cursor),
                sort_column=Job.created_at,
                id_column=Job.id,
                order=order,  # type: ignore[arg-type]
                to_item=lambda rows: [JobRead.model_validate(r) for r in rows],
            )
        pages.append([item.id for item in page.data])
        assert page.pagination.has_prev is (cursor is not None)
        if not page.pagination.has_next:
            assert page.pagination.next_cursor is None
            return pages
        cursor = page.pagination.next_cursor


class TestCursorPaging:
    @pytest.mark.parametrize("order", ["asc", "desc"])
    def test_every_row_once_in_order(self, database: Database, order: str) -> None:
        pages = walk(database, limit=20, order=order)
        assert [len(p) for p in pages] == [20, 20, 5]
        ids = [i for p in pages for i in p]
        assert len(set(ids)) == 45
        with database.session(write=False) as session:
            rows = session.execute(select(Job.created_at, Job.id)).all()
        expected = [row.id for row in sorted(rows, reverse=order == "desc")]
        assert ids == expected

    def test_filters_apply_to_every_page_and_total(self, database: Database) -> None:
        pages = walk(database, limit=4, kind="k1")
        assert sum(len(p) for p in pages) == 15

    def test_total_counts_all_matches(self, database: Database) -> None:
        with database.session(write=False) as session:
            page = paginate(
                session,
                select(Job),
                PageParams(limit=10),
                sort_column=Job.created_at,
                id_column=Job.id,
                to_item=lambda rows: rows,
            )
        assert page.pagination.total == 45
        assert page.pagination.page == 1
        assert page.pagination.has_next and not page.pagination.has_prev


class TestOffsetPaging:
    def test_page_numbers(self, database: Database) -> None:
        with database.session(write=False) as session:
            third = paginate(
                session,
                select(Job),
                PageParams(limit=20, page=3),
                sort_column=Job.created_at,
                id_column=Job.id,
                to_item=lambda rows: rows,
            )
        assert len(third.data) == 5
        assert third.pagination.page == 3
        assert third.pagination.has_prev and not third.pagination.has_next


class TestHostileCursors:
    @pytest.mark.parametrize(
        "cursor", ["not-base64!!", "e30", encode_cursor("name", "x", "job_1"), "W10", "WzEsMiwzXQ"]
    )
    def test_malformed_or_foreign_cursor_is_a_validation_error(self, cursor: str) -> None:
        with pytest.raises(ValidationFailed) as caught:
            decode_cursor(cursor, "created_at")
        assert caught.value.details[0].field == "cursor"

    def test_cursor_and_page_together_are_refused(self) -> None:
        with pytest.raises(ValidationFailed):
            PageParams(cursor="abc", page=2)

    def test_round_trip(self) -> None:
        now = utcnow()
        assert decode_cursor(encode_cursor("created_at", now, "job_x"), "created_at") == (now, "job_x")


class TestQueryLimits:
    """Limits are enforced by the API layer before any query runs."""

    @pytest.mark.parametrize(
        ("query", "field"), [("limit=0", "limit"), ("limit=101", "limit"), ("page=0", "page")]
    )
    def test_out_of_range_paging_parameters(self, client: TestClient, query: str, field: str) -> None:
        app: FastAPI = client.app  # type: ignore[assignment]

        @app.get("/_test/list", tags=["test"], response_model=Page[int])
        def listing(params: PageParamsDep) -> Page[int]:
            raise AssertionError("never reached")

        response = client.get(f"/_test/list?{query}")
        assert response.status_code == 422
        assert response.json()["error"]["details"][0]["field"] == field
