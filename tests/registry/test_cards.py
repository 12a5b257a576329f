from __future__ import annotations

import io
import math
from typing import Any

import pytest
import schemathesis
from fastapi import FastAPI
from fastapi.testclient import TestClient
from markdown_it import MarkdownIt
from markdown_it.token import Token
from pypdf import PdfReader
from sqlalchemy import select

from maestro.app import OPENAPI_URL
from maestro.config import Settings
from maestro.identity.models import AuditLog
from maestro.registry import card_documents, cards
from maestro.registry.models import ModelVersion, RegisteredModel
from maestro.registry.schemas import ModelCard
from tests.factories import Factory, World, api_key_headers
from tests.registry.conftest import new_model, new_version
from tests.test_api_fuzz import Findings, Targets, fuzz

SCHEMA = {
    "inputs": [
        {"name": "amount", "type": "float", "description": "Transaction amount"},
        {"name": "merchant_category", "type": "string", "description": "Merchant category code"},
    ],
    "outputs": [{"name": "fraud_probability", "type": "float", "description": "Probability of fraud"}],
}
SECTIONS: dict[str, Any] = {
    "intended_use": {
        "primary_uses": ["Fraud detection in payment processing"],
        "primary_users": ["Risk analysts"],
        "out_of_scope": ["Credit scoring", "Employment decisions"],
    },
    "limitations": ["Not evaluated on transactions outside the EU", "Кириллица: не проверено"],
    "ethical_considerations": {
        "risks_and_harms": ["Potential demographic bias"],
        "mitigations": ["Regular bias audits", "Human review process"],
    },
    "training_data": {
        "name": "Transactions 2023",
        "source": "s3://data/transactions-2023.parquet",
        "size": 1_200_000,
        "description": "Card payments from January to December 2023.\nLabels from chargebacks.",
        "preprocessing": ["Amounts log-scaled"],
    },
    "evaluation_data": {"name": "Transactions 2024 Q1", "source": "s3://data/transactions-2024q1.parquet"},
    "caveats_and_recommendations": ["Retrain every quarter"],
}


def version_url(model_id: str, version: str) -> str:
    return f"/api/v1/models/{model_id}/versions/{version}"


def card_url(model_id: str, version: str, suffix: str = "") -> str:
    return f"{version_url(model_id, version)}/card{suffix}"


def pdf_text(content: bytes) -> str:
    return "\n".join(page.extract_text() for page in PdfReader(io.BytesIO(content)).pages)


def flat(text: str) -> str:
    """PDF text without the line breaks that wrapping put in."""
    return " ".join(text.split())


def full_model(client: TestClient, world: World) -> dict:
    return new_model(
        client,
        world.project,
        world.developer.headers,
        description="Predicts the probability that a card payment is fraudulent",
        framework="scikit-learn",
        task_type="binary_classification",
        tags=["fraud", "payments"],
    )


def complete_version(client: TestClient, model_id: str, headers: dict[str, str], **fields: Any) -> dict:
    fields.setdefault("performance_metrics", {"accuracy": 0.947, "f1_score": 0.89, "auc": 0.97})
    fields.setdefault("training_metrics", {"loss": 0.145, "epochs": 100})
    fields.setdefault("model_schema", SCHEMA)
    fields.setdefault("requirements", "scikit-learn==1.5.0\npandas==2.2.0")
    return new_version(client, model_id, headers, **fields)


