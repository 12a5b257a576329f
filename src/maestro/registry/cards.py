"""Model cards: a version's card assembled from the registry (model, version,
metrics, schema, aliases, stage history) and the narrative sections people write,
checked for completeness and consistency, and rendered as Markdown or PDF.

User text is never trusted by the renderers: Markdown escapes everything that could
open a heading, list, table cell, link or HTML, and the PDF strips control
characters and shows every character it cannot draw as "?" with a note saying so,
so nothing a user wrote vanishes silently."""

from __future__ import annotations

import json
import logging
import math
import re
import unicodedata
from collections.abc import Iterable, Sequence
from dataclasses import dataclass
from datetime import datetime
from functools import cache
from pathlib import Path
from typing import Any

from fpdf import FPDF
from fpdf.fonts import FontFace
from pydantic import BaseModel, ValidationError
from sqlalchemy import select
from sqlalchemy.orm import Session

from maestro import __version__
from maestro.api.errors import ValidationFailed, validation_details
from maestro.api.heavy import HeavyWork, owners_of
from maestro.db import utcnow
from maestro.identity import audit
from maestro.identity.models import User
from maestro.identity.rbac import Principal
from maestro.identity.schemas import user_ref
from maestro.identity.service import users_by_id
from maestro.registry import service
from maestro.registry.models import (
    ModelAlias,
    ModelTag,
    ModelType,
    ModelVersion,
    RegisteredModel,
    Stage,
    StageTransition,
    VersionTag,
)
from maestro.registry.schemas import (
    CardIssue,
    CardLineage,
    CardMetric,
    CardModelDetails,
    CardSchema,
    CardSchemaField,
    CardVersionDetails,
    DatasetReference,
    ModelCard,
    ModelCardSections,
    ModelCardValidation,
    StageTransitionRead,
    TagRead,
)
from maestro.schemas import strip_invisible

logger = logging.getLogger("maestro.registry.cards")

SECTION_TITLES = {
    "intended_use": "Intended use",
    "limitations": "Limitations",
    "ethical_considerations": "Ethical considerations",
    "training_data": "Training data",
    "evaluation_data": "Evaluation data",
    "caveats_and_recommendations": "Caveats and recommendations",
}
MAX_METRIC_DEPTH = 3  # nested metric objects are flattened to dotted names this deep


# --- assembling the card -------------------------------------------------------------------
def _json_safe(value: Any) -> Any:
    """JSON has no NaN or infinity; a metric stored as one is shown as text."""
    if isinstance(value, float) and not math.isfinite(value):
        return "NaN" if math.isnan(value) else ("Infinity" if value > 0 else "-Infinity")
    if isinstance(value, list):
        return [_json_safe(item) for item in value]
    if isinstance(value, dict):
        return {str(key): _json_safe(item) for key, item in value.items()}
    return value


def card_metrics(values: Any) -> list[CardMetric]:
    """Metrics by name (both databases agree on that order; JSONB keeps no other),
    nested objects flattened to dotted names."""
    found: list[CardMetric] = []

    def walk(name: str, value: Any, depth: int) -> None:
        if isinstance(value, dict) and value and depth < MAX_METRIC_DEPTH:
            for key, item in value.items():
                walk(f"{name}.{key}", item, depth + 1)
        else:
            found.append(CardMetric(name=name, value=_json_safe(value)))

    if isinstance(values, dict):
        for key, item in values.items():
            walk(str(key), item, 1)
    return sorted(found, key=lambda metric: metric.name)


def _text_or_none(value: Any) -> str | None:
    if isinstance(value, bool) or value is None:
        return None
    if isinstance(value, int | float | str):
        return str(value).strip() or None
    return None


def _schema_fields(entries: Any) -> list[CardSchemaField] | None:
    if not isinstance(entries, list):
        return None
    fields = []
    for entry in entries:
        if isinstance(entry, dict):
            fields.append(
                CardSchemaField(
                    name=_text_or_none(entry.get("name")),
                    type=_text_or_none(entry.get("type", entry.get("dtype"))),
                    description=_text_or_none(entry.get("description")),
                )
            )
        else:
            fields.append(CardSchemaField(name=_text_or_none(entry) if isinstance(entry, str) else None))
    return fields


def card_schema(raw: Any) -> CardSchema | None:
    if raw is None or raw == {}:
        return None
    if not isinstance(raw, dict):
        return CardSchema(inputs=None, outputs=None)
    return CardSchema(inputs=_schema_fields(raw.get("inputs")), outputs=_schema_fields(raw.get("outputs")))


