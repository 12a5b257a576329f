"""A model card as documents: Markdown and PDF.

User text is never trusted by the renderers: Markdown escapes everything that could
open a heading, list, table cell, link or HTML, and the PDF strips control
characters and shows every character it cannot draw as "?" with a note saying so,
so nothing a user wrote vanishes silently."""

from __future__ import annotations

import json
import logging
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

from maestro import __version__
from maestro.api.heavy import HeavyWork, owners_of
from maestro.identity.rbac import Principal
from maestro.registry.schemas import (
    CardMetric,
    CardSchemaField,
    DatasetReference,
    ModelCard,
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
    if ref is None:
        return "a deleted user or API key"
    return f"API key {ref.name} ({ref.prefix})" if getattr(ref, "kind", "user") == "api_key" else ref.name


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