# --- the whole lifecycle -------------------------------------------------------------------------
class TestLifecycle:
    def test_three_versions_then_card_as_json_markdown_and_pdf(
        self, client: TestClient, factory: Factory, world: World
    ) -> None:
        headers = world.developer.headers
        model = full_model(client, world)
        model_id = model["id"]
        for i, (accuracy, f1) in enumerate(((0.94, 0.88), (0.95, 0.89), (0.96, 0.9))):
            complete_version(
                client,
                model_id,
                headers,
                description=f"Release {i + 1}",
                performance_metrics={"accuracy": accuracy, "f1_score": f1, "auc": 0.97},
            )
        stage = f"{version_url(model_id, '1.0.1')}/stage"
        assert client.put(stage, json={"stage": "staging"}, headers=headers).status_code == 200
        promoted = client.put(
            stage, json={"stage": "production", "description": "Passed the shadow test"}, headers=headers
        )
        assert promoted.status_code == 200
        third = client.put(
            f"{version_url(model_id, '1.0.2')}/stage",
            json={"stage": "production", "archive_existing_versions": True},
            headers=headers,
        )
        assert third.status_code == 200
        for alias, version in (("champion", "1.0.2"), ("challenger", "1.0.1"), ("latest", "1.0.2")):
            response = client.put(
                f"/api/v1/models/{model_id}/aliases/{alias}", json={"version": version}, headers=headers
            )
            assert response.status_code == 200
        assert (
            client.put(
                f"/api/v1/models/{model_id}/tags/team", json={"value": "risk"}, headers=headers
            ).status_code
            == 200
        )
        assert (
            client.put(
                f"{version_url(model_id, '1.0.2')}/tags/reviewed", json={"value": "yes"}, headers=headers
            ).status_code
            == 200
        )
        saved = client.put(card_url(model_id, "1.0.2"), json=SECTIONS, headers=headers)
        assert saved.status_code == 200, saved.text

        # stage history of the archived version, oldest first
        stages = client.get(f"{version_url(model_id, '1.0.1')}/stages", headers=world.viewer.headers)
        assert stages.status_code == 200
        history = stages.json()["data"]
        assert [(h["from_stage"], h["to_stage"]) for h in history] == [
            (None, "development"),
            ("development", "staging"),
            ("staging", "production"),
            ("production", "archived"),
        ]
        assert history[2]["description"] == "Passed the shadow test"
        assert history[3]["description"] == "Archived when 1.0.2 was promoted to production"
        assert {h["changed_by"]["id"] for h in history} == {world.developer.user_id}

        # the card as JSON
        response = client.get(card_url(model_id, "1.0.2"), headers=world.viewer.headers)
        assert response.status_code == 200
        card = response.json()["data"]
        assert card["model"] == {
            "id": model_id,
            "name": "Fraud Detector",
            "description": "Predicts the probability that a card payment is fraudulent",
            "model_type": "classification",
            "framework": "scikit-learn",
            "task_type": "binary_classification",
            "tags": [
                {"key": "fraud", "value": ""},
                {"key": "payments", "value": ""},
                {"key": "team", "value": "risk"},
            ],
        }
        version = card["version"]
        assert version["version"] == "1.0.2" and version["stage"] == "production"
        assert version["description"] == "Release 3"
        assert version["format"] == "other" and version["size_bytes"] == len(b"model bytes")
        assert len(version["sha256"]) == 64 and version["trusted"] is False
        assert version["requirements"] == ["scikit-learn==1.5.0", "pandas==2.2.0"]
        assert version["aliases"] == ["champion", "latest"]
        assert version["tags"] == [{"key": "reviewed", "value": "yes"}]
        assert version["created_by"]["id"] == world.developer.user_id
        assert card["performance_metrics"] == [
            {"name": "accuracy", "value": 0.96},
            {"name": "auc", "value": 0.97},
            {"name": "f1_score", "value": 0.9},
        ]
        assert card["training_metrics"] == [
            {"name": "epochs", "value": 100},
            {"name": "loss", "value": 0.145},
        ]
        assert card["model_schema"]["inputs"][0] == {
            "name": "amount",
            "type": "float",
            "description": "Transaction amount",
        }
        assert [f["name"] for f in card["model_schema"]["outputs"]] == ["fraud_probability"]
        assert card["lineage"] == {"run_id": None, "experiment": None, "run": None}
        assert [(h["from_stage"], h["to_stage"]) for h in card["stage_history"]] == [
            (None, "development"),
            ("development", "production"),
        ]
        assert card["sections"]["intended_use"] == SECTIONS["intended_use"]
        assert card["sections"]["limitations"] == SECTIONS["limitations"]
        assert card["sections"]["training_data"]["size"] == 1_200_000
        assert card["sections"]["evaluation_data"]["preprocessing"] == []

        validation = client.post(card_url(model_id, "1.0.2", "/validate"), headers=world.viewer.headers)
        assert validation.status_code == 200
        assert validation.json()["data"] == {
            "valid": True,
            "missing_sections": [],
            "invalid_sections": [],
            "warnings": [],
        }

        # Markdown, a downloadable document
        markdown = client.get(
            card_url(model_id, "1.0.2"), params={"format": "markdown"}, headers=world.viewer.headers
        )
        assert markdown.status_code == 200
        assert markdown.headers["content-type"] == "text/markdown; charset=utf-8"
        assert (
            markdown.headers["content-disposition"] == 'attachment; filename="fraud-detector-1.0.2-card.md"'
        )
        text = markdown.text
        assert text.startswith("# Model card: Fraud Detector\n")
        assert "| accuracy | 0.96 |" in text and "| f1\\_score | 0.9 |" in text
        assert "| amount | float | Transaction amount |" in text
        assert "- Fraud detection in payment processing" in text
        assert "- Кириллица: не проверено" in text
        assert "```text\nscikit-learn==1.5.0\npandas==2.2.0\n```" in text
        assert "| champion, latest |" in text

        # PDF, with overrides for this document only
        overrides = {
            "intended_use": {"out_of_scope": ["Insurance pricing"]},
            "ethical_considerations": {
                "risks_and_harms": ["Potential demographic bias", "Ложные срабатывания"]
            },
        }
        pdf = client.post(
            card_url(model_id, "1.0.2", "/generate"),
            json={"overrides": overrides},
            headers=world.viewer.headers,
        )
        assert pdf.status_code == 200, pdf.text
        assert pdf.headers["content-type"] == "application/pdf"
        assert pdf.headers["content-disposition"] == 'attachment; filename="fraud-detector-1.0.2-card.pdf"'
        assert pdf.content.startswith(b"%PDF-")
        content = flat(pdf_text(pdf.content))
        for expected in (
            "Model card: Fraud Detector",
            "Version 1.0.2",
            "Performance metrics",
            "accuracy 0.96",
            "f1_score 0.9",
            "auc 0.97",
            "loss 0.145",
            "amount float Transaction amount",
            "fraud_probability float Probability of fraud",
            "Stage history",
            "development production",
            "Fraud detection in payment processing",  # a saved section the overrides keep
            "Insurance pricing",  # the override
            "Ложные срабатывания",
            "Кириллица: не проверено",
            "Not evaluated on transactions outside the EU",
            "Transactions 2023",
            "Retrain every quarter",
            "champion, latest",
        ):
            assert expected in content, expected
        assert "Credit scoring" not in content  # replaced by the override
        assert "could not be drawn" not in content  # every character was drawn
        after = client.get(card_url(model_id, "1.0.2"), headers=headers).json()["data"]
        assert after["sections"]["intended_use"]["out_of_scope"] == ["Credit scoring", "Employment decisions"]

        with factory.database.session(write=False) as session:
            actions = session.scalars(
                select(AuditLog.action).where(
                    AuditLog.organization_id == world.org, AuditLog.resource_type == "model_versions"
                )
            ).all()
        assert actions.count("registry:update_model_card") == 1
        assert actions.count("registry:generate_model_card") == 0  # rendering is a read: no audit row

    def test_an_archived_version_has_its_own_card(self, client: TestClient, world: World) -> None:
        model = full_model(client, world)
        complete_version(client, model["id"], world.developer.headers, stage="production")
        card = client.get(card_url(model["id"], "1.0.0"), headers=world.viewer.headers).json()["data"]
        assert card["sections"] == {
            "intended_use": None,
            "limitations": None,
            "ethical_considerations": None,
            "training_data": None,
            "evaluation_data": None,
            "caveats_and_recommendations": None,
        }
        assert card["version"]["aliases"] == [] and card["version"]["created_by"]["id"]