def saved_sections(row: ModelVersion) -> ModelCardSections:
    """The sections saved on a version. A section that no longer validates (written
    under older rules) is left out rather than making the whole card unreadable."""
    raw = row.card_sections if isinstance(row.card_sections, dict) else {}
    try:
        return ModelCardSections.model_validate(raw)
    except ValidationError:
        kept = {}
        for name, value in raw.items():
            try:
                ModelCardSections.model_validate({name: value})
            except ValidationError:
                logger.warning("card section %s of version %s no longer validates", name, row.id)
                continue
            kept[name] = value
        return ModelCardSections.model_validate(kept)


def merge_sections(saved: ModelCardSections, overrides: ModelCardSections | None) -> ModelCardSections:
    """Overrides replace whole list sections; in object sections only the fields they
    set replace the saved ones. An explicit null clears a section."""
    if overrides is None:
        return saved
    merged = saved.model_dump(mode="json")
    for name in overrides.model_fields_set:
        value = getattr(overrides, name)
        current = getattr(saved, name)
        if isinstance(value, BaseModel) and isinstance(current, BaseModel):
            merged[name] = {
                **current.model_dump(mode="json"),
                **value.model_dump(mode="json", exclude_unset=True),
            }
        else:
            merged[name] = value.model_dump(mode="json") if isinstance(value, BaseModel) else value
    try:
        return ModelCardSections.model_validate(merged)
    except ValidationError as exc:
        details = [
            (f"overrides.{d.field}" if d.field else "overrides", d.message)
            for d in validation_details(exc.errors())
        ]
        raise ValidationFailed("The overrides make the card invalid", details=details) from exc


def _tags(rows: Iterable[ModelTag | VersionTag]) -> list[TagRead]:
    return [TagRead(key=tag.key, value=tag.value) for tag in sorted(rows, key=lambda tag: tag.key)]


def _transition_reads(
    transitions: Sequence[StageTransition], users: dict[str, User]
) -> list[StageTransitionRead]:
    return [
        StageTransitionRead(
            from_stage=Stage(t.from_stage) if t.from_stage else None,
            to_stage=Stage(t.to_stage),
            description=t.description,
            changed_by=user_ref(users.get(t.changed_by_id or "")),
            changed_at=t.created_at,
        )
        for t in transitions
    ]


def build_card(
    session: Session, model: RegisteredModel, row: ModelVersion, sections: ModelCardSections
) -> ModelCard:
    transitions = service.stage_history(session, row)
    users = users_by_id(session, [row.created_by_id, *(t.changed_by_id for t in transitions)])
    model_tags = session.scalars(select(ModelTag).where(ModelTag.model_id == model.id))
    version_tags = session.scalars(select(VersionTag).where(VersionTag.version_id == row.id))
    aliases = session.scalars(
        select(ModelAlias.alias).where(ModelAlias.version_id == row.id).order_by(ModelAlias.alias)
    ).all()
    requirements = [line.strip() for line in (row.requirements or "").splitlines() if line.strip()]
    return ModelCard(
        model=CardModelDetails(
            id=model.id,
            name=model.name,
            description=model.description,
            model_type=ModelType(model.model_type),
            framework=model.framework,
            task_type=model.task_type,
            tags=_tags(model_tags),
        ),
        version=CardVersionDetails(
            id=row.id,
            version=row.version,
            stage=Stage(row.stage),
            description=row.description,
            format=row.format,
            size_bytes=row.file_size,
            sha256=row.sha256,
            trusted=row.trusted,
            requirements=requirements,
            tags=_tags(version_tags),
            aliases=list(aliases),
            created_by=user_ref(users.get(row.created_by_id or "")),
            created_at=row.created_at,
        ),
        performance_metrics=card_metrics(row.performance_metrics),
        training_metrics=card_metrics(row.training_metrics),
        model_schema=card_schema(row.model_schema),
        lineage=CardLineage(run_id=row.run_id),
        stage_history=_transition_reads(transitions, users),
        sections=sections,
        generated_at=utcnow(),
    )


# --- reading and saving --------------------------------------------------------------------
def _describe(session: Session, model: RegisteredModel, row: ModelVersion, **details: Any) -> None:
    audit.describe(
        session,
        resource_type="model_versions",
        resource_id=row.id,
        organization_id=model.organization_id,
        model_id=model.id,
        version=row.version,
        **details,
    )


def version_stage_history(
    session: Session, principal: Principal, model_id: str, version: str
) -> list[StageTransitionRead]:
    """A version's stage changes, oldest first."""
    _, row = service.get_version(session, principal, model_id, version, "read")
    transitions = service.stage_history(session, row)
    return _transition_reads(transitions, users_by_id(session, (t.changed_by_id for t in transitions)))


def get_card(
    session: Session,
    principal: Principal,
    model_id: str,
    version: str,
    overrides: ModelCardSections | None = None,
    *,
    rendering: str | None = None,
) -> ModelCard:
    """The card of a version the principal may read; ``rendering`` names the document
    a POST renders, for the audit log."""
    model, row = service.get_version(session, principal, model_id, version, "read")
    card = build_card(session, model, row, merge_sections(saved_sections(row), overrides))
    if rendering is not None:
        _describe(
            session,
            model,
            row,
            rendered=rendering,
            overrides=sorted(overrides.model_fields_set) if overrides else None,
        )
    return card


