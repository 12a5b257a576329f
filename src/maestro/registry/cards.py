"""Model cards: a version's card assembled from the registry (model, version,
metrics, schema, aliases, stage history) and the narrative sections people write,
checked for completeness and consistency; ``card_documents`` renders it as Markdown
or PDF."""

from __future__ import annotations

import logging
import math
import re
from collections.abc import Iterable, Sequence
from typing import Any

from pydantic import BaseModel, ValidationError
from sqlalchemy import select
from sqlalchemy.orm import Session

from maestro.api.errors import validation_details
from maestro.db import utcnow
from maestro.errors import ValidationFailed
from maestro.identity import audit
from maestro.identity.actors import Actors, actors
from maestro.identity.rbac import Principal
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

logger = logging.getLogger("maestro.registry.cards")

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


def _transition_reads(transitions: Sequence[StageTransition], people: Actors) -> list[StageTransitionRead]:
    return [
        StageTransitionRead(
            from_stage=Stage(t.from_stage) if t.from_stage else None,
            to_stage=Stage(t.to_stage),
            description=t.description,
            changed_by=people.ref(t.changed_by_id, t.changed_by_key_id),
            changed_at=t.created_at,
        )
        for t in transitions
    ]


def build_card(
    session: Session, model: RegisteredModel, row: ModelVersion, sections: ModelCardSections
) -> ModelCard:
    transitions = service.stage_history(session, row)
    people = actors(
        session,
        [
            (row.created_by_id, row.created_by_key_id),
            *((t.changed_by_id, t.changed_by_key_id) for t in transitions),
        ],
    )
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
            created_by=people.ref(row.created_by_id, row.created_by_key_id),
            created_at=row.created_at,
        ),
        performance_metrics=card_metrics(row.performance_metrics),
        training_metrics=card_metrics(row.training_metrics),
        model_schema=card_schema(row.model_schema),
        lineage=CardLineage(run_id=row.run_id),
        stage_history=_transition_reads(transitions, people),
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
    return _transition_reads(
        transitions, actors(session, ((t.changed_by_id, t.changed_by_key_id) for t in transitions))
    )


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