# --- saving the sections -------------------------------------------------------------------------
class TestSaveSections:
    def test_put_replaces_every_section(self, client: TestClient, factory: Factory, world: World) -> None:
        model = full_model(client, world)
        new_version(client, model["id"], world.developer.headers)
        url = card_url(model["id"], "1.0.0")
        assert client.put(url, json=SECTIONS, headers=world.developer.headers).status_code == 200
        replaced = client.put(url, json={"limitations": ["Only one"]}, headers=world.developer.headers)
        assert replaced.status_code == 200
        sections = replaced.json()["data"]["sections"]
        assert sections["limitations"] == ["Only one"] and sections["intended_use"] is None
        with factory.database.session(write=False) as session:
            row = session.scalar(select(ModelVersion).where(ModelVersion.model_id == model["id"]))
            assert row is not None and row.card_sections == {"limitations": ["Only one"]}
            audit = session.scalars(
                select(AuditLog)
                .where(AuditLog.action == "registry:update_model_card")
                .order_by(AuditLog.created_at)
            ).all()
        assert [entry.details["card_sections"] for entry in audit] == [sorted(SECTIONS), ["limitations"]]
        assert audit[-1].details["previous_card_sections"] == sorted(SECTIONS)
        assert audit[-1].resource_id == row.id and audit[-1].actor_id == world.developer.user_id

    @pytest.mark.parametrize(
        ("body", "field"),
        [
            ({"limitations": "a plain string"}, "limitations"),
            ({"limitations": [""]}, "limitations.0"),
            ({"limitations": ["   "]}, "limitations.0"),
            ({"limitations": ["x" * 501]}, "limitations.0"),
            ({"limitations": ["line\nbreak"]}, "limitations.0"),
            ({"limitations": ["bell\x07"]}, "limitations.0"),
            ({"limitations": ["nul\x00"]}, "limitations.0"),
            ({"limitations": ["item"] * 51}, "limitations"),
            ({"caveats": ["an unknown section"]}, "caveats"),
            ({"intended_use": {"primary_uses": ["x"], "audience": ["y"]}}, "intended_use.audience"),
            ({"intended_use": ["Fraud detection"]}, "intended_use"),
            ({"training_data": {"size": -1}}, "training_data.size"),
            ({"training_data": {"size": "many"}}, "training_data.size"),
            ({"training_data": {"description": "y" * 5001}}, "training_data.description"),
            (
                {"limitations": ["z" * 500] * 30, "caveats_and_recommendations": ["w" * 500] * 11},
                None,
            ),
        ],
    )
    def test_malformed_sections_are_refused(
        self, client: TestClient, factory: Factory, world: World, body: dict[str, Any], field: str | None
    ) -> None:
        model = full_model(client, world)
        new_version(client, model["id"], world.developer.headers)
        url = card_url(model["id"], "1.0.0")
        client.put(url, json={"limitations": ["Kept"]}, headers=world.developer.headers)
        response = client.put(url, json=body, headers=world.developer.headers)
        assert response.status_code == 422, response.text
        error = response.json()
        assert error["success"] is False and error["error"]["code"] == "VALIDATION_ERROR"
        if field is not None:
            assert field in [detail["field"] for detail in error["error"]["details"]]
        with factory.database.session(write=False) as session:
            row = session.scalar(select(ModelVersion).where(ModelVersion.model_id == model["id"]))
            assert row is not None and row.card_sections == {"limitations": ["Kept"]}

    def test_contradictory_sections_are_refused(self, client: TestClient, world: World) -> None:
        model = full_model(client, world)
        new_version(client, model["id"], world.developer.headers)
        url = card_url(model["id"], "1.0.0")
        body = {"intended_use": {"primary_uses": ["Fraud detection"], "out_of_scope": ["fraud  DETECTION."]}}
        response = client.put(url, json=body, headers=world.developer.headers)
        assert response.status_code == 422
        assert response.json()["error"]["details"] == [
            {
                "field": "intended_use",
                "message": "'fraud  DETECTION.' is listed both as a primary use and as out of scope",
            }
        ]
        card = client.get(url, headers=world.developer.headers).json()["data"]
        assert card["sections"]["intended_use"] is None

    def test_a_section_saved_under_other_rules_is_left_out(
        self, client: TestClient, factory: Factory, world: World
    ) -> None:
        model = full_model(client, world)
        version = new_version(client, model["id"], world.developer.headers)
        with factory.database.session() as session:
            row = session.get(ModelVersion, version["id"])
            assert row is not None
            row.card_sections = {"limitations": "one string", "intended_use": SECTIONS["intended_use"]}
        response = client.get(card_url(model["id"], "1.0.0"), headers=world.viewer.headers)
        assert response.status_code == 200
        sections = response.json()["data"]["sections"]
        assert sections["limitations"] is None and sections["intended_use"] == SECTIONS["intended_use"]

    def test_a_body_that_is_not_json_is_refused(self, client: TestClient, world: World) -> None:
        model = full_model(client, world)
        new_version(client, model["id"], world.developer.headers)
        url = card_url(model["id"], "1.0.0")
        headers = {**world.developer.headers, "Content-Type": "application/json"}
        for content in (b"{", b"\xff\xfe", b"[]", b"null"):
            response = client.put(url, content=content, headers=headers)
            assert response.status_code == 422, content
            assert response.json()["error"]["code"] == "VALIDATION_ERROR"