def section_issues(sections: ModelCardSections) -> list[CardIssue]:
    """Contradictions within the written sections themselves."""
    issues = []
    if sections.intended_use is not None:
        primary = {_normalised(use): use for use in sections.intended_use.primary_uses}
        for use in sections.intended_use.out_of_scope:
            if _normalised(use) in primary:
                issues.append(
                    CardIssue(
                        section="intended_use",
                        message=f"'{_shorten(use)}' is listed both as a primary use and as out of scope",
                    )
                )
    for name in ("training_data", "evaluation_data"):
        data: DatasetReference | None = getattr(sections, name)
        if data is not None and data.size == 0:
            issues.append(CardIssue(section=name, message="the dataset is said to have no rows (size 0)"))
    return issues


def save_sections(
    session: Session, principal: Principal, model_id: str, version: str, sections: ModelCardSections
) -> ModelCard:
    """Replace a version's narrative sections. Contradictory sections are refused; an
    incomplete card is saved (the validation says what it lacks)."""
    model, row = service.get_version(session, principal, model_id, version, "write")
    issues = section_issues(sections)
    if issues:
        raise ValidationFailed(
            "The card sections are inconsistent",
            details=[(issue.section, issue.message) for issue in issues],
        )
    previous = sorted(saved_sections(row).model_dump(exclude_none=True))
    row.card_sections = sections.model_dump(mode="json", exclude_none=True)
    session.flush()
    _describe(
        session,
        model,
        row,
        card_sections=sorted(row.card_sections),
        previous_card_sections=previous,
    )
    return build_card(session, model, row, sections)


# --- validation ----------------------------------------------------------------------------
_SCORE_WORDS = {"accuracy", "acc", "precision", "recall", "f1", "auc", "roc", "specificity", "sensitivity"}
_RATE_WORDS = {"tpr", "fpr", "tnr", "fnr", "ppv", "npv", "probability", "rate"}
PROBABILITY_WORDS = frozenset(_SCORE_WORDS | _RATE_WORDS)
# "rate" names a probability except in these (a learning rate, a sampling rate in Hz).
NOT_PROBABILITY_WORDS = frozenset({"learning", "lr", "sample", "sampling", "bit", "frame", "baud"})


def _words(name: str) -> list[str]:
    snake = re.sub(r"(?<=[a-z0-9])(?=[A-Z])", "_", name).lower()
    return [word for word in re.split(r"[^a-z0-9]+", snake) if word]


def is_probability_metric(name: str) -> bool:
    """Whether a metric's name says it is a probability or rate, such as accuracy,
    val_f1, rocAuc or false_positive_rate."""
    words = set(_words(name))
    return bool(words & PROBABILITY_WORDS) and not (words & NOT_PROBABILITY_WORDS)


def _normalised(text: str) -> str:
    return " ".join(text.casefold().split()).rstrip(".;:!")


def _shorten(text: str, limit: int = 100) -> str:
    return text if len(text) <= limit else text[: limit - 3] + "..."


def _metric_issues(section: str, metrics: Sequence[CardMetric]) -> list[CardIssue]:
    issues = []
    for metric in metrics:
        name, value = _shorten(metric.name), metric.value
        if not metric.name.strip():
            issues.append(CardIssue(section=section, message="a metric has no name"))
            continue
        if value in ("NaN", "Infinity", "-Infinity"):
            issues.append(CardIssue(section=section, message=f"{name} is not a finite number ({value})"))
        elif isinstance(value, bool) or not isinstance(value, int | float):
            issues.append(CardIssue(section=section, message=f"{name} is not a number"))
        elif is_probability_metric(metric.name) and not 0 <= value <= 1:
            hint = " (a percentage? give it as a fraction)" if 1 < value <= 100 else ""
            issues.append(
                CardIssue(
                    section=section,
                    message=f"{name} is a probability or rate and must lie in [0, 1], not {value}{hint}",
                )
            )
    return issues


def _schema_issues(schema: CardSchema | None) -> list[CardIssue]:
    if schema is None:
        return []
    issues = []
    for side, fields in (("inputs", schema.inputs), ("outputs", schema.outputs)):
        section = f"model_schema.{side}"
        if fields is None:
            continue
        seen: set[str] = set()
        for position, field in enumerate(fields, start=1):
            if field.name is None:
                issues.append(CardIssue(section=section, message=f"{side[:-1]} {position} has no name"))
            elif field.name in seen:
                issues.append(
                    CardIssue(
                        section=section, message=f"{side[:-1]} '{_shorten(field.name)}' is listed twice"
                    )
                )
            else:
                seen.add(field.name)
    return issues


