"""What the server log holds: Maestro's lines, not the routine narration of libraries."""

from __future__ import annotations

import logging
from collections.abc import Callable
from datetime import UTC, datetime

import pytest

from maestro.config import Settings
from maestro.logs import configure_logging
from maestro.registry import card_documents
from maestro.registry.schemas import (
    CardLineage,
    CardModelDetails,
    CardSchema,
    CardSchemaField,
    CardVersionDetails,
    ModelCard,
    ModelCardSections,
)


def a_card() -> ModelCard:
    now = datetime.now(UTC)
    return ModelCard(
        model=CardModelDetails(
            id="model_x", name="Fraud Detector", description="Payments", model_type="classification", tags=[]
        ),
        version=CardVersionDetails(
            id="version_x",
            version="1.0.0",
            stage="production",
            trusted=False,
            requirements=[],
            tags=[],
            aliases=[],
            created_at=now,
        ),
        performance_metrics=[],
        training_metrics=[],
        model_schema=CardSchema(inputs=[CardSchemaField(name="amount", type="float")], outputs=[]),
        lineage=CardLineage(run_id=None),
        stage_history=[],
        sections=ModelCardSections.model_validate({"limitations": ["Кириллица и Ελληνικά"]}),
        generated_at=now,
    )


def test_a_pdf_model_card_logs_nothing_from_the_font_subsetter(
    make_settings: Callable[..., Settings], caplog: pytest.LogCaptureFixture
) -> None:
    if card_documents.find_unicode_font() is None:
        pytest.skip("no Unicode font on this machine: the core font needs no subsetting")
    configure_logging(make_settings(log_level="INFO"))
    with caplog.at_level(logging.INFO):
        document = card_documents.render_pdf(a_card())
        logging.getLogger("maestro.test").info("the log is open at INFO")
    assert document.startswith(b"%PDF")
    assert [r.name for r in caplog.records if r.name.startswith("fontTools")] == []
    assert "the log is open at INFO" in caplog.messages


def test_a_library_warning_still_shows(
    make_settings: Callable[..., Settings], caplog: pytest.LogCaptureFixture
) -> None:
    configure_logging(make_settings(log_level="INFO"))
    with caplog.at_level(logging.INFO):
        logging.getLogger("fontTools.subset").warning("a glyph is missing")
        logging.getLogger("fontTools.subset").info("subsetting glyphs")
    assert caplog.messages == ["a glyph is missing"]