# --- validation ----------------------------------------------------------------------------------
class TestValidation:
    def test_a_version_with_nothing_is_incomplete(self, client: TestClient, world: World) -> None:
        model = new_model(client, world.project, world.developer.headers)
        new_version(client, model["id"], world.developer.headers, stage="production")
        response = client.post(card_url(model["id"], "1.0.0", "/validate"), headers=world.viewer.headers)
        assert response.status_code == 200
        result = response.json()["data"]
        assert result["valid"] is False
        assert result["missing_sections"] == [
            "description",
            "performance_metrics",
            "model_schema.inputs",
            "intended_use",
            "limitations",
        ]
        assert result["invalid_sections"] == []
        assert result["warnings"] == [
            "ethical_considerations: no risks or mitigations are described",
            "training_data: no training data is referenced",
            "evaluation_data: no evaluation data is referenced",
            "version.requirements: no requirements are listed",
            "version.stage: the version is in production but its card is not complete",
        ]

    def test_invalid_sections_are_named(self, client: TestClient, world: World) -> None:
        model = full_model(client, world)
        complete_version(
            client,
            model["id"],
            world.developer.headers,
            performance_metrics={
                "accuracy": 94.7,
                "val_recall": -0.1,
                "falsePositiveRate": 1.5,
                "rmse": 12.5,
                "loss": "low",
                "confusion_matrix": [[1, 2], [3, 4]],
                "test": {"f1": 0.8, "precision": 2},
            },
            training_metrics={"learning_rate": 3.0, "dropout_rate": 0.2, "passed": True},
            model_schema={
                "inputs": [{"type": "float"}, {"name": "amount"}, {"name": "amount"}, 7],
                "outputs": [{"name": "score"}],
            },
        )
        saved = {key: SECTIONS[key] for key in ("intended_use", "limitations", "training_data")}
        client.put(card_url(model["id"], "1.0.0"), json=saved, headers=world.developer.headers)
        overrides = {
            "intended_use": {"out_of_scope": ["Fraud detection in payment processing", "Credit scoring"]},
            "evaluation_data": {"source": "s3://data/transactions-2023.parquet", "size": 0},
        }
        response = client.post(
            card_url(model["id"], "1.0.0", "/validate"),
            json={"overrides": overrides},
            headers=world.viewer.headers,
        )
        assert response.status_code == 200
        result = response.json()["data"]
        assert result["valid"] is False and result["missing_sections"] == []
        assert result["invalid_sections"] == [
            {
                "section": "performance_metrics",
                "message": "accuracy is a probability or rate and must lie in [0, 1], not 94.7 "
                "(a percentage? give it as a fraction)",
            },
            {"section": "performance_metrics", "message": "confusion_matrix is not a number"},
            {
                "section": "performance_metrics",
                "message": "falsePositiveRate is a probability or rate and must lie in [0, 1], not 1.5 "
                "(a percentage? give it as a fraction)",
            },
            {"section": "performance_metrics", "message": "loss is not a number"},
            {
                "section": "performance_metrics",
                "message": "test.precision is a probability or rate and must lie in [0, 1], not 2 "
                "(a percentage? give it as a fraction)",
            },
            {
                "section": "performance_metrics",
                "message": "val_recall is a probability or rate and must lie in [0, 1], not -0.1",
            },
            {"section": "training_metrics", "message": "passed is not a number"},
            {"section": "model_schema.inputs", "message": "input 1 has no name"},
            {"section": "model_schema.inputs", "message": "input 'amount' is listed twice"},
            {"section": "model_schema.inputs", "message": "input 4 has no name"},
            {
                "section": "intended_use",
                "message": "'Fraud detection in payment processing' is listed both as a primary use "
                "and as out of scope",
            },
            {"section": "evaluation_data", "message": "the dataset is said to have no rows (size 0)"},
        ]
        assert "evaluation_data: the model is evaluated on its own training data" in result["warnings"]
        # overrides are checked, never saved
        card = client.get(card_url(model["id"], "1.0.0"), headers=world.viewer.headers).json()["data"]
        assert card["sections"]["evaluation_data"] is None

    def test_metrics_that_are_not_finite(self) -> None:
        metrics = cards.card_metrics(
            {"auc": math.nan, "loss": math.inf, "nested": {"deep": {"er": {"x": 1}}}}
        )
        assert [(m.name, m.value) for m in metrics] == [
            ("auc", "NaN"),
            ("loss", "Infinity"),
            ("nested.deep.er", {"x": 1}),
        ]
        issues = [issue.message for issue in cards._metric_issues("performance_metrics", metrics)]
        assert issues == [
            "auc is not a finite number (NaN)",
            "loss is not a finite number (Infinity)",
            "nested.deep.er is not a number",
        ]

    @pytest.mark.parametrize(
        ("name", "probability"),
        [
            ("accuracy", True),
            ("val_accuracy", True),
            ("top5Accuracy", True),
            ("F1Score", True),
            ("roc_auc", True),
            ("error_rate", True),
            ("test.recall", True),
            ("learning_rate", False),
            ("sample_rate", False),
            ("rmse", False),
            ("mape", False),
            ("accurate_count", False),
        ],
    )
    def test_probability_metric_names(self, name: str, probability: bool) -> None:
        assert cards.is_probability_metric(name) is probability

    @pytest.mark.parametrize(
        "body",
        [
            {"overrides": {"limitations": "text"}},
            {"overrides": {"unknown": []}},
            {"overrides": 5},
            {"overrides": {"intended_use": {"primary_uses": ["\x01"]}}},
            {"override": {}},
            [],
        ],
    )
    def test_malformed_bodies(self, client: TestClient, world: World, body: Any) -> None:
        model = full_model(client, world)
        new_version(client, model["id"], world.developer.headers)
        for suffix in ("/validate", "/generate"):
            response = client.post(
                card_url(model["id"], "1.0.0", suffix), json=body, headers=world.viewer.headers
            )
            assert response.status_code == 422, (suffix, response.text)
            assert response.json()["error"]["code"] == "VALIDATION_ERROR"

    def test_overrides_too_large_together_with_the_saved_card(self, client: TestClient, world: World) -> None:
        model = full_model(client, world)
        new_version(client, model["id"], world.developer.headers)
        url = card_url(model["id"], "1.0.0")
        assert (
            client.put(
                url, json={"limitations": ["z" * 500] * 30}, headers=world.developer.headers
            ).status_code
            == 200
        )
        overrides = {"caveats_and_recommendations": ["w" * 500] * 11}
        response = client.post(f"{url}/validate", json={"overrides": overrides}, headers=world.viewer.headers)
        assert response.status_code == 422
        assert response.json()["error"]["details"][0]["field"] == "overrides"