def _duplicates(items: Sequence[str]) -> list[str]:
    seen: set[str] = set()
    repeated = []
    for item in items:
        key = _normalised(item)
        if key in seen:
            repeated.append(item)
        seen.add(key)
    return repeated


def check_card(card: ModelCard) -> ModelCardValidation:
    """What a card lacks (missing), what it gets wrong (invalid) and what a reader
    would want added (warnings)."""
    sections = card.sections
    missing = []
    if not (card.model.description or card.version.description):
        missing.append("description")
    if not card.performance_metrics:
        missing.append("performance_metrics")
    if card.model_schema is None or not card.model_schema.inputs:
        missing.append("model_schema.inputs")
    intended = sections.intended_use
    if intended is None or not (intended.primary_uses or intended.primary_users or intended.out_of_scope):
        missing.append("intended_use")
    elif not intended.primary_uses:
        missing.append("intended_use.primary_uses")
    if not sections.limitations:
        missing.append("limitations")

    invalid = [
        *_metric_issues("performance_metrics", card.performance_metrics),
        *_metric_issues("training_metrics", card.training_metrics),
        *_schema_issues(card.model_schema),
        *section_issues(sections),
    ]
    if (
        card.model_schema is not None
        and card.model_schema.inputs is None
        and "model_schema.inputs" in missing
    ):
        invalid.append(CardIssue(section="model_schema", message="the schema has no list of inputs"))

    warnings = []
    if card.model_schema is not None and not card.model_schema.outputs:
        warnings.append("model_schema.outputs: the schema lists no outputs")
    if intended is not None and intended.primary_uses and not intended.primary_users:
        warnings.append("intended_use.primary_users: nobody is named as an intended user")
    ethics = sections.ethical_considerations
    if ethics is None or not (ethics.risks_and_harms or ethics.mitigations):
        warnings.append("ethical_considerations: no risks or mitigations are described")
    elif ethics.risks_and_harms and not ethics.mitigations:
        warnings.append("ethical_considerations.mitigations: risks are listed without mitigations")
    elif ethics.mitigations and not ethics.risks_and_harms:
        warnings.append("ethical_considerations.risks_and_harms: mitigations are listed without the risks")
    if sections.training_data is None:
        warnings.append("training_data: no training data is referenced")
    if sections.evaluation_data is None:
        warnings.append("evaluation_data: no evaluation data is referenced")
    elif (
        sections.training_data is not None
        and sections.training_data.source
        and sections.training_data.source == sections.evaluation_data.source
    ):
        warnings.append("evaluation_data: the model is evaluated on its own training data")
    for name in ("limitations", "caveats_and_recommendations"):
        for item in _duplicates(getattr(sections, name) or []):
            warnings.append(f"{name}: '{_shorten(item)}' is listed twice")
    if not card.version.requirements:
        warnings.append("version.requirements: no requirements are listed")
    if card.version.format in ("pickle", "joblib") and not card.version.trusted:
        warnings.append(
            f"version.format: a {card.version.format} file loads only once an organisation admin trusts it"
        )
    if card.version.stage in (Stage.staging, Stage.production) and (missing or invalid):
        warnings.append(f"version.stage: the version is in {card.version.stage} but its card is not complete")
    return ModelCardValidation(
        valid=not missing and not invalid,
        missing_sections=missing,
        invalid_sections=invalid,
        warnings=warnings,
    )


def validate_card(
    session: Session,
    principal: Principal,
    model_id: str,
    version: str,
    overrides: ModelCardSections | None = None,
) -> ModelCardValidation:
    return check_card(get_card(session, principal, model_id, version, overrides, rendering="validation"))


# --- plain text shared by both renderers -----------------------------------------------------
_CONTROL = re.compile(r"[\x00-\x08\x0b-\x1f\x7f-\x9f]")


def plain(text: str) -> str:
    """Text without control characters (line breaks kept, tabs as spaces), nor invisible
    or direction-changing ones, which could make a reader see other text than is there."""
    text = strip_invisible(text)
    return _CONTROL.sub("", text.replace("\r\n", "\n").replace("\r", "\n").replace("\t", "    "))


def format_value(value: Any) -> str:
    if isinstance(value, float):
        return f"{value:.6g}" if abs(value) >= 1e-4 or value == 0 else f"{value:.4e}"
    if isinstance(value, str):
        return value
    return json.dumps(value, ensure_ascii=False, separators=(", ", ": "))


def format_size(size: int | None) -> str:
    if size is None:
        return "-"
    amount = float(size)
    for unit in ("bytes", "KB", "MB", "GB"):
        if amount < 1024 or unit == "GB":
            return f"{size} bytes" if unit == "bytes" else f"{amount:.1f} {unit} ({size} bytes)"
        amount /= 1024
    return f"{size} bytes"


def format_time(moment: datetime) -> str:
    return moment.strftime("%Y-%m-%d %H:%M UTC")


