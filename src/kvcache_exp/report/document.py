"""A small document model: the summary is built once as data and rendered twice.

``results/summary.md`` (for people and diffs) and the report's summary page (HTML) must
never disagree, so both are rendered from the same :class:`Document`. Text inside it
uses inline Markdown only (``**bold**``, ```code```); the HTML renderer hands that to
markdown-it-py, a maintained CommonMark implementation, and builds tables, lists and
verdict badges from the structure itself.
"""

from __future__ import annotations

import html
from dataclasses import dataclass, field

from markdown_it import MarkdownIt


@dataclass(frozen=True)
class Table:
    """A table: header cells and rows of cells (inline Markdown)."""

    header: list[str]
    rows: list[list[str]]


@dataclass(frozen=True)
class VerdictItem:
    """One claim, its status (supported, not supported, undetermined) and why."""

    claim: str
    status: str
    reason: str


@dataclass(frozen=True)
class Section:
    """A titled section: paragraphs (str), tables and verdict lists, in order.

    On the HTML page sections are shown by ``priority`` (lower first, stable), so that a
    reader sees the answer before the statistics behind it; the Markdown keeps the built
    order.
    """

    title: str
    blocks: list[str | Table | list[VerdictItem]]
    priority: int = 2


@dataclass(frozen=True)
class Document:
    title: str
    sections: list[Section] = field(default_factory=list)
    warnings: list[str] = field(default_factory=list)


# --------------------------------------------------------------------------- Markdown


def _md_table(table: Table) -> list[str]:
    lines = [
        "| " + " | ".join(table.header) + " |",
        "|" + "|".join("---" for _ in table.header) + "|",
    ]
    return lines + ["| " + " | ".join(row) + " |" for row in table.rows]


def _md_verdict(item: VerdictItem) -> str:
    return f"- **{item.claim}**: {item.status.upper()}. {item.reason}"


def to_markdown(doc: Document) -> str:
    """The document as GitHub-flavoured Markdown."""
    lines = [f"# {doc.title}", ""]
    for warning in doc.warnings:
        lines += [f"> **Warning:** {warning}", ""]
    for section in doc.sections:
        lines += [f"## {section.title}", ""]
        for block in section.blocks:
            if isinstance(block, Table):
                lines += _md_table(block)
            elif isinstance(block, list):
                lines += [_md_verdict(item) for item in block]
            else:
                lines.append(block)
            lines.append("")
    return "\n".join(lines).rstrip("\n") + "\n"


# --------------------------------------------------------------------------- HTML

_INLINE = MarkdownIt("commonmark")
_BADGE = {"supported": "yes", "not supported": "no", "undetermined": "maybe"}


def inline_html(text: str) -> str:
    """Inline Markdown (bold, code) as HTML; raw HTML in the text is escaped."""
    return _INLINE.renderInline(text)


def _html_table(table: Table) -> str:
    head = "".join(f"<th>{inline_html(c)}</th>" for c in table.header)
    body = "".join(
        "<tr>" + "".join(f"<td>{inline_html(c)}</td>" for c in row) + "</tr>" for row in table.rows
    )
    table = f"<table><thead><tr>{head}</tr></thead><tbody>{body}</tbody></table>"
    return f'<div class="wide">{table}</div>'


def _html_verdict(item: VerdictItem) -> str:
    kind = _BADGE.get(item.status, "maybe")
    return (
        f"<li><strong>{inline_html(item.claim)}</strong>: "
        f'<span class="verdict {kind}">{html.escape(item.status.upper())}</span>. '
        f"{inline_html(item.reason)}</li>"
    )


def to_html(doc: Document) -> str:
    """The document's body as HTML (no page wrapper), sections in ``priority`` order."""
    parts = [f"<h1>{inline_html(doc.title)}</h1>"]
    parts += [
        f'<p class="warning"><strong>Warning:</strong> {inline_html(w)}</p>' for w in doc.warnings
    ]
    for section in sorted(doc.sections, key=lambda s: s.priority):
        parts.append(f"<h2>{inline_html(section.title)}</h2>")
        for block in section.blocks:
            if isinstance(block, Table):
                parts.append(_html_table(block))
            elif isinstance(block, list):
                parts.append("<ul>" + "".join(_html_verdict(i) for i in block) + "</ul>")
            else:
                parts.append(f"<p>{inline_html(block)}</p>")
    return "\n".join(parts)