# --- Markdown ------------------------------------------------------------------------------------
HOSTILE_LINES = [
    "# Not a heading",
    "===",
    "- not a list",
    "1. not a list either",
    "> not a quote",
    "    not code",
    "| not | a | table |",
    "<script>alert(1)</script>",
    "[click](javascript:alert(1))",
    "![image](https://example.com/x.png)",
    "**not bold** _not italic_ ~~not struck~~ `not code` $x$",
    "```",
    "&lt; stays literal",
]


def markdown_tokens(text: str) -> list[Token]:
    return MarkdownIt("commonmark").enable("table").enable("strikethrough").parse(text)


def inline_text(token: Token) -> str:
    return "".join(child.content if child.type == "text" else "\n" for child in token.children or [])


class TestMarkdown:
    def test_user_text_cannot_inject_structure(self, client: TestClient, world: World) -> None:
        hostile = "\n".join(HOSTILE_LINES)
        model = new_model(
            client,
            world.project,
            world.developer.headers,
            name="<b>Fraud | # [x](y) *",
            description=hostile,
            framework="| sk *learn*",
        )
        new_version(
            client,
            model["id"],
            world.developer.headers,
            description=hostile,
            performance_metrics={"a|b": 0.5, "<i>": 0.25, "# h": 0.125},
            model_schema={"inputs": [{"name": "x|y", "type": "<float>", "description": "two\n# lines"}]},
            requirements="```\n~~~\n<b>not html</b>",
        )
        sections = {
            "intended_use": {"primary_uses": [line for line in HOSTILE_LINES if line.strip()]},
            "limitations": ["* star", "+ plus", "---", "2) two"],
            "training_data": {"name": "| cell |", "description": hostile},
        }
        url = card_url(model["id"], "1.0.0")
        assert client.put(url, json=sections, headers=world.developer.headers).status_code == 200
        text = client.get(url, params={"format": "markdown"}, headers=world.viewer.headers).text
        tokens = markdown_tokens(text)

        headings = [
            inline_text(tokens[i + 1]) for i, token in enumerate(tokens) if token.type == "heading_open"
        ]
        assert headings == [
            "Model card: <b>Fraud | # [x](y) *",
            "Model details",
            "Version details",
            "Requirements",
            "Intended use",
            "Primary uses",
            "Primary users",
            "Out of scope",
            "Performance metrics",
            "Training metrics",
            "Model schema",
            "Inputs",
            "Outputs",
            "Training data",
            "Evaluation data",
            "Limitations",
            "Ethical considerations",
            "Caveats and recommendations",
            "Lineage",
            "Stage history",
        ]
        kinds = {token.type for token in tokens} | {
            child.type for token in tokens for child in token.children or []
        }
        for forbidden in (
            "html_block",
            "html_inline",
            "link_open",
            "image",
            "strong_open",
            "em_open",
            "s_open",
            "code_inline",
            "code_block",
            "blockquote_open",
            "ordered_list_open",
            "hr",
        ):
            assert forbidden not in kinds, forbidden
        # the only fence is the requirements, whole
        fences = [token for token in tokens if token.type == "fence"]
        assert [fence.content for fence in fences] == ["```\n~~~\n<b>not html</b>\n"]
        # tables keep their shape: metrics 3 rows of 2 cells, schema 1 row of 3 cells
        tables = []
        for i, token in enumerate(tokens):
            if token.type == "table_open":
                rows, cells = [], 0
                for inner in tokens[i + 1 :]:
                    if inner.type == "tr_close":
                        rows.append(cells)
                        cells = 0
                    elif inner.type in ("td_open", "th_open"):
                        cells += 1
                    elif inner.type == "table_close":
                        break
                tables.append(rows)
        metric_table = next(t for t in tables if len(t) == 4 and t[0] == 2)
        assert metric_table == [2, 2, 2, 2]
        assert [3, 3] in tables
        # and the text is all there, literally
        literal = "\n".join(inline_text(token) for token in tokens if token.type == "inline")
        for line in HOSTILE_LINES:
            assert " ".join(line.split()) in literal, line
        for cell in ("a|b", "<i>", "# h", "x|y", "<float>", "two # lines", "| sk *learn*", "| cell |"):
            assert cell in literal, cell
        assert "<script>" not in text