def _by(ref: Any) -> str:
    return ref.name if ref is not None else "an API key"


def document_filename(card: ModelCard, suffix: str) -> str:
    """An ASCII file name for a download; the model's name where it has one."""
    slug = re.sub(r"[^a-z0-9]+", "-", unicodedata.normalize("NFKD", card.model.name).lower()).strip("-")
    return f"{slug[:80] or card.model.id}-{card.version.version}-card{suffix}"


def _model_rows(card: ModelCard) -> list[tuple[str, str]]:
    model = card.model
    return [
        ("Name", model.name),
        ("Type", str(model.model_type)),
        ("Framework", model.framework or "-"),
        ("Task type", model.task_type or "-"),
        ("Tags", ", ".join(f"{t.key}={t.value}" if t.value else t.key for t in model.tags) or "-"),
    ]


def _version_rows(card: ModelCard) -> list[tuple[str, str]]:
    version = card.version
    return [
        ("Version", version.version),
        ("Stage", str(version.stage)),
        ("Format", version.format or "-"),
        ("Size", format_size(version.size_bytes)),
        ("SHA-256", version.sha256 or "-"),
        ("Trusted", "yes" if version.trusted else "no"),
        ("Aliases", ", ".join(version.aliases) or "-"),
        ("Tags", ", ".join(f"{t.key}={t.value}" if t.value else t.key for t in version.tags) or "-"),
        ("Created by", _by(version.created_by)),
        ("Created at", format_time(version.created_at)),
    ]


def _lineage_rows(card: ModelCard) -> list[tuple[str, str]]:
    lineage = card.lineage
    return [
        ("Training run", lineage.run_id or "not recorded"),
        (
            "Experiment",
            (lineage.experiment.name or lineage.experiment.id) if lineage.experiment else "not tracked",
        ),
    ]


def _dataset_rows(data: DatasetReference) -> list[tuple[str, str]]:
    rows = [
        ("Name", data.name),
        ("Source", data.source),
        ("Size", f"{data.size:,} rows" if data.size is not None else None),
    ]
    return [(label, value) for label, value in rows if value]


STAGE_HEADERS = ("When", "From", "To", "By", "Note")
SCHEMA_HEADERS = ("Name", "Type", "Description")


def _stage_rows(card: ModelCard) -> list[tuple[str, ...]]:
    return [
        (
            format_time(t.changed_at),
            str(t.from_stage) if t.from_stage else "-",
            str(t.to_stage),
            _by(t.changed_by),
            t.description or "",
        )
        for t in card.stage_history
    ]


def _metric_rows(metrics: Sequence[CardMetric]) -> list[tuple[str, str]]:
    return [(metric.name, format_value(metric.value)) for metric in metrics]


def _schema_rows(fields: Sequence[CardSchemaField]) -> list[tuple[str, str, str]]:
    return [(f.name or "(no name)", f.type or "-", f.description or "") for f in fields]


def _list_parts(card: ModelCard) -> list[tuple[str, str, list[tuple[str, list[str]]]]]:
    """The narrative sections made of lists: (key, title, [(subtitle, items)])."""
    sections = card.sections
    intended = sections.intended_use
    ethics = sections.ethical_considerations
    return [
        (
            "intended_use",
            "Intended use",
            [
                ("Primary uses", intended.primary_uses if intended else []),
                ("Primary users", intended.primary_users if intended else []),
                ("Out of scope", intended.out_of_scope if intended else []),
            ],
        ),
        ("limitations", "Limitations", [("", sections.limitations or [])]),
        (
            "ethical_considerations",
            "Ethical considerations",
            [
                ("Risks and harms", ethics.risks_and_harms if ethics else []),
                ("Mitigations", ethics.mitigations if ethics else []),
            ],
        ),
        (
            "caveats_and_recommendations",
            "Caveats and recommendations",
            [("", sections.caveats_and_recommendations or [])],
        ),
    ]


# --- Markdown ------------------------------------------------------------------------------
# Every ASCII punctuation character may be backslash-escaped in CommonMark; these are
# the ones that open emphasis, code, links, images, HTML, tables, strikethrough,
# headings, entities or (on GitHub) math.
_MD_SPECIAL = re.compile(r"([\\`*_\[\]<>|~#!&$])")
# At the start of a line these open a list item, an ordered list or a setext heading.
_MD_LINE_START = re.compile(r"^([-+=]|\d{1,9}(?=[.)](\s|$)))")
NOT_PROVIDED = "Not provided."


def md_text(text: str) -> str:
    """User text as literal Markdown text on one line, where a line's start cannot
    open a block (a table cell, the middle of a line of ours)."""
    return _MD_SPECIAL.sub(r"\\\1", " ".join(plain(text).split()))


