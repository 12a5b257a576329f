"""Rendering time of model cards: a typical card and the largest the sections allow
(20,000 characters of narrative, 1,000 metrics and schema fields), as Markdown and as
PDF with the embedded Unicode font and with the core font.

    .venv/bin/python bench/model_cards.py [--repeat 5]

Prints the median time of each rendering and the size of the document.
"""

from __future__ import annotations

import argparse
import statistics
import time
from collections.abc import Callable
from datetime import UTC, datetime

from maestro.registry import card_documents, cards
from maestro.registry.schemas import (
    CardLineage,
    CardModelDetails,
    CardSchema,
    CardSchemaField,
    CardVersionDetails,
    ModelCard,
    ModelCardSections,
    StageTransitionRead,
)

NOW = datetime.now(UTC)


def card(metrics: int, fields: int, sections: ModelCardSections) -> ModelCard:
    return ModelCard(
        model=CardModelDetails(
            id="model_bench",
            name="Fraud Detector",
            description="Payments",
            model_type="classification",
            tags=[],
        ),
        version=CardVersionDetails(
            id="version_bench",
            version="1.0.0",
            stage="production",
            trusted=False,
            requirements=["scikit-learn==1.5.0"],
            tags=[],
            aliases=["champion"],
            created_at=NOW,
        ),
        performance_metrics=cards.card_metrics({f"metric_{i}": i / (metrics + 1) for i in range(metrics)}),
        training_metrics=cards.card_metrics({"loss": 0.1}),
        model_schema=CardSchema(
            inputs=[
                CardSchemaField(name=f"feature_{i}", type="float", description="x" * 40)
                for i in range(fields)
            ],
            outputs=[CardSchemaField(name="score", type="float")],
        ),
        lineage=CardLineage(run_id=None),
        stage_history=[StageTransitionRead(from_stage=None, to_stage="development", changed_at=NOW)],
        sections=sections,
        generated_at=NOW,
    )


def median_seconds(render: Callable[[], object], repeat: int) -> tuple[float, int]:
    times, size = [], 0
    for _ in range(repeat):
        start = time.perf_counter()
        document = render()
        times.append(time.perf_counter() - start)
        size = len(document) if isinstance(document, bytes | str) else 0
    return statistics.median(times), size


def main() -> None:
    parser = argparse.ArgumentParser()
    parser.add_argument("--repeat", type=int, default=5)
    repeat = parser.parse_args().repeat
    typical = ModelCardSections.model_validate(
        {
            "intended_use": {"primary_uses": ["Fraud detection"], "out_of_scope": ["Credit scoring"]},
            "limitations": ["Not evaluated outside the EU", "Кириллица и 中文"],
        }
    )
    largest = ModelCardSections.model_validate(
        {
            "intended_use": {"primary_uses": ["Привет мир " * 45] * 20},
            "limitations": ["word " * 99] * 18,
            "training_data": {"description": "Long text. " * 90},
        }
    )
    for label, subject in (("typical", card(5, 5, typical)), ("largest", card(1000, 1000, largest))):
        for name, render in (
            ("markdown", lambda c=subject: card_documents.render_markdown(c)),
            ("pdf, Unicode font", lambda c=subject: card_documents.render_pdf(c)),
            ("pdf, core font", lambda c=subject: card_documents.render_pdf(c, font=None)),
        ):
            seconds, size = median_seconds(render, repeat)
            print(f"{label:8} {name:18} {seconds * 1000:8.1f} ms  {size / 1024:8.1f} KiB")


if __name__ == "__main__":
    main()