# --- PDF -----------------------------------------------------------------------------------------
class TestPdf:
    def test_long_texts_wrap_and_control_characters_are_dropped(
        self, client: TestClient, world: World
    ) -> None:
        model = full_model(client, world)
        complete_version(
            client,
            model["id"],
            world.developer.headers,
            performance_metrics={"\x01accuracy\x85": 0.9, "a" * 400: 0.5},
            model_schema={"inputs": [{"name": "form\x0cfeed", "description": "b" * 2000}], "outputs": []},
        )
        word = "W" * 500
        sections = {
            "limitations": [word] * 30,
            "training_data": {"description": ("Long words wrap. " * 250)[:4990] + "\tend"},
        }
        url = card_url(model["id"], "1.0.0")
        assert client.put(url, json=sections, headers=world.developer.headers).status_code == 200
        response = client.post(f"{url}/generate", headers=world.developer.headers)
        assert response.status_code == 200
        reader = PdfReader(io.BytesIO(response.content))
        assert len(reader.pages) > 5
        text = "\n".join(page.extract_text() for page in reader.pages)
        assert "accuracy" in text and "formfeed" in text
        assert text.count("W") >= 30 * len(word)  # a word too long for a line is broken, not lost
        assert ("a" * 297 + "...") in "".join(text.split())  # long cells are cut, with a mark

    def test_characters_no_font_can_draw_are_replaced_and_said_so(
        self, client: TestClient, world: World
    ) -> None:
        model = full_model(client, world)
        new_version(client, model["id"], world.developer.headers)
        url = card_url(model["id"], "1.0.0")
        body = {"limitations": ["private \ue000\ue001 use", "Ελληνικά"]}
        response = client.post(f"{url}/generate", json={"overrides": body}, headers=world.viewer.headers)
        assert response.status_code == 200
        text = flat(pdf_text(response.content))
        if card_documents.find_unicode_font() is not None:
            assert "Ελληνικά" in text
            assert "private ?? use" in text
            assert "2 character(s) could not be drawn" in text
        else:
            assert "could not be drawn" in text

    def test_core_font_without_unicode(self, client: TestClient, world: World) -> None:
        model = full_model(client, world)
        complete_version(client, model["id"], world.developer.headers)
        body = {"limitations": ["Ünïcödé Latin-1 is fine", "Кириллица"]}
        client.put(card_url(model["id"], "1.0.0"), json=body, headers=world.developer.headers)
        card = ModelCard.model_validate(
            client.get(card_url(model["id"], "1.0.0"), headers=world.viewer.headers).json()["data"]
        )
        text = flat(pdf_text(card_documents.render_pdf(card, font=None)))
        assert "Ünïcödé Latin-1 is fine" in text
        assert "?????????" in text and "Кириллица" not in text
        assert "9 character(s) could not be drawn" in text
        assert "accuracy 0.947" in text

    def test_large_registry_data_is_bounded(self, client: TestClient, world: World) -> None:
        model = full_model(client, world)
        metrics = {f"metric_{i:04d}": i / 1000 for i in range(1000)}
        complete_version(client, model["id"], world.developer.headers, performance_metrics=metrics)
        url = card_url(model["id"], "1.0.0")
        response = client.post(f"{url}/generate", headers=world.viewer.headers)
        assert response.status_code == 200
        text = flat(pdf_text(response.content))
        assert "metric_0099" in text and "metric_0100" not in text
        assert "... and 900 more rows, in the JSON and Markdown cards." in text
        markdown = client.get(url, params={"format": "markdown"}, headers=world.viewer.headers).text
        assert "| metric\\_0999 | 0.999 |" in markdown