def md_line(text: str) -> str:
    """User text as literal Markdown text, even at the start of a line."""
    escaped = md_text(text)
    match = _MD_LINE_START.match(escaped)
    if match is None:
        return escaped
    end = match.end()
    return escaped[:end] + "\\" + escaped[end:] if match.group(0)[0].isdigit() else "\\" + escaped


def md_paragraphs(text: str) -> str:
    """Multi-line user text as paragraphs; lines keep their breaks and can never become
    headings, lists, quotes, fences, tables or indented code."""
    paragraphs, lines = [], []
    for raw in [*plain(text).split("\n"), ""]:
        if raw.strip():
            lines.append(md_line(raw))
        elif lines:
            paragraphs.append("\\\n".join(lines))
            lines = []
    return "\n\n".join(paragraphs)


def md_cell(text: str) -> str:
    return md_text(text) or " "


def md_table(headers: Sequence[str], rows: Iterable[Sequence[str]]) -> str:
    lines = ["| " + " | ".join(headers) + " |", "|" + "|".join(" --- " for _ in headers) + "|"]
    lines += ["| " + " | ".join(md_cell(cell) for cell in row) + " |" for row in rows]
    return "\n".join(lines)


def md_fence(text: str, info: str = "text") -> str:
    """A fenced block that no run of backticks inside ``text`` can close (counted once
    the characters ``plain`` drops are gone, since they could separate backticks)."""
    text = plain(text)
    longest = max((len(run) for run in re.findall(r"`+", text)), default=0)
    fence = "`" * max(3, longest + 1)
    return f"{fence}{info}\n{text}\n{fence}"


def _md_metrics(metrics: Sequence[CardMetric]) -> str:
    if not metrics:
        return NOT_PROVIDED
    return md_table(("Metric", "Value"), _metric_rows(metrics))


def _md_schema_fields(fields: list[CardSchemaField] | None) -> str:
    if not fields:
        return NOT_PROVIDED
    return md_table(SCHEMA_HEADERS, _schema_rows(fields))


def render_markdown(card: ModelCard) -> str:
    model, version = card.model, card.version
    out = [
        f"# Model card: {md_text(model.name)}",
        f"Version {md_text(version.version)}, stage {version.stage}. "
        f"Generated by Maestro on {format_time(card.generated_at)}.",
        "## Model details",
    ]
    if model.description:
        out.append(md_paragraphs(model.description))
    out.append(md_table(("Field", "Value"), _model_rows(card)))
    out.append("## Version details")
    if version.description:
        out.append(md_paragraphs(version.description))
    out.append(md_table(("Field", "Value"), _version_rows(card)))
    out.append("### Requirements")
    out.append(md_fence("\n".join(version.requirements)) if version.requirements else NOT_PROVIDED)

    parts = {key: (title, subparts) for key, title, subparts in _list_parts(card)}

    def md_list_section(key: str) -> None:
        title, subparts = parts[key]
        out.append(f"## {title}")
        if not any(items for _, items in subparts):
            out.append(NOT_PROVIDED)
            return
        for subtitle, items in subparts:
            if subtitle:
                out.append(f"### {subtitle}")
            out.append("\n".join(f"- {md_line(item)}" for item in items) if items else NOT_PROVIDED)

    md_list_section("intended_use")
    out += ["## Performance metrics", _md_metrics(card.performance_metrics)]
    out += ["## Training metrics", _md_metrics(card.training_metrics)]
    out.append("## Model schema")
    if card.model_schema is None:
        out.append(NOT_PROVIDED)
    else:
        out += ["### Inputs", _md_schema_fields(card.model_schema.inputs)]
        out += ["### Outputs", _md_schema_fields(card.model_schema.outputs)]
    for key in ("training_data", "evaluation_data"):
        data: DatasetReference | None = getattr(card.sections, key)
        out.append(f"## {SECTION_TITLES[key]}")
        if data is None:
            out.append(NOT_PROVIDED)
            continue
        rows = _dataset_rows(data)
        if rows:
            out.append(md_table(("Field", "Value"), rows))
        if data.description:
            out.append(md_paragraphs(data.description))
        if data.preprocessing:
            out.append("### Preprocessing")
            out.append("\n".join(f"- {md_line(step)}" for step in data.preprocessing))
        if not (rows or data.description or data.preprocessing):
            out.append(NOT_PROVIDED)
    md_list_section("limitations")
    md_list_section("ethical_considerations")
    md_list_section("caveats_and_recommendations")
    out += ["## Lineage", md_table(("Field", "Value"), _lineage_rows(card))]
    out.append("## Stage history")
    out.append(
        md_table(
            STAGE_HEADERS,
            _stage_rows(card),
        )
        if card.stage_history
        else NOT_PROVIDED
    )
    return "\n\n".join(out) + "\n"


# --- PDF -----------------------------------------------------------------------------------
@dataclass(frozen=True)
class CardFont:
    """A TrueType font that can draw more than Latin-1, embedded in the PDF."""

    regular: Path
    bold: Path | None = None


# Unicode fonts the common distributions install (DejaVu comes with most of them).
FONT_CANDIDATES = (
    CardFont(
        Path("/usr/share/fonts/truetype/dejavu/DejaVuSans.ttf"),
        Path("/usr/share/fonts/truetype/dejavu/DejaVuSans-Bold.ttf"),
    ),
    CardFont(
        Path("/usr/share/fonts/dejavu/DejaVuSans.ttf"), Path("/usr/share/fonts/dejavu/DejaVuSans-Bold.ttf")
    ),
    CardFont(Path("/usr/share/fonts/TTF/DejaVuSans.ttf"), Path("/usr/share/fonts/TTF/DejaVuSans-Bold.ttf")),
    CardFont(
        Path("/usr/share/fonts/truetype/noto/NotoSans-Regular.ttf"),
        Path("/usr/share/fonts/truetype/noto/NotoSans-Bold.ttf"),
    ),
    CardFont(
        Path("/usr/share/fonts/truetype/liberation/LiberationSans-Regular.ttf"),
        Path("/usr/share/fonts/truetype/liberation/LiberationSans-Bold.ttf"),
    ),
    CardFont(Path("/Library/Fonts/Arial Unicode.ttf")),
)
LATIN_1 = frozenset(range(0x20, 0x7F)) | frozenset(range(0xA0, 0x100))
MAX_PDF_ROWS = 100  # per table (fpdf2 lays out about 400 cells a second); JSON and Markdown hold all
MAX_PDF_CELL = 300  # characters in one table cell


@cache
def find_unicode_font() -> CardFont | None:
    for font in FONT_CANDIDATES:
        if font.regular.is_file():
            return CardFont(font.regular, font.bold if font.bold and font.bold.is_file() else None)
    logger.warning("no Unicode TrueType font found; model card PDFs will show only Latin-1 text")
    return None


@cache
def _coverage(path: Path) -> frozenset[int]:
    from fontTools.ttLib import TTFont

    with TTFont(path, lazy=True) as font:
        return frozenset(font.getBestCmap() or {})


def _cap(text: str, limit: int = MAX_PDF_CELL) -> str:
    return text if len(text) <= limit else text[: limit - 3] + "..."


class CardPdf(FPDF):
    """An A4 document whose every text goes through ``clean``, which counts the
    characters the font cannot draw."""

    def __init__(self, font: CardFont | None) -> None:
        super().__init__(format="A4")
        self.replaced = 0
        if font is None:
            self.card_family, self.covered, self.covered_bold = "helvetica", LATIN_1, LATIN_1
        else:
            bold = font.bold or font.regular
            self.card_family = "cardfont"
            self.covered, self.covered_bold = _coverage(font.regular), _coverage(bold)
            self.add_font(self.card_family, "", str(font.regular))
            self.add_font(self.card_family, "B", str(bold))
        self.set_auto_page_break(auto=True, margin=15)
        self.set_margins(15, 15, 15)

    def clean(self, text: str, *, bold: bool = False) -> str:
        covered = self.covered_bold if bold else self.covered
        out = []
        for char in plain(text):
            if char in "\n " or ord(char) in covered:
                out.append(char)
            else:
                self.replaced += 1
                out.append("?")
        return "".join(out)

    def footer(self) -> None:
        self.set_y(-12)
        self.set_font(self.card_family, "", 8)
        self.cell(0, 5, f"Page {self.page_no()}/{{nb}}", align="C")

    def heading(self, text: str, level: int = 1) -> None:
        size = {0: 18, 1: 13, 2: 11}[level]
        self.ln(3 if level else 0)
        self.set_font(self.card_family, "B", size)
        self.multi_cell(0, size * 0.5, self.clean(text, bold=True), new_x="LMARGIN", new_y="NEXT")
        self.set_font(self.card_family, "", 10)
        self.ln(1)

    def paragraph(self, text: str) -> None:
        self.set_font(self.card_family, "", 10)
        self.multi_cell(0, 5, self.clean(text), new_x="LMARGIN", new_y="NEXT")
        self.ln(1)

    def not_provided(self) -> None:
        self.paragraph("Not provided.")

    def bullets(self, items: Sequence[str]) -> None:
        self.set_font(self.card_family, "", 10)
        for item in items:
            self.set_x(self.l_margin + 3)
            self.multi_cell(0, 5, self.clean("- " + item), new_x="LMARGIN", new_y="NEXT")
        self.ln(1)

    def table_of(self, headers: Sequence[str], rows: Sequence[Sequence[str]], widths: Sequence[int]) -> None:
        self.set_font(self.card_family, "", 9)
        shown = rows[:MAX_PDF_ROWS]
        with self.table(
            col_widths=tuple(widths),
            first_row_as_headings=True,
            text_align="LEFT",
            line_height=4.5,
            headings_style=FontFace(emphasis="BOLD", fill_color=(235, 235, 235)),
        ) as table:
            heading = table.row()
            for header in headers:
                heading.cell(header)
            for values in shown:
                row = table.row()
                for value in values:
                    row.cell(self.clean(_cap(value)) or " ")
        if len(rows) > len(shown):
            self.paragraph(f"... and {len(rows) - len(shown)} more rows, in the JSON and Markdown cards.")
        self.ln(2)