# --- who may do what -----------------------------------------------------------------------------
class TestPermissions:
    def test_a_viewer_reads_and_renders_but_cannot_write(
        self, client: TestClient, factory: Factory, world: World
    ) -> None:
        model = full_model(client, world)
        complete_version(client, model["id"], world.developer.headers)
        url = card_url(model["id"], "1.0.0")
        viewer = world.viewer.headers
        assert client.get(url, headers=viewer).status_code == 200
        assert client.get(url, params={"format": "markdown"}, headers=viewer).status_code == 200
        assert client.post(f"{url}/generate", headers=viewer).status_code == 200
        assert client.post(f"{url}/validate", json={}, headers=viewer).status_code == 200
        assert client.get(f"{version_url(model['id'], '1.0.0')}/stages", headers=viewer).status_code == 200
        refused = client.put(url, json=SECTIONS, headers=viewer)
        assert refused.status_code == 403
        assert refused.json()["error"]["code"] == "INSUFFICIENT_PERMISSIONS"
        reader = api_key_headers(factory.api_key(world.org, {"models": ["read"]}))
        assert client.put(url, json=SECTIONS, headers=reader).status_code == 403
        assert client.post(f"{url}/generate", headers=reader).status_code == 200
        writer = api_key_headers(factory.api_key(world.org, {"models": ["write"]}))
        assert client.put(url, json=SECTIONS, headers=writer).status_code == 200
        with factory.database.session(write=False) as session:
            row = session.scalar(select(ModelVersion).where(ModelVersion.model_id == model["id"]))
            assert row is not None and sorted(row.card_sections or {}) == sorted(SECTIONS)
            denied = session.scalars(
                select(AuditLog).where(AuditLog.organization_id == world.org, AuditLog.outcome == "denied")
            ).all()
        assert {entry.action for entry in denied} == {"registry:update_model_card"}

    def test_other_organisations_and_unknown_ids_answer_404(self, client: TestClient, world: World) -> None:
        model = full_model(client, world)
        new_version(client, model["id"], world.developer.headers)
        theirs = new_model(client, world.other_project, world.outsider.headers, name="Theirs")
        new_version(client, theirs["id"], world.outsider.headers)
        secret = new_model(client, world.private, world.admin.headers, name="Secret model")
        new_version(client, secret["id"], world.admin.headers)
        calls = [
            ("GET", "/card", None),
            ("PUT", "/card", {"limitations": ["x"]}),
            ("POST", "/card/generate", None),
            ("POST", "/card/validate", None),
            ("GET", "/stages", None),
        ]
        for method, suffix, body in calls:
            for model_id, version, headers in (
                (model["id"], "1.0.0", world.outsider.headers),  # ours, seen from the other organisation
                (theirs["id"], "1.0.0", world.admin.headers),  # theirs, seen from ours
                (secret["id"], "1.0.0", world.viewer.headers),  # a private project the viewer is not in
                (model["id"], "9.9.9", world.admin.headers),
                ("model_unknown", "1.0.0", world.admin.headers),
            ):
                response = client.request(
                    method, f"{version_url(model_id, version)}{suffix}", json=body, headers=headers
                )
                assert response.status_code == 404, (method, suffix, model_id, version)
                assert response.json()["error"]["code"] == "RESOURCE_NOT_FOUND"
            anonymous = client.request(method, f"{version_url(model['id'], '1.0.0')}{suffix}", json=body)
            assert anonymous.status_code == 401
        bad = client.get(
            card_url(model["id"], "1.0.0"), params={"format": "pdf"}, headers=world.admin.headers
        )
        assert bad.status_code == 422
        assert (
            client.get(card_url(model["id"], "not-a-version"), headers=world.admin.headers).status_code == 422
        )