def render_pdf_in_turn(heavy: HeavyWork, principal: Principal, card: ModelCard) -> bytes:
    """The card as a PDF, rendered in a worker process of the shared pool for CPU-heavy
    work: laying out a large card takes fpdf2 a second or two of pure Python, which in
    the server's own threads would slow every other request. The caller and their
    organisation render one card at a time by default; more wait, then answer 429/503."""
    return heavy.run(owners_of(principal), render_pdf, card)


def render_pdf(card: ModelCard, font: CardFont | bool | None = True) -> bytes:
    """The card as a PDF. ``font``: True finds a Unicode font on this machine; None
    uses the core Helvetica font (Latin-1 only)."""
    chosen = find_unicode_font() if font is True else (font or None)
    pdf = CardPdf(chosen)
    model, version = card.model, card.version
    pdf.set_title(f"Model card: {model.name} {version.version}")
    pdf.set_author("Maestro")
    pdf.set_creator(f"Maestro {__version__}")
    pdf.add_page()
    pdf.heading(f"Model card: {model.name}", level=0)
    pdf.paragraph(
        f"Version {version.version}, stage {version.stage}. "
        f"Generated by Maestro on {format_time(card.generated_at)}."
    )

    pdf.heading("Model details")
    if model.description:
        pdf.paragraph(model.description)
    pdf.table_of(("Field", "Value"), _model_rows(card), (1, 3))
    pdf.heading("Version details")
    if version.description:
        pdf.paragraph(version.description)
    pdf.table_of(("Field", "Value"), _version_rows(card), (1, 3))
    pdf.heading("Requirements", level=2)
    if version.requirements:
        pdf.paragraph("\n".join(_cap(line) for line in version.requirements[:MAX_PDF_ROWS]))
    else:
        pdf.not_provided()

    parts = {key: (title, subparts) for key, title, subparts in _list_parts(card)}

    def list_section(key: str) -> None:
        title, subparts = parts[key]
        pdf.heading(title)
        if not any(items for _, items in subparts):
            pdf.not_provided()
            return
        for subtitle, items in subparts:
            if subtitle:
                pdf.heading(subtitle, level=2)
            if items:
                pdf.bullets(items)
            else:
                pdf.not_provided()

    list_section("intended_use")
    for title, metrics in (
        ("Performance metrics", card.performance_metrics),
        ("Training metrics", card.training_metrics),
    ):
        pdf.heading(title)
        if metrics:
            pdf.table_of(("Metric", "Value"), _metric_rows(metrics), (2, 1))
        else:
            pdf.not_provided()
    pdf.heading("Model schema")
    if card.model_schema is None:
        pdf.not_provided()
    else:
        for title, fields in (("Inputs", card.model_schema.inputs), ("Outputs", card.model_schema.outputs)):
            pdf.heading(title, level=2)
            if fields:
                pdf.table_of(SCHEMA_HEADERS, _schema_rows(fields), (2, 1, 3))
            else:
                pdf.not_provided()
    for key in ("training_data", "evaluation_data"):
        data: DatasetReference | None = getattr(card.sections, key)
        pdf.heading(SECTION_TITLES[key])
        if data is None:
            pdf.not_provided()
            continue
        rows = _dataset_rows(data)
        if rows:
            pdf.table_of(("Field", "Value"), rows, (1, 3))
        if data.description:
            pdf.paragraph(data.description)
        if data.preprocessing:
            pdf.heading("Preprocessing", level=2)
            pdf.bullets(data.preprocessing)
        if not (rows or data.description or data.preprocessing):
            pdf.not_provided()
    list_section("limitations")
    list_section("ethical_considerations")
    list_section("caveats_and_recommendations")
    pdf.heading("Lineage")
    pdf.table_of(("Field", "Value"), _lineage_rows(card), (1, 3))
    pdf.heading("Stage history")
    if card.stage_history:
        pdf.table_of(
            STAGE_HEADERS,
            _stage_rows(card),
            (3, 2, 2, 2, 4),
        )
    else:
        pdf.not_provided()
    if pdf.replaced:
        pdf.heading("Note on characters")
        pdf.paragraph(
            f"{pdf.replaced} character(s) could not be drawn with the font available to this server "
            "and are shown as '?'. The JSON and Markdown cards hold the exact text."
        )
    return bytes(pdf.output())