# --- the contract ----------------------------------------------------------------------------------
def test_card_routes_honour_the_openapi_document(app: FastAPI, settings: Settings, factory: Factory) -> None:
    """The API-wide fuzz meets no model; here generated requests (arbitrary Unicode in
    every section included) reach a real version, and every PDF, Markdown document
    and JSON answer must match the document, never a 5xx."""
    if not settings.uses_embedded_database:
        pytest.skip("the API contract does not depend on the database; fuzzed on SQLite only")
    org = factory.organization()
    admin = factory.user(org, role="admin")
    project = factory.project(org, admin, "organization")
    with factory.database.session() as session:
        model = RegisteredModel(
            organization_id=org, project_id=project, name="Fuzzed", model_type="classification"
        )
        session.add(model)
        session.flush()
        session.add(
            ModelVersion(
                model_id=model.id,
                organization_id=org,
                version="1.0.0",
                performance_metrics={"accuracy": 0.9, "loss": "high"},
                model_schema=SCHEMA,
                card_sections=SECTIONS,
            )
        )
        model_id = model.id
    schema = schemathesis.openapi.from_asgi(OPENAPI_URL, app).include(
        path_regex=r"/versions/\{version\}/(card|stages)"
    )
    findings: Findings = {}
    try:
        operations = [result.ok() for result in schema.get_all_operations()]
        assert len(operations) == 5
        for operation in operations:
            for mode in schemathesis.GenerationMode:
                world = Targets(admin.headers, {"model_id": model_id, "version": "1.0.0"})
                fuzz(operation, mode, world, findings)
    finally:
        from schemathesis.python.asgi import shutdown_lifespans

        shutdown_lifespans()
    assert not findings, "\n".join(
        f"{' | '.join(key)}\n{message}" for key, message in sorted(findings.items())
    )
